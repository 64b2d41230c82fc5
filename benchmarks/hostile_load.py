"""A hostile load test of scripts/serve.py on loopback: does the server stay within its memory
ceiling and keep answering normal traffic while clients attack it?

  python benchmarks/hostile_load.py --workdir=checkpoints/pretrained/cnn --seconds=40

Starts the server with its default limits (fmnist_jax/serving_limits.py), measures normal traffic
alone for `--calm-seconds` with `hey` (one real test image per multipart request), then again for
`--seconds` while a pool of attackers on raw sockets sends, many at once and over and over:
chunked and declared uploads far over the request limit, slow uploads (a byte a second, or 30 MB
then a stall), uploads aborted half way, decompression-bomb PNG headers (5900 x 5900) and real
PNGs just under the pixel limit (3400 x 3400, each decoded). It reports the server's peak resident
memory (VmHWM) against `--ceiling-mib`, every answer by status, and normal traffic's p50/p99 and
statuses in both phases; exit 1 if the ceiling was passed or normal traffic got anything but 200.
Everything runs on this machine: the attackers and hey take their share of its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import load_test  # noqa: E402  pylint: disable=wrong-import-position

CHUNK = b"x" * 2**16
Sender = Callable[[asyncio.StreamWriter], Awaitable[None]]


def multipart(name: str, content: bytes, boundary: str = "hostileboundary") -> tuple[str, bytes]:
    """A multipart body with one file in the field `image`, and its content type."""
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\""
            f"\r\nContent-Type: image/png\r\n\r\n").encode() + content + \
        f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def png(width: int, height: int) -> bytes:
    """A real PNG: a dark square on white, decoded in full by the server."""
    pixels = np.full((height, width), 255, np.uint8)
    pixels[height // 4:3 * height // 4, width // 4:3 * width // 4] = 30
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_header(width: int, height: int) -> bytes:
    """A PNG header declaring `width` x `height` pixels (what a decoder sizes its buffer by)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(bytes(2**20), 9))


def body_of(data: bytes) -> Sender:
    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
    return send


def flood(total: int, chunked: bool) -> Sender:
    """`total` bytes as fast as the server takes them (chunked framing or plain)."""
    async def send(writer: asyncio.StreamWriter) -> None:
        for _ in range(total // len(CHUNK)):
            writer.write(b"%x\r\n%b\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK)
            await writer.drain()
    return send


def stall_after(sent: int, trickle_seconds: float | None) -> Sender:
    """`sent` bytes, then a byte every `trickle_seconds` (or nothing more)."""
    async def send(writer: asyncio.StreamWriter) -> None:
        await flood(sent, chunked=False)(writer)
        while True:
            await asyncio.sleep(trickle_seconds or 3600)
            writer.write(b"x")
            await writer.drain()
    return send


def abort_after(sent: int) -> Sender:
    async def send(writer: asyncio.StreamWriter) -> None:
        await flood(sent, chunked=False)(writer)
        writer.close()
    return send


def attacks() -> dict[str, tuple[dict[str, str], Sender]]:
    """Each attack: its headers and how it sends its body."""
    bomb_type, bomb = multipart("bomb.png", bomb_header(5900, 5900))
    big_type, big = multipart("big.png", png(3400, 3400))
    json_type = "application/json"
    return {
        "chunked 64 MB": ({"Content-Type": json_type, "Transfer-Encoding": "chunked"},
                          flood(64 * 2**20, chunked=True)),
        "declared 100 MB": ({"Content-Type": json_type, "Content-Length": str(100 * 2**20)},
                            flood(100 * 2**20, chunked=False)),
        "slow, a byte a second": ({"Content-Type": json_type, "Content-Length": "100000"},
                                  stall_after(10, trickle_seconds=1)),
        "30 MB then a stall": ({"Content-Type": json_type, "Content-Length": str(31 * 2**20)},
                               stall_after(30 * 2**20, trickle_seconds=None)),
        "aborted half way (by the client)": (
            {"Content-Type": json_type, "Content-Length": str(4 * 2**20)}, abort_after(2 * 2**20)),
        "bomb header 5900 x 5900": ({"Content-Type": bomb_type, "Content-Length": str(len(bomb))},
                                    body_of(bomb)),
        "PNG 3400 x 3400 (decoded)": ({"Content-Type": big_type,
                                       "Content-Length": str(len(big))}, body_of(big)),
    }


async def exchange(port: int, headers: dict[str, str], send: Sender, timeout: float) -> str:
    """One request on a raw connection: the answer's status, or how the connection ended."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        return f"connect {type(e).__name__}"
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\n{head}\r\n".encode())
    sender = asyncio.create_task(send(writer))
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.split()[1].decode() if line else "closed without an answer"
    except asyncio.TimeoutError:
        return "still unanswered at the end"
    except OSError as e:
        return type(e).__name__
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()


async def attack(port: int, seconds: float, per_kind: int) -> dict[str, collections.Counter]:
    """`per_kind` attackers of every kind, each repeating its attack until `seconds` pass."""
    outcomes = {kind: collections.Counter() for kind in attacks()}
    stop = time.monotonic() + seconds

    async def attacker(kind: str, headers: dict[str, str], send: Sender) -> None:
        while (left := stop - time.monotonic()) > 0:
            outcomes[kind][await exchange(port, headers, send, left + 5)] += 1

    await asyncio.gather(*(attacker(kind, headers, send) for kind, (headers, send)
                           in attacks().items() for _ in range(per_kind)))
    return outcomes


def hey(url: str, seconds: float, clients: int) -> dict:
    """Normal traffic: `clients` hey workers posting one real test image each request."""
    content_type, body = multipart("normal.png", load_test.png(0))
    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        out = subprocess.run(["hey", "-z", f"{seconds:g}s", "-c", str(clients), "-m", "POST",
                              "-T", content_type, "-D", f.name, "-o", "csv", "-t", "60",
                              f"{url}/v1/classify"], capture_output=True, text=True, check=True)
    rows = [line.split(",") for line in out.stdout.splitlines()[1:] if line]
    ms = np.array([float(r[0]) for r in rows]) * 1000
    return {"requests": len(rows), "statuses": dict(collections.Counter(r[6] for r in rows)),
            **{f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 99)}}


def memory_mib(pid: int, field: str) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(l for l in status.splitlines() if l.startswith(field)).split()[1]) / 1024


def server_statuses(url: str) -> dict[str, int]:
    counts: dict[str, int] = collections.Counter()
    for line in httpx.get(f"{url}/metrics", timeout=60).text.splitlines():
        if line.startswith('fmnist_requests_total{path="/v1/classify"'):
            counts[line.split('status="')[1].split('"')[0]] += int(float(line.split()[-1]))
    return dict(counts)


def run(workdir: str, seconds: float, calm_seconds: float, clients: int, per_kind: int) -> dict:
    with load_test.running_server(workdir, []) as (server, url):
        port = int(url.rsplit(":", 1)[1])
        started = memory_mib(server.pid, "VmHWM")
        calm = hey(url, calm_seconds, clients)

        async def both() -> tuple[dict, dict]:
            normal = asyncio.create_task(asyncio.to_thread(hey, url, seconds, clients))
            return await attack(port, seconds, per_kind), await normal

        outcomes, attacked = asyncio.run(both())
        return {"load_average_at_start": os.getloadavg()[0], "peak_mib_after_start": started,
                "peak_mib": memory_mib(server.pid, "VmHWM"), "normal_alone": calm,
                "normal_under_attack": attacked, "server_statuses": server_statuses(url),
                "attacks": {kind: dict(c) for kind, c in outcomes.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(ROOT / "checkpoints" / "pretrained" / "cnn"))
    parser.add_argument("--seconds", type=float, default=40, help="the attack's length")
    parser.add_argument("--calm-seconds", type=float, default=10, help="normal traffic alone")
    parser.add_argument("--clients", type=int, default=8, help="hey's concurrent workers")
    parser.add_argument("--per-kind", type=int, default=4, help="attackers of each kind at once")
    parser.add_argument("--ceiling-mib", type=float, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    r = run(args.workdir, args.seconds, args.calm_seconds, args.clients, args.per_kind)
    r["load_average_at_start"] = load
    held = r["peak_mib"] <= args.ceiling_mib
    normal_ok = all(set(r[k]["statuses"]) == {"200"}
                    for k in ("normal_alone", "normal_under_attack"))
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"load average at start {load:.1f}; {args.per_kind} attackers of each kind, "
              f"{args.seconds:g} s; normal traffic: hey -c {args.clients}")
        print(f"peak resident memory {r['peak_mib']:.0f} MiB (after start "
              f"{r['peak_mib_after_start']:.0f}); ceiling {args.ceiling_mib:.0f} MiB: "
              f"{'held' if held else 'EXCEEDED'}")
        print("| normal traffic | requests | statuses | p50 ms | p99 ms |")
        print("|---|---:|---|---:|---:|")
        for name in ("normal_alone", "normal_under_attack"):
            n = r[name]
            print(f"| {name.replace('_', ' ')} | {n['requests']} | {n['statuses']} | "
                  f"{n['p50_ms']:.0f} | {n['p99_ms']:.0f} |")
        print("| attack | answers |\n|---|---|")
        for kind, counts in r["attacks"].items():
            print(f"| {kind} | {', '.join(f'{s}: {n}' for s, n in sorted(counts.items()))} |")
        print(f"server's /metrics for /v1/classify, by status: {r['server_statuses']}")
    sys.exit(0 if held and normal_ok else 1)


if __name__ == "__main__":
    main()
