"""Statistics for comparing two classifiers evaluated on the same images.

Paired over images (each test image is seen by both models): the accuracy difference with a
bootstrap interval over images and the exact McNemar test on the images where exactly one model is
right. Over seeds, when both sides have several: Welch's t test on the members' accuracies and a
bootstrap over seeds and images together. Holm's step-down correction adjusts a family of p-values.
`correct_*` arrays are booleans: whether each prediction matches its label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats

LEVEL = 0.95
RESAMPLES = 10_000


def _tails(level: float) -> tuple[float, float]:
    return 50 * (1 - level), 50 * (1 + level)


def discordant(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int]:
    """(images only `a` gets right, images only `b` gets right)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    return int((a & ~b).sum()), int((b & ~a).sum())


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = RESAMPLES,
                     level: float = LEVEL, seed: int = 0) -> list[float]:
    """The `level` percentile interval of accuracy(b) - accuracy(a), resampling images.

    Each image contributes +1, -1 or 0 to the difference, so a resample of N images is a
    multinomial draw of those three counts: exact, and independent of N in cost.
    """
    n = len(correct_a)
    only_a, only_b = discordant(correct_a, correct_b)
    counts = np.random.default_rng(seed).multinomial(
        n, [only_b / n, only_a / n, (n - only_a - only_b) / n], size=resamples)
    differences = (counts[:, 0] - counts[:, 1]) / n
    return np.percentile(differences, _tails(level)).tolist()


def normal_interval(correct_a: np.ndarray, correct_b: np.ndarray,
                    level: float = LEVEL) -> list[float]:
    """The analytic (normal) interval of the paired difference: mean ± z · sd / √N."""
    d = np.asarray(correct_b, np.float64) - np.asarray(correct_a, np.float64)
    half = scipy.stats.norm.ppf(0.5 + level / 2) * d.std(ddof=1) / np.sqrt(len(d))
    return [float(d.mean() - half), float(d.mean() + half)]


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """The exact two-sided McNemar p-value: a binomial test on the discordant images."""
    only_a, only_b = discordant(correct_a, correct_b)
    if only_a + only_b == 0:
        return 1.0
    return float(scipy.stats.binomtest(only_b, only_a + only_b, 0.5).pvalue)


def welch(accuracies_a: Sequence[float], accuracies_b: Sequence[float]) -> float:
    """Welch's t-test p-value (two-sided) between two groups of seeds' accuracies; 1 when both
    groups are constant and equal."""
    a, b = np.asarray(accuracies_a, np.float64), np.asarray(accuracies_b, np.float64)
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(scipy.stats.ttest_ind(b, a, equal_var=False).pvalue)


def seed_bootstrap(members_a: np.ndarray, members_b: np.ndarray, resamples: int = 1_000,
                   level: float = LEVEL, seed: int = 0, chunk: int = 100) -> list[float]:
    """The interval of mean member accuracy(b) - (a), resampling the seeds of each side and the
    images (the same images for both sides): `members_*` are `[seeds, N]` correctness."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(members_a, np.float64), np.asarray(members_b, np.float64)
    n = a.shape[1]

    def seed_weights(count: int) -> np.ndarray:  # [resamples, seeds]: each seed's share
        picks = rng.integers(0, count, (resamples, count))
        return np.stack([np.bincount(p, minlength=count) for p in picks]) / count

    per_image = (seed_weights(len(b)) @ b - seed_weights(len(a)) @ a).astype(np.float32)
    differences = np.concatenate([
        np.take_along_axis(rows, rng.integers(0, n, rows.shape), 1).mean(1)
        for rows in np.split(per_image, range(chunk, resamples, chunk))])
    return np.percentile(differences, _tails(level)).tolist()


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given."""
    p = np.asarray(pvalues, np.float64)
    order = np.argsort(p, kind="stable")
    scaled = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(scaled, 1.0)
    return adjusted.tolist()


def paired(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float | list[float]]:
    """accuracy(b) - accuracy(a) over the same images: the difference, its bootstrap interval,
    the discordant counts and the exact McNemar p-value."""
    only_a, only_b = discordant(correct_a, correct_b)
    return {"difference": (only_b - only_a) / len(correct_a),
            "ci95": paired_bootstrap(correct_a, correct_b),
            "only_baseline_right": only_a, "only_model_right": only_b,
            "mcnemar_p": mcnemar(correct_a, correct_b)}


def over_seeds(members_a: np.ndarray, members_b: np.ndarray) -> dict[str, float | list[float]]:
    """The seed-level comparison of two multi-seed models (`[seeds, N]` correctness each)."""
    accuracy_a, accuracy_b = np.mean(members_a, 1), np.mean(members_b, 1)
    return {"difference": float(accuracy_b.mean() - accuracy_a.mean()),
            "ci95": seed_bootstrap(members_a, members_b),
            "welch_p": welch(accuracy_a, accuracy_b)}
