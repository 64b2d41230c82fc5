"""The comparison statistics and temperature scaling pinned on constructed cases."""

from __future__ import annotations

import chex
import numpy as np
import pytest

from fmnist_jax import calibration, metrics, stats

N = 10_000


def _correct(accuracy: float, n: int = N, seed: int = 0) -> np.ndarray:
    """`n` booleans, exactly `accuracy * n` of them true, in a random order."""
    correct = np.arange(n) < round(accuracy * n)
    return np.random.default_rng(seed).permutation(correct)


def test_identical_predictions_give_p_one_and_an_interval_containing_zero():
    correct = _correct(0.9)
    result = stats.paired(correct, correct)
    assert result["mcnemar_p"] == 1.0
    assert result["difference"] == 0.0
    low, high = result["ci95"]
    assert low <= 0.0 <= high


def test_right_on_100_more_of_10000_images_is_supported():
    a = _correct(0.9)
    b = a.copy()
    b[np.flatnonzero(~a)[:100]] = True  # b is right on 100 images a gets wrong, and on all a gets
    result = stats.paired(a, b)
    assert result["difference"] == pytest.approx(0.01)
    assert result["only_baseline_right"] == 0 and result["only_model_right"] == 100
    assert result["ci95"][0] > 0
    assert result["mcnemar_p"] < 1e-20  # 2 * 0.5**100
    assert stats.paired(b, a)["ci95"][1] < 0  # and the other way round


def test_bootstrap_interval_is_near_the_analytic_one():
    a, b = _correct(0.90, seed=1), _correct(0.92, seed=2)  # independent mistakes: many discordant
    bootstrap = np.array(stats.paired_bootstrap(a, b))
    analytic = np.array(stats.normal_interval(a, b))
    chex.assert_trees_all_close(bootstrap, analytic, atol=0.001)
    assert analytic[0] > 0  # 2 points on 10,000 images: outside the noise


def test_mcnemar_on_a_small_known_case():
    """Discordant 1 vs 9: the two-sided exact binomial p is 2 * P(X <= 1 | 10, 0.5) = 22/1024."""
    a = np.array([True] * 1 + [False] * 9 + [True] * 5)
    b = np.array([False] * 1 + [True] * 9 + [True] * 5)
    assert stats.mcnemar(a, b) == pytest.approx(22 / 1024)


def test_holm_on_a_known_case():
    """p = (0.01, 0.04, 0.03, 0.005): sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 =
    0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06."""
    chex.assert_trees_all_close(np.array(stats.holm([0.01, 0.04, 0.03, 0.005])),
                                np.array([0.03, 0.06, 0.06, 0.02]))
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]


def test_seed_level_comparison():
    rng = np.random.default_rng(3)
    a = np.stack([_correct(acc, seed=s) for s, acc in enumerate((0.90, 0.901, 0.899))])
    b = np.stack([_correct(acc, seed=9 + s) for s, acc in enumerate((0.93, 0.929, 0.931))])
    result = stats.over_seeds(a, b)
    assert result["difference"] == pytest.approx(0.03)
    assert result["welch_p"] < 1e-3 and result["ci95"][0] > 0.02
    same = stats.over_seeds(a, a[rng.permutation(3)])
    assert same["welch_p"] == pytest.approx(1.0) and same["ci95"][0] <= 0 <= same["ci95"][1]


def _synthetic(temperature: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a model whose logits are the true ones times `1 / temperature`; labels
    drawn from the true ones."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.5, (n, 10))
    cumulative = metrics.softmax(logits).cumsum(-1)
    labels = np.minimum((cumulative < rng.random((n, 1))).sum(-1), 9)
    return metrics.softmax(logits / temperature), labels


def test_temperature_scaling_recovers_a_known_temperature_and_lowers_the_ece():
    val, val_labels = _synthetic(0.5, 20_000, seed=0)  # overconfident: logits doubled
    test, test_labels = _synthetic(0.5, 10_000, seed=1)
    assert calibration.fit_temperature(val, val_labels) == pytest.approx(2.0, rel=0.05)
    result = calibration.calibrate(val, val_labels, test, test_labels)
    assert result["after"]["ece"] < result["before"]["ece"] / 3
    assert result["after"]["loss"] < result["before"]["loss"]
    assert result["after"]["accuracy"] == result["before"]["accuracy"]  # argmax kept
    chex.assert_tree_all_finite(calibration.scale(test, result["temperature"]))


def test_scaling_members_divides_each_members_logits():
    logits = np.random.default_rng(4).normal(size=(3, 50, 10))
    scaled = calibration.scale(metrics.softmax(logits), 1.7)
    chex.assert_shape(scaled, (50, 10))
    chex.assert_trees_all_close(scaled, metrics.softmax(logits / 1.7).mean(0), atol=1e-12)


def test_coverage_curve_and_reliability():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])  # right, wrong, right, wrong; confidence .9 .8 .6 .55
    assert calibration.selective_accuracy(probabilities, labels, (1.0, 0.5, 0.25)) == {
        "1": 0.5, "0.5": 0.5, "0.25": 1.0}
    bins = calibration.reliability(probabilities, labels, num_bins=2)
    assert bins["count"] == [0, 4]
    assert bins["accuracy"][1] == 0.5 and bins["confidence"][1] == pytest.approx(0.7125)
