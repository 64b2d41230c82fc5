"""A request's images, read within bounds: multipart files (field `image`) or JSON
(`{"images": [base64, ...]}`), each decoded into a model input as predict.py makes it; anything
malformed or over a limit is a `RequestError` with its 4xx status."""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Awaitable, Callable

import numpy as np
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.requests import Request

from fmnist_jax import images
from fmnist_jax.serving_limits import Limits
from fmnist_jax.serving_limits import Refused as RequestError

MAX_IMAGES = 128  # per request
MAX_IMAGE_BYTES = 8 * 2**20  # per image file
INLINE_DECODE_PIXELS = 256 * 256  # smaller images are decoded in the event loop, larger in a thread


def pixels(data: bytes) -> int:
    """The pixel count an image file's header declares (0 if unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            return image.width * image.height
    except Exception:  # pylint: disable=broad-except  # `decode` names the problem
        return 0


def decode(data: bytes, name: str, max_pixels: int = Limits.image_pixels) -> np.ndarray:
    """An uploaded file as a model input `[28, 28, 1]`, as predict.py makes it; or RequestError
    (413 over the limits, checked before decoding)."""
    if not data:
        raise RequestError(400, f"{name}: the file is empty; send a PNG or JPEG image")
    try:
        return images.to_model_input(images.read_image(
            io.BytesIO(data), name, MAX_IMAGE_BYTES, max_pixels))
    except images.ImageTooLargeError as e:
        raise RequestError(413, f"{e}; send a smaller image") from None
    except images.ImageFileError as e:
        raise RequestError(400, f"{e}; send a PNG or JPEG image") from None


async def multipart_files(request: Request) -> list[tuple[str, bytes]]:
    try:
        form = await request.form(max_files=MAX_IMAGES, max_fields=MAX_IMAGES)
    except HTTPException as e:  # starlette's limits on parts: over one is a 413, as documented
        if e.detail.startswith("Too many files"):
            raise RequestError(413, f"too many images; at most {MAX_IMAGES} per request") from None
        over = e.detail.startswith(("Too many", "Part exceeded", "Field exceeded"))
        raise RequestError(413 if over else 400, f"malformed multipart upload ({e.detail}); send files in the "
                                   f"field 'image'") from None
    try:
        uploads = form.getlist("image")
        files = [u for u in uploads if not isinstance(u, str)]
        if len(files) != len(uploads):
            raise RequestError(400, "the field 'image' must hold files, not text; use "
                                    "curl -F image=@FILE")
        check_count(len(files), "field 'image'")
        # a file over the limit is read only up to it: `decode` refuses it
        return [(u.filename or f"image {i}", await u.read(MAX_IMAGE_BYTES + 1))
                for i, u in enumerate(files)]
    finally:
        await form.close()


async def json_files(request: Request) -> list[tuple[str, bytes]]:
    try:
        payload = json.loads(await request.body())
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8, a 5,000-digit number
        detail = str(e).split(";")[0][:200]  # not Python's advice to raise its digit limit
        raise RequestError(400, f"malformed JSON ({detail}); send "
                                f"{{\"images\": [base64, ...]}}") from None
    encoded = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(encoded, list) or not all(isinstance(s, str) for s in encoded):
        raise RequestError(400, "the JSON must be {\"images\": [base64 strings]}")
    check_count(len(encoded), "JSON list 'images'")
    files = []
    for i, text in enumerate(encoded):
        try:
            files.append((f"image {i}", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"image {i}: malformed base64; encode the file's bytes with "
                                    f"standard base64") from None
    return files


def check_count(count: int, where: str) -> None:
    if count == 0:
        raise RequestError(400, f"no image in the {where}; send at least one")
    if count > MAX_IMAGES:
        raise RequestError(413, f"too many images ({count}) in the {where}; at most "
                                f"{MAX_IMAGES} per request")


def top(request: Request, classes: int) -> int:
    text, most = request.query_params.get("top", "3"), min(images.MAX_TOP, classes)
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= most:
        raise RequestError(400, f"top must be a whole number from 1 to {most}, got {text!r}")
    return int(text)


async def uploaded(request: Request, decode_one: Callable[[bytes, str], Awaitable[np.ndarray]]
                    ) -> tuple[list[str], np.ndarray]:
    """The names and model inputs `[N, 28, 28, 1]` of a request's images (multipart or JSON),
    each decoded by `decode_one` (within the app's decode budget)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        files = await multipart_files(request)
    elif kind == "application/json":
        files = await json_files(request)
    else:
        raise RequestError(415, f"content type {kind or 'none'!r} is not accepted; send "
                                f"multipart/form-data (field 'image') or application/json")
    inputs = [await decode_one(data, name) for name, data in files]
    return [name for name, _ in files], np.stack(inputs)
