"""Every file of a release, portable model or evaluation is checked against its manifest by every
reader; model.json and release.json against their schema; a model that gives NaN is refused, never
printed or served (issue 23, point 1)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subprocess_runs as runs
from conftest import PRETRAINED, ROOT
from fmnist_jax import comparison, integrity, metrics, portable, serving
from fmnist_jax.errors import DamagedModel

IMAGE = str(ROOT / "docs" / "images" / "compare_f1.png")


def flip_byte(path: Path, fraction: float = 0.9) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * fraction)] ^= 1
    path.write_bytes(bytes(data))


@pytest.fixture
def release(tmp_path) -> Path:
    """A copy of the shipped cnn release with its manifest."""
    copy = Path(shutil.copytree(PRETRAINED / "cnn", tmp_path / "cnn"))
    integrity.record(copy)
    return copy


@pytest.fixture
def old_release(tmp_path) -> Path:
    """A copy of the shipped cnn release as releases were before manifests and checksums."""
    copy = Path(shutil.copytree(PRETRAINED / "cnn", tmp_path / "old"))
    (copy / integrity.MANIFEST).unlink(missing_ok=True)
    record = json.loads((copy / "release.json").read_text())
    record.pop("integrity", None)
    (copy / "release.json").write_text(json.dumps(record))
    for checksums in (copy / "checkpoints").glob("*/checksums"):
        shutil.rmtree(checksums)
    return copy


def test_a_release_as_written_verifies(release):
    integrity.verify(release)
    (release / "eval-test").mkdir()  # what evaluate.py writes into a release is not the release's
    (release / "eval-test" / "metrics.json").write_text("{}")
    integrity.verify(release)


@pytest.mark.parametrize("name, damage, problem", [
    ("model.jaxexport", flip_byte, "differs from its SHA-256 in manifest.json"),
    ("model.json", lambda p: p.write_text(p.read_text().replace("Trouser", "Trousers")),
     "has {after} bytes, not the {before} of manifest.json"),
    ("summary.json", Path.unlink, "is missing (listed in manifest.json)"),
    ("checkpoints/16860/extra", lambda p: p.write_text("{}"), "is not in manifest.json"),
])
def test_any_changed_file_is_refused_naming_it(release, name, damage, problem):
    before = (release / name).stat().st_size if (release / name).exists() else None
    damage(release / name)
    after = (release / name).stat().st_size if (release / name).exists() else None
    with pytest.raises(integrity.IntegrityError) as refused:
        integrity.verify(release)
    problem = problem.format(before=before, after=after)
    assert str(refused.value).startswith(f"{release / name} {problem}: {release} is damaged")
    assert f"--out={release} --overwrite" in str(refused.value)


def test_a_file_added_to_a_release_later_is_covered_without_a_change(release):
    """What a release holds is whatever was written into it: model.onnx, ood.json, ..."""
    (release / "model.onnx").write_bytes(b"onnx bytes")
    integrity.record(release)
    flip_byte(release / "model.onnx", 0.5)
    with pytest.raises(integrity.IntegrityError, match="model.onnx differs from its SHA-256"):
        integrity.verify(release)


def test_a_release_whose_record_names_a_missing_manifest_is_refused(release):
    record = json.loads((release / "release.json").read_text())
    (release / "release.json").write_text(json.dumps(dict(record, integrity="manifest.json")))
    (release / integrity.MANIFEST).unlink()
    with pytest.raises(integrity.IntegrityError, match="manifest.json is missing"):
        integrity.verify(release)


def test_a_release_made_before_manifests_loads_with_a_warning(old_release, caplog):
    integrity.verify(old_release)
    assert "without manifest.json" in caplog.text and "export it again" in caplog.text


@pytest.mark.parametrize("change, problem", [
    (lambda m: m.update(class_names=m["class_names"][:9]), "'class_names' must list 10, not 9"),
    (lambda m: m.pop("model"), "'model' is missing"),
    (lambda m: m.update(seeds="0"), "'seeds' must be a list of int"),
])
def test_model_json_is_checked_against_its_schema(release, change, problem):
    path = release / portable.METADATA_FILE
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))
    integrity.record(release)  # written so: the schema, not the digest, refuses it
    with pytest.raises(integrity.IntegrityError, match=f"breaks its schema: {problem}"):
        portable.load(release)


def test_release_json_is_checked_against_its_schema(release):
    path = release / "release.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), test_accuracy=0.93)))
    integrity.record(release)
    with pytest.raises(integrity.IntegrityError,
                       match="'test_accuracy' must be a list of int or float"):
        integrity.verify(release)


def test_an_evaluation_compared_after_a_change_is_refused(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    integrity.record(folder)
    assert comparison.find_metrics(folder) == folder / "metrics.json"
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.99}))
    with pytest.raises(integrity.IntegrityError, match="evaluate again"):
        comparison.find_metrics(folder)


def test_non_finite_probabilities_are_an_error_naming_how_many():
    probabilities = np.full((2, 5, 10), 0.1)
    chex.assert_tree_all_finite(metrics.check_finite(probabilities, "m"))
    probabilities[1, 3, 4] = np.nan
    with pytest.raises(DamagedModel, match=r"^m gives non-finite .* for 1 of 5 images"):
        metrics.check_finite(probabilities, "m")


def serve(release: Path) -> subprocess.CompletedProcess:
    """serve.py as a process: one that starts serving (the failure) is stopped by the timeout."""
    return runs.run("serve", f"--workdir={release}", f"--port={runs.free_port()}", timeout=120)


def test_the_server_refuses_to_start_on_a_model_that_gives_nan(release):
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(portable.INPUT_SHAPE), jnp.uint8)
    exported = jax.export.export(jax.jit(lambda x: jnp.full((x.shape[0], 10), jnp.nan)))(spec)
    metadata = json.loads((release / portable.METADATA_FILE).read_text())
    with pytest.raises(DamagedModel, match=r"^the served model \(cnn\) gives non-finite"):
        serving.create_app(portable.Portable(exported, metadata), max_batch=1)


@pytest.mark.parametrize("script, args", [
    ("predict", (IMAGE,)), ("evaluate", ()), ("similar", (IMAGE, "-k", "2"))])
def test_a_flipped_byte_at_90_percent_of_the_portable_model_is_refused(release, script, args):
    flip_byte(release / portable.MODEL_FILE)
    line = runs.one_line_error(runs.run_main(script, f"--workdir={release}", *args), 2)
    assert line.startswith(f"error: {release / portable.MODEL_FILE} differs from its SHA-256 "
                           f"in manifest.json"), line


@pytest.mark.e2e
def test_serve_refuses_a_flipped_byte_of_the_portable_model_at_start(release):
    flip_byte(release / portable.MODEL_FILE)
    line = runs.one_line_error(serve(release), 2)
    assert line.startswith(f"error: {release / portable.MODEL_FILE} differs from its SHA-256 "
                           f"in manifest.json"), line


@pytest.mark.e2e
def test_serve_refuses_a_model_json_of_nine_classes_at_start(release):
    path = release / portable.METADATA_FILE
    content = json.loads(path.read_text())
    path.write_text(json.dumps(dict(content, class_names=content["class_names"][:9])))
    integrity.record(release)
    line = runs.one_line_error(serve(release), 2)
    assert line.startswith(f"error: {path} breaks its schema: 'class_names' must list 10, not 9")


def _poison_checkpoint(release: Path) -> None:
    """16 bytes of 0xff (float32 NaN whatever the alignment) amid the largest array file."""
    largest = max((p for p in (release / "checkpoints").rglob("d/*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = b"\xff" * 16
    largest.write_bytes(bytes(data))


@pytest.mark.parametrize("script, args", [
    ("predict", ("--json", IMAGE)), ("evaluate", ("--no-explain",))])
def test_an_old_release_with_a_damaged_checkpoint_never_gives_nan(old_release, script, args):
    _poison_checkpoint(old_release)
    result = runs.run_main(script, f"--workdir={old_release}", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "NaN" not in result.stdout and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: the model of {old_release} gives non-finite probabilities"), result.stderr
