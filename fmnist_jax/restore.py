"""Restoring a workdir or release: its model and weights (`load_workdir`), and the members a
reader uses (`select`).

`load_workdir` is the one way to rebuild a trained model from what its workdir stored, every member
stacked on axis 0; `select` is the one way to choose some of them (a sweep's setting, a seed, a
member). Evaluation, prediction, releases, the server, similar items, explanations and the
out-of-distribution detector all go through both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from fmnist_jax import config as config_lib
from fmnist_jax import components, integrity, metrics, sweep
from fmnist_jax import train as train_lib
from fmnist_jax.checkpointing import Checkpoints
from fmnist_jax.errors import CheckpointError, UserError
from fmnist_jax.models import create_model

CHECKPOINTS = ("best", "latest")
PER_MEMBER_META = ("seeds", "best_epoch")  # meta's lists of one entry per member


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
    members: tuple[int, ...]  # per member: its index in the workdir's stack (`select`)
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

    @property
    def variables(self) -> dict[str, Any]:
        """`{'params', 'batch_stats'}` of a one-member Restored (`select(..., member=K)`),
        unstacked."""
        if len(self.members) != 1:
            raise ValueError(f"{len(self.members)} members of {self.workdir} where one is needed; "
                             f"choose it with restore.select(restored, member=K)")
        return jax.tree.map(lambda x: x[0], {"params": self.params,
                                             "batch_stats": self.batch_stats})

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
def _quiet_loggers():
    """Hides orbax's warnings that a read-only manager is read-only, and the traceback asyncio
    logs (orbax-checkpoint 0.12.0) of the other reads of a damaged checkpoint when one of them
    failed: the one-line error of that failure says it all."""
    levels = {"absl": logging.ERROR, "asyncio": logging.CRITICAL}
    before = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


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
    with _quiet_loggers(), Checkpoints(workdir, read_only=True) as ckpts:
        step, state, meta = ckpts.restore(_template)
    config = config_from_meta(meta)
    if data_dir is not None:
        config.data.dir = str(data_dir)
    if tta is not None:
        config.tta = tta
    params, batch_stats, epochs = _weights(state, meta, checkpoint, workdir)
    model = create_model(config.model, config.compute_dtype)
    return Restored(workdir, model, config, meta, step, checkpoint, params, batch_stats, epochs,
                    tuple(range(len(epochs))))


def select(restored: Restored, *, setting: int | None = None, seed: int | None = None,
           member: int | None = None) -> Restored:
    """The members of `restored` a reader uses, still stacked on axis 0: `member` K of its stack
    alone; or of a sweep the members of `setting` (by default the best on validation, from
    summary.json), of any other run all of them, and of those only `seed`'s when given."""
    if member is not None:
        if setting is not None or seed is not None:
            raise UserError("--member names one member itself; drop --setting and --seed")
        return _take(restored, [_checked_member(restored, member)])
    positions = _setting_positions(restored, setting)
    if seed is not None:
        positions = [_seed_position(restored, positions, seed)]
    return _take(restored, positions)


def _checked_member(restored: Restored, member: int) -> int:
    count = len(restored.members)
    if not 0 <= member < count:
        raise UserError(f"--member={member} is not in {restored.workdir}; give one of "
                        f"0..{count - 1}")
    return member


def _setting_positions(restored: Restored, setting: int | None) -> list[int]:
    """The positions in `restored`'s stack of a sweep's `setting` (default: the one its members
    share, else the best); every position of any other run."""
    config = restored.config
    everything = list(range(len(restored.members)))
    if not sweep.is_sweep(config):
        if setting is not None:
            raise UserError(f"{restored.workdir} is not a sweep, so it has no --setting; drop it")
        return everything
    count = len(sweep.settings(config))
    held = [sweep.member_settings(config)[m] for m in restored.members]
    if setting is None:
        if len(set(held)) == 1:
            return everything
        setting = _best_setting(restored.workdir, count)
    if not 0 <= setting < count:
        raise UserError(f"--setting={setting} is not a setting of {restored.workdir}; give one "
                        f"of 0..{count - 1} (see its sweep.md)")
    return [p for p, k in enumerate(held) if k == setting]


def _best_setting(workdir: Path, count: int) -> int:
    path = workdir / "summary.json"
    if not path.is_file():
        raise UserError(f"the sweep in {workdir} has not finished, so no setting is chosen yet; "
                        f"give --setting=K (0..{count - 1}) or finish it with scripts/train.py "
                        f"--workdir={workdir}")
    return int(json.loads(path.read_text())["sweep"]["best"]["setting"])


def _seed_position(restored: Restored, positions: list[int], seed: int) -> int:
    """The one of `positions` holding `seed`'s member."""
    seeds = [restored.seeds[p] for p in positions]
    if seed not in seeds:
        raise UserError(f"seed {seed} is not in {restored.workdir}; its seeds: {seeds}")
    return positions[seeds.index(seed)]


def _setting_of(config: ml_collections.ConfigDict, members: Sequence[int]) -> dict | None:
    """Of a sweep, the setting of `members` (which share one): its index and values."""
    if not sweep.is_sweep(config):
        return None
    index = sweep.member_settings(config)[members[0]]
    return {"index": index, "values": sweep.settings(config)[index]}


def pick_members(tree: Any, positions: Sequence[int]) -> Any:
    """The entries `positions` of a stacked tree, still stacked."""
    index = np.asarray(positions)
    return jax.tree.map(lambda x: x[index], tree)


def _take(restored: Restored, positions: list[int]) -> Restored:
    """`restored` holding the members at `positions` of its stack, meta and setting to match."""
    chosen = tuple(restored.members[p] for p in positions)
    setting = _setting_of(restored.config, chosen)
    if chosen == restored.members and setting == restored.setting:
        return restored
    meta = dict(restored.meta, **{key: [restored.meta[key][p] for p in positions]
                                  for key in PER_MEMBER_META if key in restored.meta})
    return dataclasses.replace(
        restored, meta=meta, params=pick_members(restored.params, positions),
        batch_stats=pick_members(restored.batch_stats, positions),
        epochs=[restored.epochs[p] for p in positions], members=chosen, setting=setting)
