"""Ensembles across workdirs: weights fitted on validation data, refusal of parts with different
splits, and evaluate.py's ensemble of two releases against the average of their own predictions."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from conftest import PRETRAINED
from fmnist_jax import ensemble, evaluation, restore
from fmnist_jax.errors import UserError
from subprocess_runs import run, run_main
from test_evaluate import read_predictions


def test_fitted_weights_favour_the_informative_part():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    good = np.full((500, 10), 0.02)
    good[np.arange(500), labels] = 0.82
    uniform = np.full((500, 10), 0.1)
    weights = ensemble.fit_weights(np.stack([uniform, good]), labels)
    assert weights.min() >= 0
    np.testing.assert_allclose(weights.sum(), 1.0)
    assert weights[1] > 0.95


def test_fitted_weights_mix_two_parts_that_err_on_different_images():
    """Each part is confident and wrong on its own half: the best mixture weighs them alike."""
    labels = np.zeros(400, np.int64)
    parts = np.full((2, 400, 10), 0.01)
    parts[:, :, 0] = 0.91
    parts[0, :200], parts[1, 200:] = 0.1, 0.1  # uncertain on its half
    weights = ensemble.fit_weights(parts, labels)
    np.testing.assert_allclose(weights, [0.5, 0.5], atol=0.02)


def fake_part(images: np.ndarray, labels: np.ndarray, split: str = "val"):
    restored = types.SimpleNamespace(class_names=list("abcdefghij"), workdir=f"w{len(labels)}")
    return types.SimpleNamespace(restored=restored, images=images, labels=labels, split=split)


def test_parts_with_different_splits_are_refused_with_the_fix():
    images = np.zeros((4, 28, 28, 1), np.uint8)
    ensemble.check_same_split([fake_part(images, np.arange(4)), fake_part(images, np.arange(4))])
    with pytest.raises(UserError, match="different val splits.*--ensemble-weights=val"):
        ensemble.check_same_split([fake_part(images, np.arange(4)),
                                   fake_part(images, np.array([0, 1, 2, 4]))])


def evaluate_alone(name: str, data_dir, out):
    """The release evaluated alone on the test split, in this process, as `evaluate.py` does
    (`evaluation.evaluate`, `summarize`): its metrics.json and predictions.csv in `out` (no
    figures: only the numbers are compared)."""
    restored = restore.select(restore.load_workdir(PRETRAINED / name, data_dir=data_dir))
    result = evaluation.evaluate(restored)
    summary = evaluation.summarize(result)
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    evaluation.write_predictions(out / "predictions.csv", result.probabilities, result.labels,
                                 summary["class_names"])
    return out


@pytest.mark.e2e
def test_the_ensemble_of_two_releases_averages_their_predictions(tmp_path, real_data_dir):
    single = {name: evaluate_alone(name, real_data_dir, tmp_path / name)
              for name in ("mlp", "lstm")}
    out = tmp_path / "ensemble"
    result = run("evaluate", f"--workdir={PRETRAINED / 'mlp'}", f"--workdir={PRETRAINED / 'lstm'}",
                 f"--output-dir={out}", f"--data-dir={real_data_dir}")
    assert result.returncode == 0, result.stderr
    _, labels, _, mlp, _ = read_predictions(single["mlp"] / "predictions.csv")
    _, _, _, lstm, _ = read_predictions(single["lstm"] / "predictions.csv")
    _, ens_labels, ens_predicted, ens, _ = read_predictions(out / "predictions.csv")
    np.testing.assert_array_equal(ens_labels, labels)
    np.testing.assert_allclose(ens, (mlp + lstm) / 2, atol=1e-7)
    np.testing.assert_array_equal(ens_predicted, ((mlp + lstm) / 2).argmax(-1))
    summary = json.loads((out / "metrics.json").read_text())
    np.testing.assert_allclose(summary["accuracy"], np.mean(ens.argmax(-1) == labels), atol=1e-9)
    parts = {p["name"]: p for p in summary["parts"]}
    for name in ("mlp", "lstm"):
        alone = json.loads((single[name] / "metrics.json").read_text())
        assert parts[name]["accuracy"] == alone["accuracy"]
        assert parts[name]["weight"] == 0.5
    assert "## Parts" in (out / "report.md").read_text()
    compare = run_main("compare", str(single["mlp"]), str(single["lstm"]), str(out),
                       f"--output={tmp_path / 'compare.md'}")  # test_evaluate runs the script
    assert compare.returncode == 0, compare.stderr
    assert "mlp + lstm" in compare.stdout


def test_several_workdirs_need_an_output_dir():
    result = run_main("evaluate", f"--workdir={PRETRAINED / 'mlp'}",
                      f"--workdir={PRETRAINED / 'lstm'}")
    assert result.returncode == UserError.exit_code
    assert "--output-dir" in result.stderr.strip().splitlines()[-1]
