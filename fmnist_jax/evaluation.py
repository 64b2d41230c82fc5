"""Evaluating a restored workdir (`restore.py`): predict a split, write metrics, predictions,
plots."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np

from fmnist_jax import data, integrity, metrics, plots, report
from fmnist_jax import workdir as workdir_lib
from fmnist_jax.errors import UserError

if TYPE_CHECKING:
    from fmnist_jax.restore import Restored

SPLITS = ("test", "val")
SCALARS = ("accuracy", "loss", "top2_accuracy", "ece")
AVERAGES = ("macro", "weighted")
CLASS_SCORES = ("precision", "recall", "f1", "accuracy")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A split's images and labels with every member's class probabilities `[S, N, C]`."""

    restored: Restored
    split: str
    images: np.ndarray
    labels: np.ndarray
    member_probabilities: np.ndarray
    compile_seconds: float
    seconds: float

    @property
    def probabilities(self) -> np.ndarray:
        """The predictor's probabilities `[N, C]`: the model's, or the members' mean (ensemble)."""
        return self.member_probabilities.mean(0)


def load_split(config: ml_collections.ConfigDict, split: str) -> data.Split:
    """The split exactly as training drew it (same source, validation fraction and seed)."""
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    dataset = data.load_for_config(config)
    return dataset.test if split == "test" else dataset.val


def evaluate(restored: Restored, split: str = "test") -> Evaluation:
    """Every member's probabilities on `split`, from one compiled pass; compile time kept apart."""
    part = load_split(restored.config, split)
    images = jax.device_put(part.images)
    start = time.perf_counter()
    compiled = restored.predictor().lower(restored.params, restored.batch_stats, images).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    logits = jax.block_until_ready(compiled(restored.params, restored.batch_stats, images))
    seconds = time.perf_counter() - start
    probabilities = metrics.check_finite(metrics.softmax(np.asarray(logits, np.float64)),
                                         f"the model of {restored.workdir}")
    return Evaluation(restored, split, part.images, part.labels, probabilities, compile_seconds,
                      seconds)


def across_members(members: Sequence[dict[str, Any]], class_names: Sequence[str]) -> dict:
    """`metrics.describe` (mean, std, ...) over members of every scalar, average and class score."""
    out: dict[str, Any] = {k: metrics.describe([m[k] for m in members]) for k in SCALARS}
    for avg in AVERAGES:
        out[avg] = {k: metrics.describe([m[avg][k] for m in members]) for k in members[0][avg]}
    out["per_class"] = {name: {k: metrics.describe([m["per_class"][name][k] for m in members])
                               for k in CLASS_SCORES} for name in class_names}
    return out


def training_record(workdir: Path) -> dict[str, Any]:
    """How the run trained, from metrics.jsonl: epochs, training seconds, median images/s."""
    history = workdir_lib.read_history(workdir)
    if not history:
        return {"epochs": 0, "train_seconds": None, "images_per_second": None}
    return {"epochs": len(history),
            "train_seconds": float(sum(r["train_seconds"] for r in history)),
            "images_per_second": float(np.median([r["images_per_second"] for r in history]))}


def summarize(evaluation: Evaluation) -> dict[str, Any]:
    """The content of metrics.json: the predictor's metrics, and per member when several."""
    restored = evaluation.restored
    names = restored.class_names
    num_members = len(restored.seeds)
    n = len(evaluation.labels)
    summary = {
        "model": restored.meta["model"], "workdir": str(restored.workdir.resolve()),
        "split": evaluation.split, "checkpoint": restored.checkpoint, "step": restored.step,
        "epochs": restored.epochs, "seeds": restored.seeds,
        "param_count": restored.meta["param_count"], "class_names": names,
        "predictor": "ensemble" if num_members > 1 else "model",
        "tta": restored.tta,
        **metrics.classification_summary(evaluation.probabilities, evaluation.labels, names),
        "evaluation": {"compile_seconds": evaluation.compile_seconds,
                       "seconds": evaluation.seconds,
                       "images_per_second": n / max(evaluation.seconds, 1e-9),
                       "platform": jax.default_backend()},
        "training": training_record(restored.workdir),
    }
    if restored.setting is not None:
        summary["setting"] = restored.setting
    if num_members > 1:
        members = [{"seed": seed, "epoch": epoch,
                    **metrics.classification_summary(p, evaluation.labels, names)}
                   for seed, epoch, p in zip(restored.seeds, restored.epochs,
                                             evaluation.member_probabilities)]
        summary["across_members"] = across_members(members, names)
        summary["members"] = members
    return summary


def write_predictions(path: Path, probabilities: np.ndarray, labels: np.ndarray,
                      class_names: Sequence[str]) -> None:
    """One row per example: index, true and predicted label (number and name), probabilities."""
    predicted = probabilities.argmax(-1)
    header = ["index", "label", "label_name", "predicted", "predicted_name",
              *[f"prob_{name}" for name in class_names]]
    lines = [",".join(header)]
    for i, (label, guess, row) in enumerate(zip(labels, predicted, probabilities)):
        probs = ",".join(f"{p:.8g}" for p in row)
        lines.append(f"{i},{label},{class_names[label]},{guess},{class_names[guess]},{probs}")
    path.write_text("\n".join(lines) + "\n")


def default_output_dir(workdir: str | Path, split: str) -> Path:
    return Path(workdir) / f"eval-{split}"


def write_outputs(evaluation: Evaluation, summary: dict[str, Any], out: Path,
                  extra_figures: Sequence[Path] = ()) -> list[Path]:
    """metrics.json, predictions CSV(s), the figures and report.md in `out`; the paths written.
    `extra_figures`, already in `out` (the explanations), are listed in the report too."""
    restored = evaluation.restored
    members = {}
    if len(evaluation.member_probabilities) > 1:
        members = {f"seed{seed}": probs
                   for seed, probs in zip(restored.seeds, evaluation.member_probabilities)}
    return write_files(out, summary, evaluation.images, evaluation.labels,
                       evaluation.probabilities, members, workdir_lib.read_history(restored.workdir),
                       extra_figures)


def write_files(out: Path, summary: dict[str, Any], images: np.ndarray, labels: np.ndarray,
                probabilities: np.ndarray, parts: dict[str, np.ndarray],
                history: Sequence[dict], extra_figures: Sequence[Path] = ()) -> list[Path]:
    """What `write_outputs` writes, for any predictor: `parts` are the probabilities of what it
    averages (members or workdirs), each written to `predictions-<name>.csv`."""
    out.mkdir(parents=True, exist_ok=True)
    names = summary["class_names"]
    written = [out / "metrics.json", out / "predictions.csv"]
    written[0].write_text(json.dumps(summary, indent=2) + "\n")
    write_predictions(written[1], probabilities, labels, names)
    for name, probs in parts.items():
        written.append(out / f"predictions-{name}.csv")
        write_predictions(written[-1], probs, labels, names)
    figures = plots.evaluation_figures(images, labels, probabilities, summary, history, out)
    figures += list(extra_figures)
    written += figures
    written.append(out / "report.md")
    written[-1].write_text(report.evaluation_report(summary, [f.name for f in figures]))
    integrity.record(out)
    return written
