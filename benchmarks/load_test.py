"""A bounded load test of scripts/serve.py on loopback: concurrent clients post real test images
(one PNG per request) for a fixed time, with dynamic batching and without (--max-batch=1), with the
jax runtime and/or the ONNX one (--runtime, repeatable).

  python benchmarks/load_test.py --workdir=checkpoints/pretrained/cnn --clients=64 --seconds=20
  python benchmarks/load_test.py --workdir=checkpoints/pretrained/cnn --model-only
  python benchmarks/load_test.py --runtime=jax --runtime=onnx --generator=hey --clients=1,64 \
      --modes=dynamic --seconds=10   # the runtimes side by side, a compiled load generator

Starts the server once per runtime and mode on a free port, drives it with httpx's asyncio client
(several images, multipart) or with `hey` (one image as JSON, every request the same), and prints
requests/s, p50/p90/p99 latency and the count of requests not answered with 200 (JSON with --json).
The clients share the machine with the server: on a small machine they take part of its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fmnist_jax import data, runtime, serving  # noqa: E402  pylint: disable=wrong-import-position

MODES = {"dynamic": ("dynamic batching", []),
         "unbatched": ("no batching (--max-batch=1)", ["--max-batch=1"])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pngs(count: int) -> list[bytes]:
    """The first `count` test images as PNG files."""
    images = data.load_idx_folder(data.DEBIAN_DIR)["test"].images[:count]
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0]).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


async def drive(url: str, files: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` loops posting one image each until `seconds` pass; latencies and statuses."""
    latencies, statuses = [], {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        stop = time.perf_counter() + seconds

        async def client(c: int) -> None:
            i = c
            while time.perf_counter() < stop:
                start = time.perf_counter()
                try:
                    response = await http.post("/v1/classify", files={
                        "image": (f"{i}.png", files[i % len(files)], "image/png")})
                    status = str(response.status_code)
                except httpx.HTTPError as e:
                    status = type(e).__name__
                latencies.append(time.perf_counter() - start)
                statuses[status] = statuses.get(status, 0) + 1
                i += clients

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        elapsed = time.perf_counter() - start
    return summarize(latencies, statuses, elapsed)


def summarize(latencies: list[float], statuses: dict[str, int], elapsed: float) -> dict:
    """Requests/s and latency percentiles of `latencies` (seconds) over `elapsed` seconds."""
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": elapsed,
            "requests_per_second": len(latencies) / elapsed, "statuses": statuses,
            "not_ok": sum(n for s, n in statuses.items() if s != "200"),
            **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)}}


def drive_hey(url: str, files: list[bytes], clients: int, seconds: float) -> dict:
    """`hey` (a compiled load generator) posting the first image as JSON from `clients` workers
    for `seconds`; its per-request CSV summarized as `drive` does."""
    body = json.dumps({"images": [base64.b64encode(files[0]).decode()]})
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(body)
        f.flush()
        out = subprocess.run(["hey", "-z", f"{seconds:g}s", "-c", str(clients), "-m", "POST",
                              "-T", "application/json", "-D", f.name, "-o", "csv",
                              f"{url}/v1/classify"], capture_output=True, text=True, check=True)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status-code"]] = statuses.get(row["status-code"], 0) + 1
    elapsed = max(float(r["offset"]) + float(r["response-time"]) for r in rows)
    return summarize([float(r["response-time"]) for r in rows], statuses, elapsed)


def batches(url: str) -> dict:
    """Model calls and images so far, from the server's /metrics."""
    text = httpx.get(f"{url}/metrics").text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines()
                  if line.startswith(("fmnist_batch_images_sum", "fmnist_batch_images_count")))
    return {"model_calls": float(values["fmnist_batch_images_count"]),
            "images": float(values["fmnist_batch_images_sum"])}


def run_mode(workdir: str, flags: list[str], files: list[bytes], clients: list[int],
             seconds: float, generator: str = "httpx") -> dict[int, dict]:
    """Per client count, the load results of one server started with `flags`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve.py"),
                               f"--workdir={workdir}", f"--port={port}", *flags],
                              stdout=subprocess.DEVNULL, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start ({' '.join(flags)})") from None
                time.sleep(0.5)
        results = {}
        for count in clients:
            before = batches(url)
            result = (drive_hey(url, files, count, seconds) if generator == "hey"
                      else asyncio.run(drive(url, files, count, seconds)))
            after = batches(url)
            calls = after["model_calls"] - before["model_calls"]
            images = after["images"] - before["images"]
            results[count] = {**result, "model_calls": calls,
                              "images_per_call": images / max(calls, 1)}
        return results
    finally:
        server.terminate()
        server.wait(timeout=60)


def model_throughput(workdir: str, runtime_name: str = "jax",
                     repeats: int = 20) -> dict[int, float]:
    """Images/s of the server's model call alone, per padded batch size (no HTTP)."""
    predictor = serving.Predictor(runtime.load(workdir, runtime_name), serving.BATCH_SIZES[-1],
                                  serving.Metrics())
    images = data.load_idx_folder(data.DEBIAN_DIR)["test"].images
    out = {}
    for size in predictor.sizes:
        predictor(images[:size])
        start = time.perf_counter()
        for _ in range(repeats):
            predictor(images[:size])
        out[size] = size * repeats / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(ROOT / "checkpoints" / "pretrained" / "cnn"))
    parser.add_argument("--clients", default="64", help="client counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--images", type=int, default=256, help="distinct test images sent")
    parser.add_argument("--runtime", action="append", choices=("jax", "onnx"),
                        help="the server's runtime (repeatable; default jax)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"batching modes, comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--generator", choices=("httpx", "hey"), default="httpx",
                        help="httpx's asyncio client in this process, or hey (compiled)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--model-only", action="store_true",
                        help="measure only the compiled model call per batch size, no server")
    args = parser.parse_args()
    runtimes = args.runtime or ["jax"]
    if args.model_only:
        if len(runtimes) > 1:
            parser.error("--model-only measures one --runtime per process: the other runtime's "
                         "threads would share the cores")
        for name in runtimes:
            for size, rate in model_throughput(args.workdir, name).items():
                print(f"{name} batch {size:4d}: {rate:8.0f} images/s, "
                      f"{size / rate * 1000:7.2f} ms per call")
        return
    files = pngs(args.images)
    clients = [int(c) for c in args.clients.split(",")]
    results = {f"{name}, {MODES[mode][0]}": run_mode(
        args.workdir, [*MODES[mode][1], f"--runtime={name}"], files, clients, args.seconds,
        args.generator) for name in runtimes for mode in args.modes.split(",")}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("| runtime, mode | clients | requests/s | p50 ms | p90 ms | p99 ms | requests | not 200 "
          "| images/call |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, by_clients in results.items():
        for count, r in by_clients.items():
            print(f"| {mode} | {count} | {r['requests_per_second']:.0f} | {r['p50_ms']:.1f} | "
                  f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['requests']} | {r['not_ok']} | "
                  f"{r['images_per_call']:.1f} |")


if __name__ == "__main__":
    main()
