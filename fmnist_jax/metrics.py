"""Turning sums and counts into means, and per-member numbers into statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats


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
    half = float(scipy.stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0
    mean = float(x.mean())
    return {"mean": mean, "std": std, "min": float(x.min()), "max": float(x.max()),
            "ci95": [mean - half, mean + half], "n": int(n)}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def ensemble_probabilities(member_logits: np.ndarray) -> np.ndarray:
    """The average of the members' softmax probabilities: `[S, N, C] -> [N, C]`."""
    return softmax(np.asarray(member_logits, np.float64)).mean(0)
