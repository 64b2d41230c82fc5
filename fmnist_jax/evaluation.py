"""Evaluating a workdir: restore its model, predict a split, write metrics, predictions, plots.

`load_workdir` is the one way to rebuild a trained model from what its workdir stored; evaluation,
prediction and the reliability checks all go through it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from fmnist_jax import config as config_lib
from fmnist_jax import components, data, integrity, metrics, plots, report, sweep
from fmnist_jax import train as train_lib
from fmnist_jax import workdir as workdir_lib
from fmnist_jax.checkpointing import Checkpoints
from fmnist_jax.errors import CheckpointError, UserError
from fmnist_jax.models import create_model

CHECKPOINTS = ("best", "latest")
SPLITS = ("test", "val")
SCALARS = ("accuracy", "loss", "top2_accuracy", "ece")
AVERAGES = ("macro", "weighted")
CLASS_SCORES = ("precision", "recall", "f1", "accuracy")


@dataclasses.dataclass(frozen=True)
class Restored:
    """A workdir's model with the weights chosen for evaluation; every member stacked on axis 0."""

    workdir: Path
    model: nn.Module
    config: ml_collections.ConfigDict
    meta: dict[str, Any]
    step: int
    checkpoint: str
    params: Any
    batch_stats: Any
    epochs: list[int]  # per member: the epoch its weights come from
    setting: dict[str, Any] | None = None  # of a sweep: the setting whose members these are

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def seeds(self) -> list[int]:
        return list(self.meta["seeds"])

    @property
    def temperature(self) -> float:
        """What the predictor divides every logit by: 1, or the temperature a calibrated
        release was fitted with (`release.export(calibrated=True)`)."""
        return float(self.meta.get("calibration", {}).get("temperature", 1.0))

    @property
    def tta(self) -> bool:
        """Whether predictions average each image and its mirror (`train.flip_tta`)."""
        return bool(self.config.tta)

    def predictor(self):
        """The jitted `predict(params, batch_stats, images) -> logits [S, N, C]`."""
        stats = self.meta["data"]
        predict = train_lib.make_predict(self.model, stats["mean"], stats["std"],
                                         self.config.eval_batch_size, tta=self.tta)
        if self.temperature == 1:
            return predict
        return jax.jit(lambda *args: predict(*args) / self.temperature)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Each member's class probabilities `[S, N, C]` (float64) for uint8 `[N, 28, 28, 1]`."""
        logits = self.predictor()(self.params, self.batch_stats, images)
        return metrics.check_finite(metrics.softmax(np.asarray(logits, np.float64)),
                                    f"the model of {self.workdir}")


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the configs use."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def config_from_meta(meta: dict[str, Any]) -> ml_collections.ConfigDict:
    """The run's config; a field the run predates gets its default (the behaviour it had)."""
    return ml_collections.ConfigDict(_tuples(config_lib.with_defaults(meta["config"])))


def _template(meta: dict[str, Any]) -> Any:
    """The abstract stacked state (shapes only, nothing computed) that `meta`'s run saves: a
    training state, or the weights alone of a release (`release.py`)."""
    config = config_from_meta(meta)
    parts = components.build(config, meta["data"]["train_size"])
    state = jax.eval_shape(lambda: components.initial_states(config, parts))
    if meta.get("weights_only"):
        return {"params": state.params, "batch_stats": state.batch_stats}
    return state


def _weights(state: Any, meta: dict[str, Any], checkpoint: str, workdir: Path):
    """The params, batch_stats and per-member epoch `checkpoint` names in a restored state."""
    if meta.get("weights_only"):
        if checkpoint != "best":
            raise UserError(f"{workdir} is a release holding only the best weights; use "
                            f"--checkpoint=best")
        return state["params"], state["batch_stats"], list(meta["best_epoch"])
    if checkpoint == "best":
        epochs = np.asarray(state.best_epoch).tolist()
        if min(epochs) < 1:
            raise CheckpointError(f"{workdir} has no completed epoch yet, so no best weights; "
                                  f"use --checkpoint=latest or train longer")
        return state.best_params, state.best_batch_stats, epochs
    params, batch_stats = train_lib.evaluated_weights(state)
    return params, batch_stats, [meta["position"]["epoch"]] * len(meta["seeds"])


@contextlib.contextmanager
def _quiet_absl():
    """Hides orbax's warnings that a read-only manager is read-only."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_workdir(workdir: str | Path, checkpoint: str = "best",
                 data_dir: str | Path | None = None, tta: bool | None = None) -> Restored:
    """The model and weights of `workdir`'s latest checkpoint: each member's best or latest ones
    (the latest moving average when the run kept one). `data_dir` replaces the data location the
    run stored, for a machine whose data lives elsewhere; `tta` turns flip test-time augmentation
    on or off (default: as the run or release recorded, `config.tta`)."""
    workdir = Path(workdir)
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    if not (workdir / "checkpoints").is_dir():
        raise CheckpointError(f"{workdir} holds no checkpoints; train first with "
                              f"scripts/train.py --workdir={workdir}")
    integrity.verify(workdir)
    with _quiet_absl(), Checkpoints(workdir, read_only=True) as ckpts:
        step, state, meta = ckpts.restore(_template)
    config = config_from_meta(meta)
    if data_dir is not None:
        config.data.dir = str(data_dir)
    if tta is not None:
        config.tta = tta
    params, batch_stats, epochs = _weights(state, meta, checkpoint, workdir)
    model = create_model(config.model, config.compute_dtype)
    return Restored(workdir, model, config, meta, step, checkpoint, params, batch_stats, epochs)


def for_setting(restored: Restored, setting: int | None = None) -> Restored:
    """A sweep's members of one setting: `setting`, by default the best on validation (from
    summary.json); the members of any other run as they are."""
    config = restored.config
    if not sweep.is_sweep(config):
        if setting is not None:
            raise UserError(f"{restored.workdir} is not a sweep, so it has no --setting; drop it")
        return restored
    choices = sweep.settings(config)
    if setting is None:
        setting = _best_setting(restored.workdir, len(choices))
    if not 0 <= setting < len(choices):
        raise UserError(f"--setting={setting} is not a setting of {restored.workdir}; give one "
                        f"of 0..{len(choices) - 1} (see its sweep.md)")
    members = [m for m, k in enumerate(sweep.member_settings(config)) if k == setting]
    pick = functools.partial(jax.tree.map, lambda x: x[members[0]:members[-1] + 1])
    meta = dict(restored.meta, seeds=[restored.seeds[m] for m in members])
    return dataclasses.replace(
        restored, meta=meta, params=pick(restored.params), batch_stats=pick(restored.batch_stats),
        epochs=[restored.epochs[m] for m in members],
        setting={"index": setting, "values": choices[setting]})


def _best_setting(workdir: Path, count: int) -> int:
    path = workdir / "summary.json"
    if not path.is_file():
        raise UserError(f"the sweep in {workdir} has not finished, so no setting is chosen yet; "
                        f"give --setting=K (0..{count - 1}) or finish it with scripts/train.py "
                        f"--workdir={workdir}")
    return int(json.loads(path.read_text())["sweep"]["best"]["setting"])


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
