"""A bounded load test of scripts/serve.py on loopback with a compiled load generator (`hey`).

  python benchmarks/load_test.py --workdir=checkpoints/pretrained/cnn --seconds=10
  python benchmarks/load_test.py --clients=1,64 --serve-flag=--batch-window-ms=5
  python benchmarks/load_test.py --model-only

Starts the server once on a free loopback port, then, for each client count, drives `/healthz` (the
framework's ceiling: routing, HTTP and the event loop, no model) and `/v1/classify` (one real test
image as a PNG per request) for `--seconds` each with `hey -z`, reads every request's latency and
status from hey's CSV, and the images per model call from the server's /metrics. Prints one
markdown table (requests/s, p50/p99, ratios to /healthz at the same concurrency, requests not
answered 200, the server's CPU time per request from /proc: what load from other processes changes
least) and the model call alone per padded batch size (no HTTP). hey shares the machine
with the server: on a small machine it takes part of the CPU, as any client there would.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fmnist_jax import data, serving  # noqa: E402  pylint: disable=wrong-import-position

BOUNDARY = "fmnistjaxloadtest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(index: int = 0) -> bytes:
    """Test image `index` as a PNG file's bytes."""
    image = data.load_idx_folder(data.DEBIAN_DIR)["test"].images[index]
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart_body(index: int = 0) -> bytes:
    """A multipart upload of test image `index` as a PNG in the field `image`."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"test-{index}.png\"\r\nContent-Type: image/png\r\n\r\n").encode() \
        + png(index) + f"\r\n--{BOUNDARY}--\r\n".encode()


def hey(url: str, clients: int, seconds: float, body: Path | None = None) -> dict:
    """`clients` hey workers on `url` for `seconds` (POSTing `body` when given): requests/s,
    p50/p99 latency and the count not answered 200."""
    post = ["-m", "POST", "-D", str(body), "-T", f"multipart/form-data; boundary={BOUNDARY}"] \
        if body else []
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(clients), "-o", "csv", *post, url],
                         capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    ms = np.array([float(r["response-time"]) for r in rows]) * 1000
    offsets = [float(r["offset"]) + float(r["response-time"]) for r in rows]
    return {"requests": len(rows), "requests_per_second": len(rows) / max(offsets),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "not_200": sum(r["status-code"] != "200" for r in rows)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(server: subprocess.Popen, url: str, clients: int, seconds: float,
             body: Path | None = None) -> dict:
    """`hey` with the server's CPU milliseconds per request added."""
    before = cpu_seconds(server.pid)
    result = hey(url, clients, seconds, body)
    result["cpu_ms"] = (cpu_seconds(server.pid) - before) * 1000 / max(result["requests"], 1)
    return result


def batch_counts(url: str) -> tuple[float, float]:
    """The server's model calls and images so far, from /metrics."""
    values = dict(line.rsplit(" ", 1) for line in httpx.get(f"{url}/metrics").text.splitlines()
                  if line.startswith(("fmnist_batch_images_sum", "fmnist_batch_images_count")))
    return float(values["fmnist_batch_images_count"]), float(values["fmnist_batch_images_sum"])


@contextlib.contextmanager
def running_server(workdir: str, flags: list[str]) -> Iterator[tuple[subprocess.Popen, str]]:
    """scripts/serve.py on a free loopback port, once it answers: its process and base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve.py"),
                               f"--workdir={workdir}", f"--port={port}", *flags],
                              stdout=subprocess.DEVNULL)
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
        yield server, url
    finally:
        server.terminate()
        server.wait(timeout=60)


def load(workdir: str, flags: list[str], clients: list[int], seconds: float) -> list[dict]:
    """Per client count: /healthz, then /v1/classify with its images per model call."""
    with running_server(workdir, flags) as (server, url), tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(multipart_body())
        hey(f"{url}/v1/classify", 4, 1, body)  # warm connections and caches
        rows = []
        for c in clients:
            health = measured(server, f"{url}/healthz", c, seconds)
            calls, images = batch_counts(url)
            classify = measured(server, f"{url}/v1/classify", c, seconds, body)
            calls_after, images_after = batch_counts(url)
            classify["images_per_call"] = (images_after - images) / max(calls_after - calls, 1)
            rows += [{"path": "/healthz", "clients": c, **health},
                     {"path": "/v1/classify", "clients": c, **classify,
                      "rps_ratio": classify["requests_per_second"] / health["requests_per_second"],
                      "p50_ratio": classify["p50_ms"] / health["p50_ms"]}]
        return rows


def model_throughput(workdir: str, repeats: int = 20) -> dict[int, float]:
    """Images/s of the server's compiled model call alone, per padded batch size (no HTTP)."""
    predictor = serving.Predictor(serving.load_model(workdir), serving.BATCH_SIZES[-1],
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


def table(rows: list[dict]) -> str:
    lines = ["| path | clients | requests/s | p50 ms | p99 ms | requests | not 200 | "
             "server CPU ms per request | images per model call | requests/s ÷ /healthz | "
             "p50 ÷ /healthz |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        extra = (f"{r['images_per_call']:.1f} | {r['rps_ratio']:.2f} | {r['p50_ratio']:.1f}"
                 if "rps_ratio" in r else " | | ")
        lines.append(f"| `{r['path']}` | {r['clients']} | {r['requests_per_second']:,.0f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['requests']:,} | "
                     f"{r['not_200']} | {r['cpu_ms']:.2f} | {extra} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(ROOT / "checkpoints" / "pretrained" / "cnn"))
    parser.add_argument("--clients", default="1,16,64", help="client counts (default 1,16,64)")
    parser.add_argument("--seconds", type=float, default=10, help="per path and client count")
    parser.add_argument("--serve-flag", action="append", default=[],
                        help="a flag for scripts/serve.py (repeatable)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--model-only", action="store_true",
                        help="measure only the compiled model call per batch size, no server")
    args = parser.parse_args()
    if not args.model_only and shutil.which("hey") is None:
        raise SystemExit("hey is not installed: sudo apt-get install -y hey")
    rows = [] if args.model_only else load(args.workdir, args.serve_flag,
                                           [int(c) for c in args.clients.split(",")], args.seconds)
    model = model_throughput(args.workdir)
    if args.json:
        print(json.dumps({"load": rows, "model_images_per_second": model}, indent=2))
        return
    if rows:
        print(table(rows) + "\n")
    print("| batch size | images/s | ms per call |\n|---:|---:|---:|")
    for size, rate in model.items():
        print(f"| {size} | {rate:,.0f} | {size / rate * 1000:.2f} |")


if __name__ == "__main__":
    main()
