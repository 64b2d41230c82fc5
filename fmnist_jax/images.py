"""Image files as Fashion-MNIST inputs, made the way the dataset was made, and classified.

Fashion-MNIST turned product photos (dark garments on white) into 28x28 images: trim the edges
close to the background colour, resize the longest edge to 28, centre on the canvas, negate, convert
to 8-bit grayscale. `to_model_input` does the same to any PNG/JPEG; a picture whose background is
already dark (as in the dataset) is not negated.

`read_image` decodes a file or uploaded bytes only after checking their size and the pixel count
their header declares against `MAX_IMAGE_BYTES` and `MAX_IMAGE_PIXELS`, so that a small file
claiming a huge picture (a decompression bomb) is refused before it takes any memory.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist_jax.errors import UserError

if TYPE_CHECKING:
    from fmnist_jax.evaluation import Restored
    from fmnist_jax.ood import Detector

SIZE = 28
TRIM_TOLERANCE = 0.05 * 255  # the dataset trimmed edges within 5% of the background intensity
MAX_IMAGE_BYTES = 50 * 2**20  # the largest file decoded
MAX_IMAGE_PIXELS = 40_000_000  # the most pixels a decoded image may have (e.g. 8000 x 5000)
MAX_TOP = 10  # the most classes listed per image (predict.py --top, the server's ?top=)


class ImageFileError(UserError):
    """A file that cannot be read as an image."""


class ImageTooLargeError(ImageFileError):
    """An image over the file-size or pixel limit, refused before it is decoded."""


def _grayscale(image: Image.Image) -> np.ndarray:
    """Intensities `[H, W]` in 0..255 (float); transparent areas become white, like paper."""
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image, np.float64) / 257.0
    if image.mode in ("I", "F"):
        x = np.asarray(image, np.float64)
        return (x - x.min()) / max(x.max() - x.min(), 1e-12) * 255.0
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return np.asarray(image.convert("L"), np.float64)


def _size_bytes(source: str | Path | IO[bytes]) -> int:
    if isinstance(source, (str, Path)):
        return os.stat(source).st_size
    start = source.tell()
    end = source.seek(0, os.SEEK_END)
    source.seek(start)
    return end - start


def _open(source: str | Path | IO[bytes], name: str, max_bytes: int,
          max_pixels: int) -> Image.Image:
    """The image with only its header read, once its file size and pixel count are within limits."""
    size = _size_bytes(source)
    if size > max_bytes:
        raise ImageTooLargeError(f"{name}: {size:,} bytes, over the limit of {max_bytes:,}; "
                                 f"use a smaller file")
    too_large = f"over the limit of {max_pixels:,} pixels; scale it down"
    with warnings.catch_warnings():  # PIL's own, larger limit: a warning, and twice it an error
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise ImageTooLargeError(f"{name}: {too_large} ({e})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(f"{name}: {width} x {height} pixels, {too_large}")
    return image


def read_image(source: str | Path | IO[bytes], name: str | None = None,
               max_bytes: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """The intensities `[H, W]` (0..255), upright, of an image file or of a binary file object
    (e.g. `io.BytesIO` of uploaded bytes, named `name` in errors); `ImageTooLargeError` over the
    limits (default MAX_IMAGE_BYTES and MAX_IMAGE_PIXELS), checked before decoding, and
    `ImageFileError` if it is not an image."""
    if name is None:
        name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "image")
    limits = (max_bytes or MAX_IMAGE_BYTES, max_pixels or MAX_IMAGE_PIXELS)
    try:
        with _open(source, name, *limits) as image:
            return _grayscale(ImageOps.exif_transpose(image))
    except FileNotFoundError:
        raise ImageFileError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        detail = str(e).replace(repr(source), repr(name))[:120]  # a file object by its name
        raise ImageFileError(f"{name}: not an image that can be read "
                             f"({type(e).__name__}: {detail})") from None


def _border(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])


def to_model_input(gray: np.ndarray) -> np.ndarray:
    """Intensities `[H, W]` to a dataset-like uint8 image `[28, 28, 1]`: light garment on black.

    The background is the median of the outermost pixels: when light, the picture is negated.
    A 28x28 picture is already at the dataset's scale and is taken as it is (negated if light).
    """
    gray = np.asarray(gray, np.float64)
    if np.median(_border(gray)) > 127.5:
        gray = 255.0 - gray
    if gray.shape == (SIZE, SIZE):
        return gray.round().astype(np.uint8)[..., None]
    background = float(np.median(_border(gray)))
    rows, cols = np.nonzero(np.abs(gray - background) > TRIM_TOLERANCE)
    if rows.size:
        gray = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    gray = np.clip((gray - background) * 255.0 / max(255.0 - background, 1.0), 0, 255)
    height, width = gray.shape
    scale = SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray(gray.round().astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    canvas = np.zeros((SIZE, SIZE), np.uint8)
    top, left = (SIZE - size[1] + 1) // 2, (SIZE - size[0] + 1) // 2  # odd margins: as the dataset
    canvas[top:top + size[1], left:left + size[0]] = np.asarray(small)
    return canvas[..., None]


def load_image(source: str | Path | IO[bytes]) -> np.ndarray:
    """An image file (or binary file object) as a model input `[28, 28, 1]` uint8."""
    return to_model_input(read_image(source))


def top_classes(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> list[dict]:
    """The `k` most probable classes, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"class": class_names[i], "label": int(i), "probability": float(probabilities[i])}
            for i in order]


def load_images(paths: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Per file `{"file": path}`, with its `"error"` when it cannot be read; and the model inputs
    `[28, 28, 1]` of the readable files, in order."""
    results: list[dict[str, Any]] = []
    inputs = []
    for path in paths:
        try:
            inputs.append(load_image(path))
            results.append({"file": str(path)})
        except ImageFileError as e:
            results.append({"file": str(path), "error": str(e)})
    return results, inputs


def classify(restored: Restored, paths: Sequence[str | Path], k: int = 3,
             detector: Detector | None = None) -> list[dict[str, Any]]:
    """Per file: its top-`k` classes (of the ensemble when several members), whether it looks
    like Fashion-MNIST (`in_distribution`, `ood_score`: None without a `detector`), or its error.

    Every readable file goes through one compiled pass.
    """
    from fmnist_jax import ood  # pylint: disable=import-outside-toplevel
    results, inputs = load_images(paths)
    if inputs:
        stacked = np.stack(inputs)
        probabilities = iter(restored.probabilities(stacked).mean(0))
        flags = iter(ood.no_flag(len(inputs)) if detector is None
                     else detector.flag(np.asarray(detector.components(stacked))))
        for result in results:
            if "error" not in result:
                result["top"] = top_classes(next(probabilities), restored.class_names, k)
                result.update(next(flags))
    return results
