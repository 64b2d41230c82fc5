"""Turning sums and counts into means, and per-member numbers into statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_jax.errors import DamagedModel


def means(sums: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-member mean loss and accuracy from summed losses, correct counts and example counts."""
    count = np.maximum(np.asarray(sums["count"], np.float64), 1.0)
    return {"loss": np.asarray(sums["loss"], np.float64) / count,
            "accuracy": np.asarray(sums["correct"], np.float64) / count}


def describe(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, extremes and a 95% t confidence interval of the mean."""
    x = np.asarray(values, np.float64)
    n = x.size
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    half = _t_quantile(0.975, n - 1) * std / np.sqrt(n) if n > 1 else 0.0
    mean = float(x.mean())
    return {"mean": mean, "std": std, "min": float(x.min()), "max": float(x.max()),
            "ci95": [mean - half, mean + half], "n": int(n)}


def _t_quantile(q: float, dof: int) -> float:
    """Student's t quantile; scipy.stats (0.3 s to import) only when there is one to compute."""
    import scipy.stats  # pylint: disable=import-outside-toplevel
    return float(scipy.stats.t.ppf(q, dof))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def check_finite(probabilities: np.ndarray, source: str | Path) -> np.ndarray:
    """`probabilities` `[..., N, C]`, or DamagedModel (one line) if any holds NaN or infinity:
    never a result made of them."""
    bad = ~np.isfinite(probabilities).all(-1)
    if bad.any():
        raise DamagedModel(f"{source} gives non-finite probabilities (NaN or "
                           f"infinity) for {bad.any(0).sum() if bad.ndim > 1 else bad.sum()} of "
                           f"{bad.shape[-1]} images: its weights are damaged; restore it, export "
                           f"it again or train it again")
    return probabilities


def ensemble_probabilities(member_logits: np.ndarray) -> np.ndarray:
    """The average of the members' softmax probabilities: `[S, N, C] -> [N, C]`."""
    return softmax(np.asarray(member_logits, np.float64)).mean(0)


# Classification metrics: pure numpy, on labels `[N]` and class probabilities `[N, C]`.
# Undefined ratios (a class never predicted, a class absent from the labels) count as 0, as
# scikit-learn's `zero_division=0` does; macro averages weigh all C classes equally.


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """`numerator / denominator`, and 0 where the denominator is 0."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator != 0)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts `[C, C]`: row = true class, column = predicted class."""
    labels = np.asarray(labels, np.int64)
    predictions = np.asarray(predictions, np.int64)
    cells = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return cells.reshape(num_classes, num_classes)


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1, support and per-class accuracy `[C]` from a confusion matrix.

    Per-class accuracy is the fraction of a class's examples predicted correctly (what the seed
    projects report as per-class accuracy; it equals recall).
    """
    confusion = np.asarray(confusion, np.int64)
    true_positive = np.diag(confusion)
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    precision = _ratio(true_positive, predicted)
    recall = _ratio(true_positive, support)
    f1 = _ratio(2 * true_positive, support + predicted)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support,
            "accuracy": recall}


def averaged_scores(scores: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Macro (each class alike) and support-weighted means of precision, recall and F1."""
    weights = np.asarray(scores["support"], np.float64)
    weights = weights / max(weights.sum(), 1.0)
    names = ("precision", "recall", "f1")
    return {"macro": {n: float(np.mean(scores[n])) for n in names},
            "weighted": {n: float(np.sum(scores[n] * weights)) for n in names}}


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The share of examples whose true class is among the `k` most probable (ties: lower first)."""
    probabilities = np.asarray(probabilities)
    top = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(-1).mean())


def mean_log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class (cross-entropy of the probabilities)."""
    p = np.asarray(probabilities, np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(p, np.finfo(np.float64).tiny)).mean())


def confidence_bins(probabilities: np.ndarray, labels: np.ndarray,
                    num_bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin `(i/B, (i+1)/B]`: examples, summed confidence (the top
    probability) and correct predictions, each `[B]`."""
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == np.asarray(labels)
    bins = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    return (np.bincount(bins, minlength=num_bins), np.bincount(bins, confidence, num_bins),
            np.bincount(bins, correct, num_bins))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               num_bins: int = 15) -> float:
    """ECE: the example-weighted mean |accuracy - confidence| over equal-width confidence bins
    (`confidence_bins`)."""
    count, confidence, correct = confidence_bins(probabilities, labels, num_bins)
    return float(np.abs(correct - confidence).sum() / max(count.sum(), 1))


def most_confused_pairs(confusion: np.ndarray, k: int = 5,
                        class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The `k` class pairs `a < b` most often mistaken for each other, both directions summed.

    Each entry: `a`, `b`, `count` (= `a_as_b` + `b_as_a`), and their names as `classes` when
    `class_names` is given; ties are broken by class index, and pairs never confused are left out.
    """
    confusion = np.asarray(confusion, np.int64)
    a, b = np.triu_indices(len(confusion), k=1)
    forward, backward = confusion[a, b], confusion[b, a]
    order = np.argsort(-(forward + backward), kind="stable")[:k]
    pairs = []
    for i in order:
        if forward[i] + backward[i] == 0:
            break
        pair = {"a": int(a[i]), "b": int(b[i]), "count": int(forward[i] + backward[i]),
                "a_as_b": int(forward[i]), "b_as_a": int(backward[i])}
        if class_names:
            pair["classes"] = [class_names[a[i]], class_names[b[i]]]
        pairs.append(pair)
    return pairs


def classification_summary(probabilities: np.ndarray, labels: np.ndarray,
                           class_names: Sequence[str]) -> dict[str, Any]:
    """Every metric of one predictor as JSON-ready values; the prediction is the top probability."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    confusion = confusion_matrix(labels, probabilities.argmax(-1), len(class_names))
    scores = per_class_scores(confusion)
    per_class = {name: {key: scores[key][i].item() for key in scores}
                 for i, name in enumerate(class_names)}
    return {"num_examples": int(len(labels)),
            "accuracy": float(np.trace(confusion) / max(len(labels), 1)),
            "loss": mean_log_loss(probabilities, labels),
            "top2_accuracy": top_k_accuracy(probabilities, labels, 2),
            "ece": expected_calibration_error(probabilities, labels),
            **averaged_scores(scores), "per_class": per_class,
            "confusion_matrix": confusion.tolist(),
            "most_confused": most_confused_pairs(confusion, class_names=class_names)}
