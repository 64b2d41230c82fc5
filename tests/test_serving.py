"""scripts/serve.py as a real process on a free loopback port, driven by a real HTTP client (httpx)
and by a real headless browser (Debian's chromium through Selenium): classification equal to the
portable model on real test images, every bad input refused with a 4xx and the server still
serving, concurrent clients batched, nothing compiled after warm-up, a clean SIGTERM."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import struct
import threading
import zlib
from pathlib import Path

import chex
import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import subprocess_runs as runs

from conftest import ROOT
from fmnist_jax import data, ood, portable, runtime, uploads
from fmnist_jax.errors import UserError

RELEASE = ROOT / "checkpoints" / "pretrained" / "cnn"
MAX_BATCH = 32  # compiles batch sizes 1, 8 and 32
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server's base URL; one process for the whole module."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with runs.serving(log, f"--workdir={RELEASE}",
                      f"--max-batch={MAX_BATCH}") as (url, process):
        yield {"url": url, "process": process, "log": log}


@pytest.fixture(scope="module")
def test_split(real_data_dir) -> data.Split:
    return data.load_idx_folder(real_data_dir)["test"].take(slice(0, 40))


@pytest.fixture(scope="module")
def expected(test_split) -> np.ndarray:
    """The release's portable model's probabilities for the test images, computed here."""
    return np.asarray(portable.load(RELEASE)(test_split.images))


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="PNG")
    return buffer.getvalue()


def metric(url: str, name: str) -> float:
    """A sample of /metrics (summed over its labels)."""
    text = httpx.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{.*}})? (\S+)$", text, re.M))


def assert_matches(results: list[dict], probabilities: np.ndarray, class_names: list[str]) -> None:
    for result, p in zip(results, probabilities, strict=True):
        best = int(p.argmax())
        assert result["top"][0]["class"] == class_names[best]
        chex.assert_trees_all_close(result["top"][0]["probability"], float(p[best]), atol=1e-5)


@pytest.mark.e2e
def test_it_describes_itself(server):
    url = server["url"]
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    info = httpx.get(f"{url}/v1/model").json()
    assert info["name"] == "cnn" and len(info["classes"]) == 10
    assert info["test_accuracy"] == pytest.approx(0.9305)
    assert info["batch_sizes"] == [1, 8, 32] and info["device"]
    assert info["version"]["commit"]
    assert info["ood"]["method"] == ood.METHOD and info["ood"]["validation_accepted"] >= 0.95
    assert info["explain"] == "grad_cam"
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and 'type="file"' in page.text
    examples = httpx.get(f"{url}/v1/examples").json()
    assert sorted(e["label"] for e in examples) == list(range(10))
    assert httpx.get(url + examples[0]["url"]).headers["content-type"] == "image/png"


@pytest.mark.e2e
def test_one_image_uploaded_as_a_file(server, test_split, expected):
    response = httpx.post(f"{server['url']}/v1/classify",
                          files={"image": ("boot.png", png(test_split.images[0]), "image/png")})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["file"] == "boot.png" and result["top"][0]["class"] == "Ankle boot"
    assert result["in_distribution"] is True and isinstance(result["ood_score"], float)
    assert len(result["top"]) == 3
    assert_matches([result], expected[:1], data.CLASS_NAMES)


@pytest.mark.e2e
def test_many_images_as_files_and_as_base64_json(server, test_split, expected):
    files = [("image", (f"{i}.png", png(x), "image/png"))
             for i, x in enumerate(test_split.images[:20])]
    response = httpx.post(f"{server['url']}/v1/classify?top=5", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["file"] for r in results] == [f"{i}.png" for i in range(20)]
    assert all(len(r["top"]) == 5 for r in results)
    assert_matches(results, expected[:20], data.CLASS_NAMES)
    encoded = [base64.b64encode(png(x)).decode() for x in test_split.images[20:40]]
    response = httpx.post(f"{server['url']}/v1/classify", json={"images": encoded})
    assert response.status_code == 200, response.text
    assert_matches(response.json()["results"], expected[20:40], data.CLASS_NAMES)


@pytest.mark.e2e
def test_a_blank_or_tiny_image_is_flagged_out_of_distribution(server):
    blanks = [np.zeros((28, 28, 1), np.uint8), np.full((1, 1, 1), 255, np.uint8)]
    response = httpx.post(f"{server['url']}/v1/classify", files=[
        ("image", (f"{i}.png", png(b), "image/png")) for i, b in enumerate(blanks)])
    assert response.status_code == 200, response.text
    assert [r["in_distribution"] for r in response.json()["results"]] == [False, False]


@pytest.mark.e2e
def test_explain_answers_a_heat_map_png_or_json(server, test_split):
    url, boot = server["url"], png(test_split.images[0])
    response = httpx.post(f"{url}/v1/explain", files={"image": ("boot.png", boot)}, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(response.content)))
    chex.assert_shape(picture, (224, 224, 3))
    assert picture.std() > 0
    response = httpx.post(f"{url}/v1/explain?format=json", timeout=60,
                          files=[("image", (f"{i}.png", png(x))) for i, x in
                                 enumerate(test_split.images[:2])])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "grad_cam" and body["results"][0]["class"] == "Ankle boot"
    maps = np.asarray([r["map"] for r in body["results"]])
    chex.assert_shape(maps, (2, 28, 28))
    chex.assert_tree_all_finite(maps)
    assert maps.max() > 0 and body["results"][0]["in_distribution"] is True
    two = httpx.post(f"{url}/v1/explain", files=[("image", ("a.png", boot))] * 2)
    assert two.status_code == 400 and "format=json" in two.json()["error"]
    bad = httpx.post(f"{url}/v1/explain?format=gif", files={"image": ("a.png", boot)})
    assert bad.status_code == 400 and "png or json" in bad.json()["error"]


def png_header(width: int, height: int) -> bytes:
    """The start of a grayscale PNG of `width` x `height` pixels: what a decoder sizes it by."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", b"")


BAD_INPUTS = {
    "not an image": (400, "not an image", {"files": {"image": ("a.png", b"hello, world")}}),
    "empty file": (400, "empty", {"files": {"image": ("a.png", b"")}}),
    "truncated png": (400, "not an image", {"files": {"image": ("a.png", None)}}),
    "too many bytes": (413, "bytes", {"files": {"image": (
        "a.png", b"\x89PNG" + bytes(uploads.MAX_IMAGE_BYTES))}}),
    "too many pixels": (413, "pixels", {"files": {"image": ("a.png", png_header(6001, 6001))}}),
    "decompression bomb": (413, "pixels", {"files": {"image": ("a.png",
                                                               png_header(20000, 20000))}}),
    "too many images": (413, "at most 128", {"files": [("image", ("a.png", None))] * 129}),
    "no image": (400, "no image", {"json": {"images": []}}),
    "text in the image field": (400, "not text", {"data": {"image": "abc"},
                                                  "files": {"other": ("x", b"x")}}),
    "wrong content type": (415, "content type", {"content": b"abc",
                                                 "headers": {"content-type": "text/plain"}}),
    "malformed json": (400, "malformed JSON", {"content": b'{"images": [',
                                               "headers": {"content-type": "application/json"}}),
    "json of another shape": (400, "base64 strings", {"json": {"image": "abc"}}),
    "malformed base64": (400, "malformed base64", {"json": {"images": ["not base64!"]}}),
    "bad top": (400, "top must be", {"params": {"top": "11"}, "json": {"images": ["x"]}}),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
@pytest.mark.e2e
def test_a_bad_request_gets_a_clear_4xx_and_the_server_keeps_serving(server, test_split, case):
    status, message, request = BAD_INPUTS[case]
    good = png(test_split.images[0])
    if case == "truncated png":
        request = {"files": {"image": ("a.png", good[:len(good) // 2])}}
    elif case == "too many images":
        request = {"files": [("image", ("a.png", good))] * 129}
    response = httpx.post(f"{server['url']}/v1/classify", timeout=60, **request)
    assert response.status_code == status, response.text
    body = response.json()
    assert message in body["error"] and body["status"] == status
    after = httpx.post(f"{server['url']}/v1/classify", files={"image": ("b.png", good)})
    assert after.status_code == 200 and server["process"].poll() is None


@pytest.mark.e2e
def test_concurrent_clients_are_batched_and_all_answered(server, test_split, expected):
    url, threads, per_thread = server["url"], 16, 4
    calls_before = metric(url, "fmnist_batch_images_count")
    barrier = threading.Barrier(threads)
    answers: dict[int, list] = {}

    def client(t: int) -> None:
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            for r in range(per_thread):
                i = (t * per_thread + r) % len(test_split.images)
                response = http.post(f"{url}/v1/classify",
                                     files={"image": (f"{i}.png", png(test_split.images[i]))})
                answers[t * per_thread + r] = [i, response.status_code, response.json()]

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(answers) == threads * per_thread
    for i, status, body in answers.values():
        assert status == 200, body
        assert_matches(body["results"], expected[i:i + 1], data.CLASS_NAMES)
    calls = metric(url, "fmnist_batch_images_count") - calls_before
    assert 1 <= calls < threads * per_thread  # some requests shared a model call


@pytest.mark.e2e
def test_metrics_count_requests_and_nothing_compiled_after_warm_up(server):
    url = server["url"]
    # the batch sizes 1, 8 and 32, at start, for the model and for its out-of-distribution detector
    assert metric(url, "fmnist_compilations_total") == 6
    # (and after the concurrent, blank and explain requests above: nothing compiled since)
    too_many = [("image", ("a.png", b"x"))] * 129  # its own refused request: tests run apart
    assert httpx.post(f"{url}/v1/classify", files=too_many).status_code == 413
    text = httpx.get(f"{url}/metrics").text
    assert re.search(r'fmnist_requests_total\{path="/v1/classify",status="413"\} [1-9]', text)
    assert metric(url, "fmnist_request_latency_seconds_count") > 0
    assert metric(url, "fmnist_images_total") == metric(url, "fmnist_batch_images_sum")


def visible(browser, element_id: str) -> bool:
    return browser.find_element(By.ID, element_id).is_displayed()


def width(browser, selector: str) -> float:
    return browser.execute_script(
        "return document.querySelector(arguments[0]).getBoundingClientRect().width", selector)


@pytest.mark.e2e
def test_the_web_page_in_a_headless_browser(server, test_split, tmp_path):
    """What a person sees: nothing broken at load, bars drawn, a heat map, the out-of-distribution
    warning on a blank picture, the old answer cleared on an error, no sideways scroll on a phone.
    With SCREENSHOT_DIR set, the page after a trouser is saved there as serving-page.png."""
    assert CHROMEDRIVER.exists() and CHROMIUM.exists(), (
        "the browser test needs Debian's chromium: apt-get install -y chromium chromium-driver")
    trouser, blank, broken = tmp_path / "trouser.png", tmp_path / "blank.png", tmp_path / "x.png"
    trouser.write_bytes(png(test_split.images[2]))  # test image 2: a trouser
    blank.write_bytes(png(np.zeros((28, 28, 1), np.uint8)))
    broken.write_bytes(b"not an image")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=900,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)),
                               options=options)
    try:
        browser.get(server["url"] + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "93.05% test accuracy" in b.find_element(By.ID, "model").text)
        assert not visible(browser, "result") and not visible(browser, "preview")
        browser.find_element(By.ID, "file").send_keys(str(trouser))
        wait.until(lambda b: b.find_element(By.ID, "prediction").text == "Trouser")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 5
        assert width(browser, "#bars .track") > 100 and width(browser, "#bars .fill") > 100
        assert not visible(browser, "ood")
        wait.until(lambda b: b.execute_script(
            "const h = document.getElementById('heatmap'); return h.complete && h.naturalWidth")
                   and visible(b, "heatmap"))
        if os.environ.get("SCREENSHOT_DIR"):
            browser.save_screenshot(str(Path(os.environ["SCREENSHOT_DIR"]) / "serving-page.png"))
        browser.find_element(By.ID, "file").send_keys(str(blank))
        wait.until(lambda b: visible(b, "ood") and visible(b, "result"))
        browser.find_element(By.ID, "file").send_keys(str(broken))
        wait.until(lambda b: "not an image" in b.find_element(By.ID, "error").text)
        assert not visible(browser, "result")
        boot = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, 'img[title$="Ankle boot"]'))
        boot.click()
        wait.until(lambda b: b.find_element(By.ID, "prediction").text == "Ankle boot")
        assert browser.find_element(By.ID, "error").text == ""
        browser.set_window_size(375, 800)  # a phone
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")
        assert width(browser, "#bars .track") > 50
    finally:
        browser.quit()


@pytest.mark.e2e
def test_sigterm_stops_it_cleanly(server):
    process = server["process"]
    process.send_signal(signal.SIGTERM)
    # uvicorn finishes the requests in flight, runs the app's shutdown, then re-raises the signal
    assert process.wait(timeout=30) == -signal.SIGTERM
    log = server["log"].read_text()
    assert "stopped after" in log and "Traceback" not in log, log


def test_it_serves_a_release_an_exported_file_or_a_workdir_without_an_export(tmp_path,
                                                                              test_split):
    source = ROOT / "checkpoints" / "pretrained" / "lstm"
    bare = tmp_path / "bare"
    bare.mkdir()
    for item in ("checkpoints", "config.json", "summary.json"):  # a workdir: no export
        copy = shutil.copytree if (source / item).is_dir() else shutil.copy2
        copy(source / item, bare / item)
    x = test_split.images[:5]
    expected = np.asarray(portable.load(source)(x))
    for path in (source, source / portable.MODEL_FILE, bare):
        model = runtime.load(path)
        assert model.metadata["model"] == "lstm"
        chex.assert_trees_all_close(np.asarray(model(x)), expected, atol=1e-6)
    with pytest.raises(UserError, match="no such workdir"):
        runtime.load(tmp_path / "missing")
