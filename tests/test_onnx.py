"""The ONNX model (`fmnist_jax/onnx_export.py`): onnxruntime reproduces the JAX probabilities on
real test images for every model (the shipped releases, an ensemble, flip TTA, a tiny resnet) and
any number of images, each shipped release's recorded test accuracy on the 10,000 test images, and
`--runtime=onnx` serves and predicts the same as the jax runtime."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import chex
import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import PRETRAINED
from fmnist_jax import data, integrity, onnx_export, portable, restore, runtime
from fmnist_jax.errors import UserError
from fmnist_jax.models import create_model

from subprocess_runs import run_main, serving
from test_serving import png

RELEASES = ("mlp", "cnn", "cnn_deep", "lstm")
ATOL = 1e-4


@pytest.fixture(scope="module")
def test_split(real_data_dir) -> data.Split:
    return data.load_idx_folder(real_data_dir)["test"]


def shipped(name: str) -> onnx_export.OnnxModel:
    """The release's `model.onnx`, or its conversion in memory where the release has none yet."""
    path = PRETRAINED / name
    if (path / onnx_export.MODEL_FILE).is_file():
        return onnx_export.load(path)
    return onnx_export.from_restored(restore.select(restore.load_workdir(path)))


@pytest.fixture(scope="module", params=RELEASES)
def release_model(request) -> tuple[str, onnx_export.OnnxModel]:
    return request.param, shipped(request.param)


def jax_probabilities(restored: restore.Restored, images: np.ndarray) -> np.ndarray:
    return np.asarray(portable.probabilities_function(restored)(images))


def assert_reproduces(model: onnx_export.OnnxModel, restored: restore.Restored,
                      images: np.ndarray) -> None:
    for n in (1, 3, len(images)):  # one graph for any number of images
        probabilities = model.probabilities(images[:n])
        chex.assert_shape(probabilities, (n, 10))
        assert probabilities.dtype == np.float32
        chex.assert_trees_all_close(probabilities, jax_probabilities(restored, images[:n]),
                                    atol=ATOL)


def test_each_release_reproduces_the_jax_probabilities(release_model, test_split):
    name, model = release_model
    restored = restore.select(restore.load_workdir(PRETRAINED / name))
    assert_reproduces(model, restored, test_split.images[:64])
    if name == "cnn_deep":
        assert restored.tta, "the cnn_deep release records flip TTA: its ONNX model must do it too"


@pytest.mark.e2e
def test_each_release_keeps_its_recorded_test_accuracy(release_model, test_split):
    name, model = release_model
    predicted = np.concatenate([model.probabilities(test_split.images[i:i + 1000]).argmax(-1)
                                for i in range(0, len(test_split.images), 1000)])
    record = json.loads((PRETRAINED / name / "release.json").read_text())
    recorded = record.get("ensemble", {}).get("test_accuracy", np.mean(record["test_accuracy"]))
    assert abs((predicted == test_split.labels).mean() - recorded) <= 0.001


def test_every_shipped_release_carries_model_onnx():
    missing = [name for name in RELEASES if not (PRETRAINED / name / onnx_export.MODEL_FILE).is_file()]
    assert not missing, (f"{missing} have no model.onnx: python scripts/export.py "
                         f"--workdir=checkpoints/pretrained/NAME --portable-only")


def _with_weights(restored: restore.Restored, model, params, batch_stats, name: str):
    meta = dict(restored.meta, model=name)
    return dataclasses.replace(restored, model=model, params=params, batch_stats=batch_stats,
                               meta=meta)


TINY = {"resnet": {"name": "resnet", "stage_features": (4, 8), "blocks_per_stage": 1},
        "lstm": {"name": "lstm", "hidden": (8, 6)}}


@pytest.mark.parametrize("name", TINY)
def test_a_tiny_model_from_its_init_converts(name, test_split):
    """The resnet is not shipped (it needs a GPU to train): a tiny one from its init, with batch
    statistics moved off their init values so that BatchNorm's conversion is checked too; and a
    two-layer lstm (its rows unrolled, each layer's outputs feeding the next)."""
    model = create_model(TINY[name])
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
    rng = np.random.default_rng(0)
    stats = jax.tree.map(lambda x: x + rng.uniform(0.1, 0.5, x.shape).astype(x.dtype),
                         variables.get("batch_stats", {}))
    stack = lambda tree: jax.tree.map(lambda x: np.asarray(x)[None], tree)  # noqa: E731
    base = restore.load_workdir(PRETRAINED / "lstm")
    restored = _with_weights(base, model, stack(variables["params"]), stack(stats), name)
    assert_reproduces(onnx_export.from_restored(restored), restored, test_split.images[:16])


def test_the_unrolled_lstm_equals_its_scan(test_split):
    model = create_model(TINY["lstm"])
    variables = model.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)), train=False)
    x = test_split.images[:5].astype(np.float32) / 255
    chex.assert_trees_all_close(model.clone(scan=False).apply(variables, x, train=False),
                                model.apply(variables, x, train=False), atol=1e-6)


def test_an_ensemble_with_flip_tta_converts_to_the_members_mean(test_split):
    """Two members (the mlp release's weights and a perturbed copy), mirrored images averaged."""
    base = restore.load_workdir(PRETRAINED / "mlp")
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: np.concatenate(
        [x, x + rng.normal(0, 0.05, x.shape).astype(x.dtype)]), base.params)
    batch_stats = jax.tree.map(lambda x: np.concatenate([x, x]), base.batch_stats)
    restored = _with_weights(base, base.model, params, batch_stats, "mlp")
    restored.config.tta = True
    images = test_split.images[:16]
    members = [jax_probabilities(dataclasses.replace(
        restored, params=jax.tree.map(lambda x, m=m: x[m:m + 1], params),
        batch_stats=jax.tree.map(lambda x, m=m: x[m:m + 1], batch_stats)), images)
        for m in range(2)]
    assert not np.allclose(members[0], members[1], atol=1e-3)
    model = onnx_export.from_restored(restored)
    chex.assert_trees_all_close(model.probabilities(images), (members[0] + members[1]) / 2,
                                atol=ATOL)


def _bare_copy(folder: Path) -> Path:
    """A copy of the lstm release (the smallest) without its exported models, in `folder`."""
    out = shutil.copytree(PRETRAINED / "lstm", folder / "lstm")
    for name in (portable.MODEL_FILE, onnx_export.MODEL_FILE):
        (out / name).unlink(missing_ok=True)
    integrity.record(out)  # as if released without them
    return out


@pytest.fixture
def bare_release(tmp_path) -> Path:
    return _bare_copy(tmp_path)


@pytest.fixture(scope="module")
def exported_release(tmp_path_factory) -> tuple[Path, str]:
    """A copy of the lstm release whose exported models scripts/export.py wrote again (its main,
    in this process, which converts to ONNX anyway; test_portable.py runs the script); the paths
    it printed."""
    out = _bare_copy(tmp_path_factory.mktemp("onnx"))
    result = run_main("export", f"--workdir={out}", "--portable-only")
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@pytest.mark.e2e
def test_export_writes_model_onnx_atomically_and_it_loads(exported_release, test_split):
    out, printed = exported_release
    assert str(out / onnx_export.MODEL_FILE) in printed
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    model = runtime.load(out, "onnx")
    assert model.metadata["model"] == "lstm" and model.runtime.startswith("onnxruntime")
    restored = restore.load_workdir(out)
    chex.assert_trees_all_close(model.probabilities(test_split.images[:8]),
                                jax_probabilities(restored, test_split.images[:8]), atol=ATOL)
    inputs, outputs = model.session.get_inputs(), model.session.get_outputs()
    assert [(i.name, i.type, i.shape) for i in inputs] == [
        ("images", "tensor(uint8)", ["n", 28, 28, 1])]
    assert [(o.name, o.type, o.shape) for o in outputs] == [
        ("probabilities", "tensor(float)", ["n", 10])]


def test_a_model_that_does_not_convert_goes_without_in_one_line(bare_release, monkeypatch,
                                                                 caplog):
    (bare_release / onnx_export.MODEL_FILE).write_bytes(b"stale")

    def fails(_):
        raise NotImplementedError("no plugin for primitive 'frobnicate'\nmore detail")

    monkeypatch.setattr(onnx_export, "convert", fails)
    with caplog.at_level(logging.WARNING):
        assert onnx_export.write(restore.load_workdir(bare_release), bare_release) == []
    assert not (bare_release / onnx_export.MODEL_FILE).exists()
    (message,) = [r.getMessage() for r in caplog.records]
    assert "does not convert to ONNX" in message and "frobnicate" in message
    assert "\n" not in message


def test_a_runtime_given_the_other_runtimes_file_is_a_clear_error(bare_release):
    with pytest.raises(UserError, match="not a model.onnx file"):
        runtime.load(bare_release / "config.json", "onnx")
    with pytest.raises(UserError, match="unknown runtime"):
        runtime.load(bare_release, "tflite")


@pytest.mark.e2e
def test_the_server_with_the_onnx_runtime_answers_as_jax(exported_release, test_split, tmp_path):
    out, _ = exported_release
    images = test_split.images[:4]
    expected = np.asarray(portable.load(out)(images))
    files = [("image", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(images)]
    with serving(tmp_path / "serve.log", f"--workdir={out}", "--runtime=onnx") as (url, _):
        info = httpx.get(f"{url}/v1/model").json()
        answer = httpx.post(f"{url}/v1/classify?top=1", files=files, timeout=60).json()
        assert httpx.post(f"{url}/v1/classify", content=b"x",
                          headers={"content-type": "text/plain"}).status_code == 415
    assert info["runtime"].startswith("onnxruntime") and info["name"] == "lstm"
    for result, p in zip(answer["results"], expected, strict=True):
        assert result["top"][0]["label"] == int(p.argmax())
        chex.assert_trees_all_close(result["top"][0]["probability"], float(p.max()), atol=ATOL)


@pytest.mark.e2e
def test_predict_with_the_onnx_runtime_matches_jax(tmp_path, test_split):
    release_dir = PRETRAINED / "cnn"
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png(test_split.images[i]))
    outputs = {}
    for name in runtime.RUNTIMES:  # the command's main in this process: its output is compared
        result = run_main("predict", f"--workdir={release_dir}", f"--runtime={name}",
                          "--json", "--top=2", *map(str, files))
        assert result.returncode == 0, result.stderr
        outputs[name] = json.loads(result.stdout)
    for jax_result, onnx_result in zip(outputs["jax"], outputs["onnx"], strict=True):
        assert [t["class"] for t in jax_result["top"]] == [t["class"] for t in onnx_result["top"]]
        chex.assert_trees_all_close(jax_result["top"][0]["probability"],
                                    onnx_result["top"][0]["probability"], atol=ATOL)
    refused = run_main("predict", f"--workdir={release_dir}", "--runtime=onnx",  # a flag error
                       f"--explain={tmp_path}", str(files[0]))
    assert refused.returncode == 2 and "needs the jax runtime" in refused.stderr
