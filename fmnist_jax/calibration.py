"""Calibration: temperature scaling fitted on the validation split; how far to trust a prediction.

Temperature scaling (Guo et al. 2017) divides every member's logits by one number T > 0, fitted to
minimise the log loss of the validation split (never the test split); the predicted class does not
change for one model. Members' probabilities are enough: `log p` is the logits up to a constant, so
`softmax(log p / T)` is `softmax(logits / T)`. The reliability diagram (accuracy against confidence
per bin) and the accuracy-coverage curve (accuracy on the most confident share of the images, the
others abstained) show what the probabilities are worth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fmnist_jax import evaluation, metrics, plots
from fmnist_jax.errors import UserError

NUM_BINS = 15
COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5)
LOG_T_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20]


def _members(probabilities: np.ndarray) -> np.ndarray:
    """`[S, N, C]` members' probabilities (a single model's `[N, C]` as one member)."""
    p = np.asarray(probabilities, np.float64)
    return p[None] if p.ndim == 2 else p


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The predictor's probabilities `[N, C]` with every member's logits divided by
    `temperature`: the members' mean of `softmax(log p / T)`."""
    log_p = np.log(np.maximum(_members(probabilities), np.finfo(np.float64).tiny))
    return metrics.softmax(log_p / temperature).mean(0)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the mean log loss of `scale(probabilities, T)` on `labels`."""
    import scipy.optimize  # pylint: disable=import-outside-toplevel  # 0.4 s, only to fit
    result = scipy.optimize.minimize_scalar(
        lambda log_t: metrics.mean_log_loss(scale(probabilities, np.exp(log_t)), labels),
        bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def reliability(probabilities: np.ndarray, labels: np.ndarray,
                num_bins: int = NUM_BINS) -> dict[str, list]:
    """Per equal-width confidence bin `(i/B, (i+1)/B]`: images, mean confidence, accuracy."""
    count, confidence, correct = metrics.confidence_bins(probabilities, labels, num_bins)
    safe = np.maximum(count, 1)
    return {"count": count.tolist(),
            "confidence": (confidence / safe).tolist(), "accuracy": (correct / safe).tolist()}


def coverage_curve(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy on the k most confident images, for k = 1..N: (coverage k/N, accuracy)."""
    probabilities = np.asarray(probabilities, np.float64)
    order = np.argsort(-probabilities.max(-1), kind="stable")
    correct = (probabilities.argmax(-1) == np.asarray(labels))[order]
    k = np.arange(1, len(correct) + 1)
    return k / len(correct), np.cumsum(correct) / k


def selective_accuracy(probabilities: np.ndarray, labels: np.ndarray,
                       coverages: tuple[float, ...] = COVERAGES) -> dict[str, float]:
    """Accuracy when only the most confident `coverage` share of the images is answered."""
    covered, accuracy = coverage_curve(probabilities, labels)
    n = len(covered)
    return {f"{c:g}": float(accuracy[max(int(round(c * n)), 1) - 1]) for c in coverages}


def _scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"ece": metrics.expected_calibration_error(probabilities, labels, NUM_BINS),
            "loss": metrics.mean_log_loss(probabilities, labels),
            "accuracy": float((probabilities.argmax(-1) == labels).mean())}


def calibrate(val_probabilities: np.ndarray, val_labels: np.ndarray,
              probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The temperature fitted on the validation members' probabilities, and the evaluated
    split's ECE, log loss and selective accuracy before and after scaling by it."""
    temperature = fit_temperature(val_probabilities, val_labels)
    before = _members(probabilities).mean(0)
    after = scale(probabilities, temperature)
    return {"temperature": temperature, "fitted_on": "val",
            "before": {**_scores(before, labels),
                       "selective_accuracy": selective_accuracy(before, labels)},
            "after": {**_scores(after, labels),
                      "selective_accuracy": selective_accuracy(after, labels)},
            "reliability_before": reliability(before, labels),
            "reliability_after": reliability(after, labels)}


def of_evaluation(result: evaluation.Evaluation, out: Path) -> tuple[dict[str, Any], Path]:
    """`calibrate` for an evaluated workdir, the temperature fitted on its validation split (the
    one training drew), and the figure of it (reliability diagram, accuracy-coverage curve) in
    `out`. The temperature a calibrated release already applies is recorded beside it."""
    restored = result.restored
    val = result if result.split == "val" else evaluation.evaluate(restored, "val")
    if not len(val.labels):
        raise UserError(f"{restored.workdir} was trained without a validation split, which "
                        f"calibration is fitted on; evaluate with --no-calibration")
    record = calibrate(val.member_probabilities, val.labels, result.member_probabilities,
                       result.labels)
    record["model_temperature"] = restored.temperature
    record["in_sample"] = result.split == "val"  # the "after" figures then flatter it
    after = scale(result.member_probabilities, record["temperature"])
    curves = [coverage_curve(p, result.labels) for p in (result.probabilities, after)]
    out.mkdir(parents=True, exist_ok=True)
    figure = plots.save(plots.calibration_figure(record, curves, plots.describe(
        {"model": restored.meta["model"], "seeds": restored.seeds, "split": result.split})),
        out / "calibration.png")
    return record, figure
