"""Ensembles across workdirs: the average of several workdirs' class probabilities (e.g. cnn +
lstm, or every release), evaluated like one workdir, each part reported beside the whole.

A part's probabilities are its own predictor's (the mean of its members). The weights are equal,
or fitted on the validation split (`fit_weights`: non-negative, summing to 1, minimising the
validation log loss), never on the test split. Fitting needs one validation split shared by every
part: parts trained with another validation fraction or split seed drew different ones, and the
fit is refused rather than done on an intersection that some parts may have trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fmnist_jax import evaluation, metrics, restore
from fmnist_jax.errors import UserError

WEIGHTS = ("equal", "val")


def check_same_split(parts: Sequence[evaluation.Evaluation]) -> None:
    """Refuses parts whose split differs (other images, labels or classes)."""
    first = parts[0]
    for part in parts[1:]:
        same = (part.restored.class_names == first.restored.class_names
                and np.array_equal(part.labels, first.labels)
                and np.array_equal(part.images, first.images))
        if not same:
            raise UserError(
                f"{part.restored.workdir} and {first.restored.workdir} drew different "
                f"{first.split} splits (another dataset, validation fraction or split seed); "
                f"ensemble workdirs trained on the same data"
                + (", or drop --ensemble-weights=val" if first.split == "val" else ""))


def evaluate_parts(restoreds: Sequence[restore.Restored], split: str,
                   ) -> list[evaluation.Evaluation]:
    parts = [evaluation.evaluate(r, split) for r in restoreds]
    check_same_split(parts)
    return parts


def fit_weights(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Non-negative weights `[P]` summing to 1 that minimise the log loss of
    `sum_p w_p probabilities[p]` (`[P, N, C]`) on `labels` (SLSQP)."""
    import scipy.optimize  # pylint: disable=import-outside-toplevel  # 0.4 s, only to fit
    true_class = probabilities[:, np.arange(len(labels)), labels]  # [P, N]

    def log_loss(w):
        return -np.mean(np.log(np.maximum(w @ true_class, 1e-12)))

    count = len(probabilities)
    result = scipy.optimize.minimize(
        log_loss, np.full(count, 1.0 / count), method="SLSQP", bounds=[(0.0, 1.0)] * count,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}])
    weights = np.clip(result.x, 0.0, None)
    return weights / weights.sum()


def part_names(parts: Sequence[evaluation.Evaluation]) -> list[str]:
    """File-name-safe, unique names of the parts (model, and workdir name where needed)."""
    names = [p.restored.meta["model"] for p in parts]
    return [f"{n}-{p.restored.workdir.name}" if names.count(n) > 1 else n
            for n, p in zip(names, parts)]


def summarize(parts: Sequence[evaluation.Evaluation], weights: np.ndarray,
              weights_from: str) -> tuple[dict[str, Any], np.ndarray]:
    """metrics.json of the ensemble (the keys of `evaluation.summarize`, with `parts` instead of
    `members`), and its probabilities `[N, C]`."""
    probabilities = np.einsum("p,pnc->nc", weights, np.stack([p.probabilities for p in parts]))
    first = parts[0]
    names = first.restored.class_names
    records = [evaluation.summarize(p) for p in parts]
    seconds = sum(p.seconds for p in parts)
    summary = {
        "model": " + ".join(part_names(parts)), "workdir": None, "split": first.split,
        "checkpoint": ", ".join(sorted({p.restored.checkpoint for p in parts})),
        "step": [p.restored.step for p in parts],
        "epochs": [e for p in parts for e in p.restored.epochs],
        "seeds": [s for p in parts for s in p.restored.seeds],
        "param_count": sum(r["param_count"] for r in records), "class_names": names,
        "predictor": "ensemble",
        **metrics.classification_summary(probabilities, first.labels, names),
        "evaluation": {"compile_seconds": sum(p.compile_seconds for p in parts),
                       "seconds": seconds,
                       "images_per_second": len(first.labels) / max(seconds, 1e-9),
                       "platform": jax.default_backend()},
        "training": {"epochs": sum(r["training"]["epochs"] for r in records),
                     "train_seconds": sum(r["training"]["train_seconds"] or 0.0 for r in records),
                     "images_per_second": None},
        "weights_from": weights_from,
        "across_members": evaluation.across_members(records, names),
        "parts": [{"name": name, "weight": float(w), **record}
                  for name, w, record in zip(part_names(parts), weights, records)],
    }
    return summary, probabilities


def evaluate_ensemble(workdirs: Sequence[str | Path], split: str, checkpoint: str,
                      weights_from: str = "equal", data_dir: str | Path | None = None,
                      tta: bool | None = None,
                      ) -> tuple[list[evaluation.Evaluation], dict[str, Any], np.ndarray]:
    """The parts' evaluations, the ensemble's summary and probabilities on `split` (each part with
    flip TTA as it recorded, unless `tta` says otherwise)."""
    if weights_from not in WEIGHTS:
        raise UserError(f"--ensemble-weights must be one of {', '.join(WEIGHTS)}, "
                        f"got {weights_from!r}")
    restoreds = [restore.select(restore.load_workdir(w, checkpoint, data_dir, tta))
                 for w in workdirs]
    parts = evaluate_parts(restoreds, split)
    weights = np.full(len(parts), 1.0 / len(parts))
    if weights_from == "val":
        val = parts if split == "val" else evaluate_parts(restoreds, "val")
        weights = fit_weights(np.stack([p.probabilities for p in val]), val[0].labels)
    summary, probabilities = summarize(parts, weights, weights_from)
    return parts, summary, probabilities


def write_outputs(parts: Sequence[evaluation.Evaluation], summary: dict[str, Any],
                  probabilities: np.ndarray, out: Path) -> list[Path]:
    """The files of a one-workdir evaluation; `predictions-<part>.csv` for each part."""
    summary = {**summary, "workdir": str(out.resolve())}
    return evaluation.write_files(out, summary, parts[0].images, parts[0].labels, probabilities,
                                  dict(zip(part_names(parts), (p.probabilities for p in parts))),
                                  history=[])
