"""The server's bounds (fmnist_jax/serving_limits.py) against a real serve.py process on loopback,
driven by raw sockets (chunked, slow and aborted uploads) and httpx: bytes counted as received,
pixels refused from the header, slow bodies timed out, clients that leave counted as 499 with one
log line, malformed bodies of any shape a 400, anything over a limit a 413, a bounded SIGTERM."""

from __future__ import annotations

import asyncio
import io
import select
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

import subprocess_runs as runs
from test_serving import RELEASE, metric, png_header

from fmnist_jax import serving_limits
from fmnist_jax.serving_limits import DecodeBudget, Limits, Refused

REQUEST_BYTES = 1_000_000
INFLIGHT_BYTES = 2_000_000
BODY_SECONDS = 5  # long enough for the budget test to hold two bodies under load
SHUTDOWN_SECONDS = 2
CONNECTIONS = 16
LIMIT_FLAGS = (f"--request-bytes={REQUEST_BYTES}", f"--inflight-bytes={INFLIGHT_BYTES}",
               f"--body-seconds={BODY_SECONDS}", f"--shutdown-seconds={SHUTDOWN_SECONDS}",
               f"--connections={CONNECTIONS}", f"--workdir={RELEASE}", "--max-batch=1")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process, url = runs.start_server(log, *LIMIT_FLAGS)
    yield {"url": url, "process": process, "log": log}
    process.kill()
    process.wait()


def connect(url: str, headers: dict[str, str], path: str = "/v1/classify") -> socket.socket:
    """A socket that has sent a POST's request line and headers."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    lines = [f"POST {path} HTTP/1.1", "Host: localhost",
             *(f"{k}: {v}" for k, v in headers.items())]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return s


def status_of(s: socket.socket) -> int:
    """The status of the response on `s` (read up to the end of its status line)."""
    answer = b""
    while b"\r\n" not in answer:
        piece = s.recv(4096)
        assert piece, f"the server closed the connection without an answer: {answer!r}"
        answer += piece
    return int(answer.split()[1])


def peak_memory_mib(process) -> float:
    """The server's peak resident memory (VmHWM)."""
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) / 1024


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.e2e
def test_a_chunked_upload_over_the_limit_is_refused_without_being_read_whole(server):
    s = connect(server["url"], {"Content-Type": "multipart/form-data; boundary=b",
                                "Transfer-Encoding": "chunked"})  # a6bb5eb read these whole
    chunk, sent, attempted = b"x" * 2**16, 0, 256 * 2**20
    with s:
        part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        s.sendall(b"%x\r\n%b\r\n" % (len(part), part))
        try:
            while sent < attempted and not select.select([s], [], [], 0)[0]:
                s.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:  # the server closed the connection after answering
            pass
        assert status_of(s) == 413
    assert sent < attempted / 4  # answered after the limit, not after the whole upload
    assert metric(server["url"], 'fmnist_requests_total{path="/v1/classify",status="413"}') >= 1


@pytest.mark.e2e
def test_an_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(server):
    before = peak_memory_mib(server["process"])
    start = time.monotonic()
    response = httpx.post(f"{server['url']}/v1/classify",
                          files={"image": ("bomb.png", png_header(5900, 5900))})
    assert response.status_code == 413 and "12,000,000 pixels" in response.json()["error"]
    assert time.monotonic() - start < 2  # decoding it took ~3 s and 800 MB
    assert peak_memory_mib(server["process"]) - before < 100


@pytest.mark.e2e
def test_an_image_under_the_pixel_limit_is_decoded_within_the_budget(server):
    response = httpx.post(f"{server['url']}/v1/classify", timeout=60,
                          files={"image": ("big.png", png(2000, 1500))})
    assert response.status_code == 200, response.text


@pytest.mark.e2e
def test_a_slow_body_gets_408_after_the_body_deadline(server):
    with connect(server["url"], {"Content-Type": "application/json",
                                 "Content-Length": "1000"}) as s:
        s.sendall(b'{"images": [')  # and nothing more
        start = time.monotonic()
        assert status_of(s) == 408
        assert BODY_SECONDS - 0.5 < time.monotonic() - start < BODY_SECONDS + 5


@pytest.mark.e2e
def test_a_client_leaving_mid_upload_is_a_499_and_one_log_line(server):
    counted = 'fmnist_requests_total{path="/v1/classify",status="499"}'
    before, lines_before = metric(server["url"], counted), server["log"].read_text().count("\n")
    for _ in range(3):
        with connect(server["url"], {"Content-Type": "application/json",
                                     "Content-Length": "100000"}) as s:
            s.sendall(b'{"images": ["' + b"A" * 5000)
            time.sleep(0.2)
    deadline = time.monotonic() + 10
    while metric(server["url"], counted) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(server["url"], counted) == before + 3
    assert metric(server["url"], 'fmnist_requests_total{path="/v1/classify",status="500"}') == 0
    log = server["log"].read_text()
    new_lines = log.splitlines()[lines_before:]
    assert len(new_lines) == 3 and all("client left" in line for line in new_lines), log
    assert "Traceback" not in log


@pytest.mark.e2e
def test_bodies_held_at_once_are_bounded_and_a_503_past_the_budget(server):
    body = b'{"images": ["' + b"A" * 900_000
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body) + 10)}
    held = [connect(server["url"], headers) for _ in range(2)]
    try:
        for s in held:
            s.sendall(body)  # and stall: each holds about 0.84 MB of the 2 MB budget
        time.sleep(1)
        with connect(server["url"], headers) as s:
            s.sendall(body)
            assert status_of(s) == 503
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    after = httpx.post(f"{server['url']}/v1/classify", files={"image": ("a.png", png(28, 28))})
    assert after.status_code == 200  # the budget was given back


@pytest.mark.e2e
def test_connections_past_the_limit_get_503_and_the_server_recovers(server):
    host, port = server["url"].removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(CONNECTIONS)]
    try:
        time.sleep(0.3)
        assert httpx.get(f"{server['url']}/healthz").status_code == 503
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    assert httpx.get(f"{server['url']}/healthz").status_code == 200


MALFORMED = {
    "5,000-digit number": b'{"images": [' + b"1" * 5000 + b"]}",
    "nested 100,000 deep": b"[" * 100_000,
    "not UTF-8": b'{"images": ["\xff\xfe"]}',
    "a list": b'["abc"]',
    "a number": b"12",
    "images not a list": b'{"images": "abc"}',
    "numbers in the list": b'{"images": [1, 2]}',
    "null": b"null",
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", MALFORMED, ids=str)
def test_a_malformed_json_body_of_any_shape_is_a_400(server, case):
    response = httpx.post(f"{server['url']}/v1/classify", content=MALFORMED[case],
                          headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["status"] == 400


@pytest.mark.e2e
@pytest.mark.parametrize("request_kwargs", [
    {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},  # no boundary
    {"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=x"}},
    {"params": {"top": "\u00b2"}, "json": {"images": ["x"]}},  # a digit int() does not read
], ids=["no boundary", "no parts", "superscript top"])
def test_a_malformed_request_of_another_kind_is_a_400(server, request_kwargs):
    response = httpx.post(f"{server['url']}/v1/classify", **request_kwargs)
    assert response.status_code == 400, response.text


@pytest.mark.e2e
@pytest.mark.parametrize("count", [129, 130, 1000])
def test_more_files_than_the_limit_is_a_413(server, count):
    response = httpx.post(f"{server['url']}/v1/classify", timeout=60,
                          files=[("image", ("a.png", b"x"))] * count)
    assert response.status_code == 413, response.text
    assert "at most 128" in response.json()["error"]


@pytest.mark.e2e
def test_sigterm_ends_within_the_grace_even_with_a_stalled_upload(tmp_path):
    log = tmp_path / "serve.log"
    process, url = runs.start_server(log, *LIMIT_FLAGS, "--body-seconds=600")
    try:
        with connect(url, {"Content-Type": "application/json", "Content-Length": "1000"}) as s:
            s.sendall(b'{"images": [')
            time.sleep(0.5)
            start = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=SHUTDOWN_SECONDS + 20)
            assert time.monotonic() - start < SHUTDOWN_SECONDS + 5
    finally:
        process.kill()
        process.wait()
    assert code == -signal.SIGTERM
    text = log.read_text()
    assert "stopped after" in text and "Traceback" not in text, text


def test_a_limit_flag_out_of_range_is_one_line():
    result = runs.run_main("serve", f"--workdir={RELEASE}", "--image-pixels=20000000")
    line = runs.one_line_error(result, 2)
    assert "--image-pixels" in line and "--decode-pixels" in line
    line = runs.one_line_error(runs.run_main("serve", f"--workdir={RELEASE}", "--body-seconds=0"),
                               2)
    assert "--body-seconds must be positive" in line


def test_the_decode_budget_bounds_pixels_in_flight_and_refuses_after_its_wait():
    limits = Limits(image_pixels=10, decode_pixels=10, decode_wait_seconds=0.5)
    in_flight, peak, lock = [0], [0], threading.Lock()

    def work(pixels: int) -> int:
        with lock:
            in_flight[0] += pixels
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= pixels
        return pixels

    async def main():
        budget = DecodeBudget(limits)
        done = await asyncio.gather(*(budget.run(p, work, p) for p in (6, 4, 6, 3, 10, 1)))
        assert done == [6, 4, 6, 3, 10, 1] and budget.used == 0
        slow = asyncio.create_task(budget.run(10, time.sleep, 1.0))
        await asyncio.sleep(0.1)
        with pytest.raises(Refused) as refused:
            await budget.run(1, work, 1)
        assert refused.value.status == 503
        slow.cancel()  # the thread still runs: its pixels stay held until it ends
        await asyncio.sleep(0.1)
        assert budget.used == 10
        await asyncio.sleep(1.0)
        assert budget.used == 0

    asyncio.run(main())
    assert peak[0] <= limits.decode_pixels


def test_limits_refuse_an_image_that_could_never_be_decoded():
    with pytest.raises(ValueError, match="never fits"):
        Limits(image_pixels=2, decode_pixels=1)
    with pytest.raises(ValueError, match="connections must be positive"):
        Limits(connections=0)
    assert serving_limits.SMALL_BODY_BYTES < Limits().request_bytes
