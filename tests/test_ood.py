"""The out-of-distribution flag (`fmnist_jax/ood.py`) on a shipped release (read-only; its
detector is written into a copy): at least 95% of the validation split accepted, AUROC >= 0.95
against scikit-learn's digits, blank images flagged, the written detector equal to the fitted one,
and predict.py's results carrying the flag (null without a detector)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import chex
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import PRETRAINED
from fmnist_jax import data, integrity, ood, restore
from subprocess_runs import run, run_main

RELEASE = PRETRAINED / "lstm"  # the smallest release


@pytest.fixture(scope="module")
def fitted(real_data_dir):
    restored = restore.select(restore.load_workdir(RELEASE))
    function, parameters, _ = ood.fit(restored)
    return ood.Detector(function, parameters)


@pytest.fixture(scope="module")
def test_images(real_data_dir) -> np.ndarray:
    return data.load_idx_folder(real_data_dir)["test"].images[:2000]


@pytest.fixture(scope="module")
def with_detector(tmp_path_factory, real_data_dir) -> Path:
    copy = Path(shutil.copytree(RELEASE, tmp_path_factory.mktemp("ood") / "lstm"))
    written = ood.write(restore.select(restore.load_workdir(copy)), copy)
    assert sorted(p.name for p in written) == [ood.MODEL_FILE, ood.PARAMETERS_FILE]
    integrity.record(copy, written)  # as release.write_portable does
    return copy


def components(detector: ood.Detector, images: np.ndarray) -> dict[str, np.ndarray]:
    return ood.as_dict(ood.run_chunked(detector.components, images))


def test_it_accepts_validation_and_separates_digits(fitted, test_images):
    assert fitted.parameters["validation_accepted"] >= ood.ACCEPT
    inliers = components(fitted, test_images)
    outliers = {k: components(fitted, v) for k, v in ood.outlier_sets(test_images).items()}
    ranking = np.concatenate([fitted.ranking(inliers), fitted.ranking(outliers["digits"])])
    truth = np.r_[np.zeros(len(test_images)), np.ones(len(outliers["digits"]["ink"]))]
    assert roc_auc_score(truth, np.minimum(ranking, 1e300)) >= 0.95
    assert np.mean(fitted.score(inliers) <= fitted.parameters["threshold"]) >= 0.9
    blank = np.stack([outliers["blank"][k] for k in ood.COMPONENTS], -1)
    assert [f["in_distribution"] for f in fitted.flag(blank)] == [False] * 4


def test_the_written_detector_is_the_fitted_one(with_detector, fitted, test_images):
    loaded = ood.load(with_detector)
    assert loaded is not None and not list(with_detector.glob(".*"))
    chex.assert_trees_all_close(np.asarray(loaded.components(test_images[:9])),
                                np.asarray(fitted.components(test_images[:9])), rtol=1e-4)
    assert loaded.parameters == json.loads((with_detector / ood.PARAMETERS_FILE).read_text())
    assert loaded.parameters["threshold"] == pytest.approx(fitted.parameters["threshold"])
    assert ood.load(RELEASE.parent / "missing") is None


@pytest.mark.e2e
def test_predict_flags_a_blank_picture(with_detector, tmp_path, test_images):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    Image.fromarray(test_images[0, ..., 0]).save(tmp_path / "boot.png")
    Image.new("L", (40, 30), 255).save(tmp_path / "blank.png")
    files = [str(tmp_path / "boot.png"), str(tmp_path / "blank.png")]
    result = run("predict", f"--workdir={with_detector}", "--json", *files)
    assert result.returncode == 0, result.stderr
    flags = [(r["in_distribution"], type(r["ood_score"])) for r in json.loads(result.stdout)]
    assert flags == [(True, float), (False, float)]
    text = run_main("predict", f"--workdir={with_detector}", *files)  # output only: in process
    assert "does not look like Fashion-MNIST" in text.stdout.splitlines()[1]
    without = Path(shutil.copytree(RELEASE, tmp_path / "without"))
    for name in (ood.MODEL_FILE, ood.PARAMETERS_FILE):
        (without / name).unlink()
    integrity.record(without)  # a release made without a detector
    bare = run_main("predict", f"--workdir={without}", "--json", files[0])
    assert bare.returncode == 0, bare.stderr
    assert json.loads(bare.stdout)[0]["in_distribution"] is None
