"""Bounds on what clients can make the server hold, whatever they send.

  `Limits`       every bound in one place (serve.py has a flag for each)
  `BoundedBodies` ASGI middleware on the bytes actually received (chunked or not): one request's
                 body (413), all bodies held at once (503), the time a body may take (408); a
                 client that leaves mid-upload is a 499 and one log line, not a server error
  `DecodeBudget` the pixels being decoded at once across requests, reserved from an image's
                 header before it is decoded (503 when none frees up in time)

With these, the server's memory is its model plus at most `inflight_bytes` of request bodies (and
`SMALL_BODY_BYTES` per connection), their parsed copies, and `decode_pixels` times the cost of a
decoded pixel (about 25 bytes: `images.read_image` works in float64). `connections` bounds the
connections (uvicorn answers 503 past it) and `shutdown_seconds` how long SIGTERM waits for
requests in flight, a stalled upload included.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # only starlette's type names: serve.py imports this module to parse its flags
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")
SMALL_BODY_BYTES = 64 * 2**10  # each request's first bytes are not charged to the shared budget
CLIENT_LEFT = 499  # nginx's status for a client that closed the connection before the answer


@dataclasses.dataclass(frozen=True)
class Limits:
    """The server's bounds; the defaults keep the cnn server under 1 GiB (docs/reliability.md)."""
    request_bytes: int = 32 * 2**20  # one request's body, as received
    inflight_bytes: int = 64 * 2**20  # all request bodies held at once
    body_seconds: float = 30.0  # the most a request's body may take to arrive
    image_pixels: int = 12_000_000  # one image (e.g. 4000 x 3000), from its header
    decode_pixels: int = 12_500_000  # all images being decoded at once
    decode_wait_seconds: float = 10.0  # the most an image waits for room to be decoded
    connections: int = 256  # open connections and requests in progress (503 past it)
    shutdown_seconds: float = 10.0  # SIGTERM: how long requests in flight may still take

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(f"{field.name} must be positive, got {getattr(self, field.name)}")
        if self.image_pixels > self.decode_pixels:
            raise ValueError(f"image_pixels ({self.image_pixels:,}) must be at most "
                             f"decode_pixels ({self.decode_pixels:,}): such an image never fits")


class Refused(Exception):
    """A request refused by a limit, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ClientLeft(Exception):
    """The client closed the connection before its body arrived."""


class BoundedBodies:
    """ASGI middleware bounding request bodies by the bytes and time they actually take."""

    def __init__(self, app: ASGIApp, limits: Limits):
        self.app, self.limits = app, limits
        self.held = 0  # bytes of bodies held by requests in progress, past each one's first bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _Body(self, receive)
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            body.check_declared(dict(scope["headers"]).get(b"content-length", b""))
            await self.app(scope, body.receive, sending)
        except Refused as e:
            if not started:
                await _answer(send, e.status, {"error": str(e), "status": e.status})
        except ClientLeft:
            print(f"client left during the upload of {scope['path']} after {body.received:,} "
                  f"bytes", file=sys.stderr, flush=True)
            # uvicorn sends nothing to a closed connection: this is for the metrics
            await _answer(send, CLIENT_LEFT, {})
        except asyncio.CancelledError:  # uvicorn's shutdown, once `shutdown_seconds` ran out
            print(f"cancelled at shutdown: {scope['path']} after {body.received:,} bytes",
                  file=sys.stderr, flush=True)
            if not started:
                await _answer(send, 503, {"error": "the server is shutting down", "status": 503})
        finally:
            self.held -= body.charged


async def _answer(send: Send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Body:
    """One request's body as it arrives, checked against the limits."""

    def __init__(self, bounds: BoundedBodies, receive: Receive):
        self.bounds, self.limits, self.next = bounds, bounds.limits, receive
        self.received = self.charged = 0
        self.complete = False
        self.deadline = asyncio.get_running_loop().time() + self.limits.body_seconds

    def check_declared(self, length: bytes) -> None:
        if length.isdigit() and int(length) > self.limits.request_bytes:
            raise self._too_large()

    def _too_large(self) -> Refused:
        return Refused(413, f"the request is over {self.limits.request_bytes:,} bytes; send fewer "
                            f"or smaller images")

    async def receive(self) -> Message:
        if self.complete:
            return await self.next()
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            message = await asyncio.wait_for(self.next(), max(remaining, 0))
        except asyncio.TimeoutError:
            raise Refused(408, f"the request body did not arrive within "
                               f"{self.limits.body_seconds:g} s; send it faster") from None
        if message["type"] == "http.disconnect":
            raise ClientLeft()
        self._count(len(message.get("body", b"")))
        self.complete = not message.get("more_body", False)
        return message

    def _count(self, size: int) -> None:
        self.received += size
        if self.received > self.limits.request_bytes:
            raise self._too_large()
        charge = min(size, max(0, self.received - SMALL_BODY_BYTES))
        if self.bounds.held + charge > self.limits.inflight_bytes:
            raise Refused(503, "the server is receiving too much at once; retry in a few seconds")
        self.bounds.held += charge
        self.charged += charge


class DecodeBudget:
    """A weighted semaphore over pixels: images are decoded (in threads) only while the pixels
    being decoded stay within `limits.decode_pixels`, so that concurrent decodes cannot add up
    (four 35-megapixel decodes at once took 3.3 GB)."""

    def __init__(self, limits: Limits, threads: int = 4):
        self.capacity, self.wait_seconds = limits.decode_pixels, limits.decode_wait_seconds
        self.used = 0
        self.freed = asyncio.Event()
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, "decode")

    async def run(self, pixels: int, function: Callable[..., T], *args) -> T:
        """`function(*args)` in a thread once `pixels` fit in the budget; Refused (503) if they do
        not within `decode_wait_seconds`. The pixels are held until the thread ends, even if the
        request is cancelled while it runs."""
        loop = asyncio.get_running_loop()
        pixels = min(pixels, self.capacity)
        deadline = loop.time() + self.wait_seconds
        while self.used + pixels > self.capacity:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Refused(503, "the server is decoding too many large images at once; retry "
                                   "in a few seconds or send smaller images")
            self.freed.clear()
            try:
                await asyncio.wait_for(self.freed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        self.used += pixels
        future = self.executor.submit(function, *args)
        future.add_done_callback(lambda _: self._release_from_thread(loop, pixels))
        return await asyncio.wrap_future(future)

    def _release_from_thread(self, loop: asyncio.AbstractEventLoop, pixels: int) -> None:
        if not loop.is_closed():  # a decode that outlived the server has nothing to give back
            loop.call_soon_threadsafe(self._release, pixels)

    def _release(self, pixels: int) -> None:
        self.used -= pixels
        self.freed.set()
