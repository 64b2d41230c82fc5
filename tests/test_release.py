"""scripts/export.py never loses a folder: an existing --out is refused with one line unless
--overwrite, --overwrite replaces only a release, and a replacement killed half-way is undone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import subprocess_runs as runs
from conftest import PRETRAINED

pytestmark = pytest.mark.e2e


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (folders too, as empty), by relative path: its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b""
            for p in sorted(folder.rglob("*"))}


def export(workdir: Path, out: Path, *extra: str):
    return runs.run("export", f"--workdir={workdir}", f"--out={out}", *extra)


def refused_export(workdir: Path, out: Path, *extra: str):
    """An export refused before anything is written: the command's main in this process."""
    return runs.run_main("export", f"--workdir={workdir}", f"--out={out}", *extra)


@pytest.fixture(scope="module")
def trained(tiny_workdir, tmp_path_factory) -> Path:
    """A finished training workdir (one small epoch of an mlp): the shared one as training left
    it (without the evaluations other tests add to it), copied, since these tests snapshot it."""
    return Path(shutil.copytree(tiny_workdir(1), tmp_path_factory.mktemp("trained") / "run",
                                ignore=shutil.ignore_patterns("eval-*")))


@pytest.fixture
def mlp_release(tmp_path) -> Path:
    return Path(shutil.copytree(PRETRAINED / "mlp", tmp_path / "mlp"))


def _unrelated_files(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "shirt.png").write_bytes(b"not really a png")
    (folder / "notes.txt").write_text("keep me")
    return folder


def _release_with_evaluation(tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(PRETRAINED / "mlp", tmp_path / "mlp"))
    (folder / "eval-test").mkdir()
    (folder / "eval-test" / "metrics.json").write_text("{}")
    return folder


def test_export_into_a_release_of_another_model_is_refused_without_overwrite(mlp_release):
    before = snapshot(mlp_release)
    line = runs.one_line_error(refused_export(PRETRAINED / "cnn", mlp_release), 2)
    assert line == (f"error: --out {mlp_release} exists; pass --overwrite to replace the release "
                    f"there, or choose another --out")
    assert snapshot(mlp_release) == before
    assert sorted(p.name for p in mlp_release.parent.iterdir()) == ["mlp"]


@pytest.mark.parametrize("make_out, why", [
    pytest.param(lambda tmp, trained: trained,  # its TensorBoard events (the test extra)
                 "holds tensorboard, which a release does not", id="training-workdir"),
    pytest.param(lambda tmp, trained: _unrelated_files(tmp),
                 "holds notes.txt, shirt.png, which a release does not", id="unrelated-files"),
    pytest.param(lambda tmp, trained: _release_with_evaluation(tmp),
                 "holds eval-test, which a release does not", id="release-with-evaluation"),
])
def test_overwrite_never_replaces_a_folder_that_is_not_only_a_release(make_out, why, tmp_path,
                                                                      trained):
    out = make_out(tmp_path, trained)
    before = snapshot(out)
    siblings = sorted(p.name for p in out.parent.iterdir())
    line = runs.one_line_error(refused_export(PRETRAINED / "cnn", out, "--overwrite"), 2)
    assert line == (f"error: --out {out} {why}; --overwrite replaces only a release: choose "
                    f"another --out")
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == siblings


def test_overwrite_replaces_a_release_and_leaves_nothing_beside_it(mlp_release, trained):
    result = export(trained, mlp_release, "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((mlp_release / "release.json").read_text())
    assert record["export_command"].endswith("--overwrite")
    assert record["param_count"] != json.loads(
        (PRETRAINED / "mlp" / "release.json").read_text())["param_count"]
    assert sorted(p.name for p in mlp_release.parent.iterdir()) == ["mlp"]


def test_a_release_set_aside_by_a_killed_replacement_is_put_back(mlp_release):
    """Killed between the two renames: the old release is `mlp.old`, `mlp` is missing."""
    before = snapshot(mlp_release)
    aside = mlp_release.rename(mlp_release.with_name("mlp.old"))
    result = refused_export(PRETRAINED / "cnn", mlp_release)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --out {mlp_release} exists")
    assert not aside.exists() and snapshot(mlp_release) == before


def test_a_calibrated_release_divides_its_logits_by_the_temperature_fitted_on_val(
        trained, tmp_path, real_data_dir):
    # pylint: disable-next=import-outside-toplevel
    from fmnist_jax import calibration, data, evaluation, portable, restore
    out = tmp_path / "calibrated"
    result = export(trained, out, "--calibrated")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "release.json").read_text())
    metadata = json.loads((out / "model.json").read_text())
    temperature = record["temperature"]
    assert record["calibrated"] and metadata["calibrated"] and temperature != 1.0
    assert metadata["temperature"] == temperature and f"{temperature:.4f}" in result.stdout
    run = restore.load_workdir(trained)
    val = evaluation.evaluate(run, "val")
    assert temperature == pytest.approx(
        calibration.fit_temperature(val.member_probabilities, val.labels), rel=1e-3)
    images = data.load_idx_folder(real_data_dir)["test"].images[:64]
    expected = calibration.scale(run.probabilities(images), temperature)
    np.testing.assert_allclose(portable.load(out)(images), expected, atol=1e-5)
    np.testing.assert_allclose(restore.load_workdir(out).probabilities(images)[0], expected,
                               atol=1e-5)
