"""Serving a model over HTTP: a Starlette app on uvicorn around the portable model.

  POST /v1/classify   images as multipart files (field `image`, repeatable) or JSON
                      `{"images": [base64, ...]}`; `?top=K`; answers each image's top-K classes
                      and whether it looks like Fashion-MNIST (`in_distribution`, `ood_score`)
  POST /v1/explain    the same inputs; a PNG of the top class's heat map over the image, or
                      every image's map as JSON with `?format=json`
  GET  /v1/model      name, classes, test accuracy, version, device, limits
  GET  /v1/examples   a few real test images for the web page
  GET  /healthz       {"status": "ok"}
  GET  /metrics       Prometheus text: requests by status, latency, batch sizes, compilations
  GET  /              the web page (fmnist_jax/static/)

Images are preprocessed as predict.py does (`images.read_image`, `images.to_model_input`). The
model is the portable one (`portable.py`) run by jax, or its ONNX conversion (`onnx_export.py`) run
by onnxruntime (`runtime.py`): read from a release or export, or exported in memory from a
workdir. Concurrent requests are gathered into one call (`Batcher`: a request that finds the
model idle runs at once; those that arrive while it runs form the next batch), padded to one of a
few fixed batch sizes compiled at start, so nothing compiles while serving. The
out-of-distribution detector (`ood.py`) is the one the release ships; the explainer (`explain.py`)
needs a release or workdir's weights. A bad request gets a JSON error with a 4xx status. What
clients can make it hold (bytes, pixels being decoded, time, connections) is bounded by
`serving_limits.Limits`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import prometheus_client as prom
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import fmnist_jax
from fmnist_jax import images, ood, runtime, uploads
from fmnist_jax.errors import UserError, reading
from fmnist_jax.metrics import check_finite
from fmnist_jax.serving_limits import BoundedBodies, DecodeBudget, Limits
from fmnist_jax.serving_limits import Refused as RequestError

STATIC = Path(__file__).resolve().parent / "static"
SHAPE = (images.SIZE, images.SIZE, 1)
BATCH_SIZES = (1, 8, 32, 128)
KEEP_ALIVE_SECONDS = 75  # idle connections kept open: clients that reuse them never race a close


def load_explainer(path: str | Path) -> Any:
    """An `explain.Explainer` of the release or workdir `path`; None for an exported model file
    (which has no weights to take gradients of)."""
    path = Path(path)
    if not (path / "checkpoints").is_dir():
        return None
    from fmnist_jax import explain, restore  # pylint: disable=import-outside-toplevel
    return explain.Explainer.from_restored(restore.select(restore.load_workdir(path)))


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The padded sizes compiled for batches of up to `max_batch` images."""
    if max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {max_batch}")
    return tuple(sorted({s for s in BATCH_SIZES if s < max_batch} | {max_batch}))


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("fmnist_requests", "HTTP requests by path and status",
                                     ["path", "status"], registry=self.registry)
        self.latency = prom.Histogram("fmnist_request_latency_seconds", "Request latency",
                                      ["path"], registry=self.registry,
                                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                               2.5, 5, 10))
        self.batch = prom.Histogram("fmnist_batch_images", "Images per model call",
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.images = prom.Counter("fmnist_images", "Images classified", registry=self.registry)
        self.compilations = prom.Counter("fmnist_compilations", "Traces of the model function "
                                         "(one per compiled batch size)", registry=self.registry)


class Predictor:
    """The model (and the detector's components, when there is one) as one jitted function of
    padded batches; every size compiled at start."""

    def __init__(self, model: runtime.Model, max_batch: int, metrics: Metrics,
                 detector: ood.Detector | None = None):
        self.sizes = batch_sizes(max_batch)
        self.metrics = metrics
        self.served = 0  # images classified
        probabilities = model.batch_function(metrics.compilations.inc)

        @jax.jit
        def components(x):
            metrics.compilations.inc()  # runs only when jit traces, i.e. compiles a new shape
            return detector.components(x)

        def function(x):
            out = {"probabilities": probabilities(x)}
            if detector is not None:
                out["components"] = components(x)
            return out

        self.function = function
        self.source = f"the served model ({model.metadata['model']})"
        for size in self.sizes:  # a damaged model is refused here, before it answers anyone
            warm = self.function(np.zeros((size, *SHAPE), np.uint8))
            check_finite(np.asarray(warm["probabilities"]), self.source)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """`{"probabilities": [N, 10]}` (and `"components": [N, 4]`) of uint8 `[N, 28, 28, 1]`,
        in padded chunks of known sizes."""
        outputs = []
        for start in range(0, len(batch), self.sizes[-1]):
            chunk = batch[start:start + self.sizes[-1]]
            size = next(s for s in self.sizes if s >= len(chunk))
            padded = np.zeros((size, *chunk.shape[1:]), np.uint8)
            padded[:len(chunk)] = chunk
            self.metrics.batch.observe(len(chunk))
            outputs.append(jax.tree.map(lambda a, n=len(chunk): np.asarray(a)[:n],
                                        self.function(padded)))
            check_finite(outputs[-1]["probabilities"], self.source)
        self.metrics.images.inc(len(batch))
        self.served += len(batch)
        return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


class Measured:
    """ASGI middleware counting every HTTP response by path and status, and timing it."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: set[str]):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


@dataclasses.dataclass
class _Waiting:
    images: np.ndarray
    future: asyncio.Future


class Batcher:
    """Gathers concurrent requests' images into one call. With `window` 0 (the default) a request
    that finds the model idle runs at once, and the requests that arrive while a call runs form the
    next one: no idle wait, and batches grow with the load. A `window` > 0 makes a call wait up to
    that long after its first request for more, until `max_batch` images are waiting."""

    def __init__(self, predictor: Predictor, window: float):
        self.predictor, self.window = predictor, window
        self.max_batch = predictor.sizes[-1]
        self.waiting: collections.deque[_Waiting] = collections.deque()
        self.arrived = asyncio.Event()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, "model")

    async def classify(self, batch: np.ndarray) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(_Waiting(batch, future))
        self.arrived.set()
        return await future

    def _take(self, taken: list[_Waiting], count: int) -> int:
        """Moves waiting requests into `taken` while they fit; the new image count."""
        while self.waiting and (not taken or count + len(self.waiting[0].images)
                                <= self.max_batch):
            taken.append(self.waiting.popleft())
            count += len(taken[-1].images)
        return count

    async def _gather(self) -> list[_Waiting]:
        while not self.waiting:
            self.arrived.clear()
            await self.arrived.wait()
        deadline = asyncio.get_running_loop().time() + self.window
        taken: list[_Waiting] = []
        count = self._take(taken, 0)
        while count < self.max_batch and not self.waiting:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self.arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)
            count = self._take(taken, count)
        return taken

    async def run(self) -> None:
        """Serves batches until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            taken = await self._gather()
            try:
                outputs = await loop.run_in_executor(
                    self.executor, self.predictor, np.concatenate([w.images for w in taken]))
            except Exception as e:  # pylint: disable=broad-except
                for w in taken:
                    if not w.future.done():
                        w.future.set_exception(e)
                continue
            offsets = np.cumsum([0] + [len(w.images) for w in taken])
            for w, start, stop in zip(taken, offsets[:-1], offsets[1:]):
                if not w.future.done():
                    w.future.set_result(jax.tree.map(lambda a, i=start, j=stop: a[i:j], outputs))


def _flags(detector: ood.Detector | None, outputs: dict[str, np.ndarray]) -> list[dict]:
    if detector is None:
        return ood.no_flag(len(outputs["probabilities"]))
    return detector.flag(outputs["components"])


def _heat_maps(explainer: Any, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The explainer's first method's maps `[N, 28, 28]`, one compiled call of one image each."""
    method = explainer.methods[0]
    return np.concatenate([explainer.attributions(method, inputs[i:i + 1], targets[i:i + 1])
                           for i in range(len(inputs))])


def _png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def create_app(model: runtime.Model, max_batch: int = BATCH_SIZES[-1],
               window: float = 0.0, detector: ood.Detector | None = None,
               explainer: Any = None, limits: Limits = Limits()) -> Starlette:
    """The app serving `model` (with its out-of-distribution `detector` and `explainer` when
    given); its batch sizes are compiled here, before it answers anyone."""
    metrics = Metrics()
    budget = DecodeBudget(limits)
    predictor = Predictor(model, max_batch, metrics, detector)
    batcher = Batcher(predictor, window)
    if explainer is not None:  # compiled now: the first request does not wait for it
        _heat_maps(explainer, np.zeros((1, *SHAPE), np.uint8), np.zeros(1, np.int32))
    info = {"name": model.metadata["model"], "classes": model.class_names,
            "test_accuracy": model.metadata.get("test_accuracy"),
            "predictor": model.metadata.get("predictor"), "seeds": model.metadata.get("seeds"),
            "tta": model.metadata.get("tta"),
            "version": {"fmnist_jax": fmnist_jax.__version__, "jax": jax.__version__,
                        "commit": model.metadata.get("commit")}, "runtime": model.runtime,
            "device": model.device,
            "batch_sizes": list(predictor.sizes), "batch_window_ms": window * 1000,
            "ood": None if detector is None else {
                k: detector.parameters[k] for k in ("method", "veto", "threshold",
                                                    "validation_accepted")},
            "explain": None if explainer is None else explainer.methods[0],
            "limits": {"images_per_request": uploads.MAX_IMAGES,
                       "image_bytes": uploads.MAX_IMAGE_BYTES,
                       **dataclasses.asdict(limits)}}

    async def classify(request: Request) -> Response:
        top = uploads.top(request, len(model.class_names))
        names, inputs = await uploads.uploaded(request, _decode)
        outputs = await batcher.classify(inputs)
        return JSONResponse({"model": info["name"], "results": [
            {"file": name, "top": images.top_classes(p, model.class_names, top), **flag}
            for name, p, flag in zip(names, outputs["probabilities"],
                                     _flags(detector, outputs))]})

    async def explain_route(request: Request) -> Response:
        answer = request.query_params.get("format", "png")
        if answer not in ("png", "json"):
            raise RequestError(400, f"format must be png or json, got {answer!r}")
        if explainer is None:
            raise RequestError(404, "this server has no explainer (it serves an exported model "
                                    "file); serve a release or workdir folder to explain")
        names, inputs = await uploads.uploaded(request, _decode)
        if answer == "png" and len(inputs) > 1:
            raise RequestError(400, f"a PNG explains one image, got {len(inputs)}; send one, "
                                    f"or ask ?format=json")
        outputs = await batcher.classify(inputs)
        targets = outputs["probabilities"].argmax(-1)
        maps = await asyncio.to_thread(_heat_maps, explainer, inputs, targets)
        if answer == "png":
            from fmnist_jax import explain  # pylint: disable=import-outside-toplevel
            return Response(_png(explain.overlay(inputs[0], maps[0])), media_type="image/png")
        return JSONResponse({"model": info["name"], "method": explainer.methods[0], "results": [
            {"file": name, "class": model.class_names[t], "label": int(t), **flag,
             "map": np.round(m, 5).tolist()}
            for name, t, m, flag in zip(names, targets, maps, _flags(detector, outputs))]})

    async def _decode(data: bytes, name: str) -> np.ndarray:
        """Small images in the event loop; larger ones in a thread, within the decode budget."""
        size = uploads.pixels(data)
        if size <= uploads.INLINE_DECODE_PIXELS or size > limits.image_pixels:  # refused if over
            return uploads.decode(data, name, limits.image_pixels)
        return await budget.run(size, uploads.decode, data, name, limits.image_pixels)

    async def examples(_: Request) -> Response:
        listed = json.loads((STATIC / "examples" / "examples.json").read_text())
        return JSONResponse([dict(e, url=f"/static/examples/{e['file']}") for e in listed])

    async def metrics_page(_: Request) -> Response:
        return Response(prom.generate_latest(metrics.registry), media_type=prom.CONTENT_TYPE_LATEST)

    async def error(_: Request, e: Exception) -> Response:
        if isinstance(e, RequestError):
            status, message = e.status, str(e)
        elif isinstance(e, HTTPException):
            status, message = e.status_code, str(e.detail)
        elif isinstance(e, UserError):  # a model that gives NaN: the server's fault, said plainly
            status, message = 500, str(e)
        else:
            status, message = 500, f"internal error ({type(e).__name__}); please report it"
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        task = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            batcher.executor.shutdown(wait=True)
            print(f"stopped after {predictor.served} image(s)", flush=True)

    routes = [Route("/", lambda _: FileResponse(STATIC / "index.html")),
              Route("/healthz", lambda _: JSONResponse({"status": "ok"})),
              Route("/v1/model", lambda _: JSONResponse(info)),
              Route("/v1/examples", examples),
              Route("/v1/classify", classify, methods=["POST"]),
              Route("/v1/explain", explain_route, methods=["POST"]),
              Route("/metrics", metrics_page),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    measured = Middleware(Measured, metrics=metrics, paths={r.path for r in routes})
    bounded = Middleware(BoundedBodies, limits=limits)
    return Starlette(routes=routes, lifespan=lifespan, middleware=[measured, bounded],
                     exception_handlers={RequestError: error, HTTPException: error,
                                         Exception: error})


def serve(path: str | Path, host: str, port: int, max_batch: int, window: float,
          limits: Limits = Limits(), runtime_name: str = "jax") -> None:
    """Serves the model in `path` with `runtime_name` until SIGINT/SIGTERM (uvicorn's graceful
    shutdown, cut short after `limits.shutdown_seconds`)."""
    with reading(path):  # a damaged model stops the start with one line
        model = runtime.load(path, runtime_name)
        app = create_app(model, max_batch, window, detector=ood.load(path),
                         explainer=load_explainer(path), limits=limits)
        name = model.metadata["model"]
    print(f"serving {name} with {model.runtime} on http://{host}:{port}/ (batch sizes "
          f"{list(batch_sizes(max_batch))}, window {window * 1000:g} ms)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                timeout_keep_alive=KEEP_ALIVE_SECONDS, limit_concurrency=limits.connections,
                timeout_graceful_shutdown=limits.shutdown_seconds)
