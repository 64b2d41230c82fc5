"""The server's `Batcher` in process, around a slow stand-in model: a lone request runs at once,
requests arriving while a call runs form the next batch, a window set by flag waits for more."""

from __future__ import annotations

import asyncio
import threading
import time

import chex
import numpy as np

from fmnist_jax import serving

CALL_SECONDS = 0.2


class SlowModel:
    """Records each call's image count; every call takes `CALL_SECONDS` (as a busy model would)."""

    sizes = (1, 8, 32)

    def __init__(self):
        self.calls: list[int] = []
        self.started = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        self.started.set()
        time.sleep(CALL_SECONDS)
        return np.repeat(batch.reshape(len(batch), -1)[:, :1].astype(np.float32), 10, axis=1)


def images(value: int, count: int = 1) -> np.ndarray:
    return np.full((count, *serving.SHAPE), value, np.uint8)


async def with_batcher(window: float, scenario):
    model = SlowModel()
    batcher = serving.Batcher(model, window)
    task = asyncio.create_task(batcher.run())
    try:
        return model, await scenario(batcher, model)
    finally:
        task.cancel()
        batcher.executor.shutdown(wait=True)


def test_a_lone_request_runs_at_once():
    async def lone(batcher, _):
        start = time.perf_counter()
        out = await batcher.classify(images(7))
        return time.perf_counter() - start, out

    model, (seconds, out) = asyncio.run(with_batcher(0.0, lone))
    assert model.calls == [1]
    assert seconds < CALL_SECONDS + 0.1  # the call itself, no wait before it
    chex.assert_trees_all_close(out, np.full((1, 10), 7.0, np.float32))


def test_requests_arriving_during_a_call_form_the_next_batch():
    async def burst(batcher, model):
        first = asyncio.ensure_future(batcher.classify(images(1)))
        await asyncio.to_thread(model.started.wait)  # the first call is running
        rest = [asyncio.ensure_future(batcher.classify(images(v, v))) for v in range(2, 8)]
        return await asyncio.gather(first, *rest)

    model, outs = asyncio.run(with_batcher(0.0, burst))
    assert model.calls == [1, sum(range(2, 8))]  # the six requests that waited share one call
    for v, out in zip(range(1, 8), outs):
        chex.assert_shape(out, (v, 10))
        chex.assert_trees_all_close(out, np.full((v, 10), float(v), np.float32))


def test_a_window_set_by_flag_waits_for_more():
    window = 0.3

    async def two_apart(batcher, _):
        start = time.perf_counter()
        first = asyncio.ensure_future(batcher.classify(images(1)))
        await asyncio.sleep(0.1)
        await asyncio.gather(first, batcher.classify(images(2)))
        return time.perf_counter() - start

    model, seconds = asyncio.run(with_batcher(window, two_apart))
    assert model.calls == [2] and seconds >= window
