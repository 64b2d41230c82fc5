"""A training run: the epoch loop (`Trainer`), checkpoints and logs, and the final summary.

The workdir holds `config.json` (the resolved config, written at start), `metrics.jsonl` (one line
per epoch; `tensorboard/` the same as event files), `checkpoints/` (orbax) and, at the end,
`summary.json`. Running again with the same workdir resumes from the latest checkpoint and ends
where an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from fmnist_jax import config as config_lib
from fmnist_jax import data, locking, metrics, optim, plots, report, sharding, sweep, tensorboard
from fmnist_jax import train as train_lib
from fmnist_jax.checkpointing import Checkpoints
from fmnist_jax.components import Components, build, check_memory, initial_states, seeds_of
from fmnist_jax.errors import CheckpointError, ConfigError, TrainingDiverged
from fmnist_jax.models import param_count
from fmnist_jax.workdir import (check_resumable, config_to_json, ensure_space, ensure_writable,
                                environment, read_history, removed_if_left_empty,
                                truncate_metrics)

PROGRESS_EVERY = 25  # steps between reads of the running loss for the progress bar


class Interrupt:
    """Turns the first Ctrl-C into a flag checked after each step; a second one stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> Interrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nInterrupt received: stopping after this step and saving a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr)


@dataclasses.dataclass
class Position:
    """Where the run stands: completed epochs, steps done in the current one, and its sums."""

    epoch: int = 0
    step_in_epoch: int = 0
    partial: dict[str, list] | None = None


def _stats(values: np.ndarray) -> dict[str, Any]:
    """A metric as the mean over members, with each member's value and the std when several."""
    values = np.asarray(values, np.float64)
    if values.size == 1:
        return {"": float(values[0])}
    return {"": float(values.mean()), "_std": float(values.std(ddof=1)),
            "_members": [float(v) for v in values]}


def epoch_record(epoch: int, train: dict, val: dict, lr: np.ndarray, active: np.ndarray,
                 seconds: float, train_seconds: float, images: int,
                 raw_val: dict | None = None) -> dict[str, Any]:
    """One line of metrics.jsonl: member means (and per-member values and std with several).

    `val_*` are of the evaluated weights (the moving average when kept), `raw_val_*` of the raw
    weights when those differ."""
    record: dict[str, Any] = {"epoch": epoch}
    columns = [("train_loss", train["loss"]), ("train_accuracy", train["accuracy"]),
               ("val_loss", val["loss"]), ("val_accuracy", val["accuracy"]), ("learning_rate", lr)]
    if raw_val is not None:
        columns += [("raw_val_loss", raw_val["loss"]), ("raw_val_accuracy", raw_val["accuracy"])]
    for name, values in columns:
        record.update({name + suffix: v for suffix, v in _stats(values).items()})
    record.update({"active_members": int(active.sum()), "seconds": seconds,
                   "train_seconds": train_seconds, "images_per_second": images / train_seconds})
    return record


def _format_epoch(r: dict[str, Any], epochs: int) -> str:
    raw = f" (raw {r['raw_val_accuracy']:.2%})" if "raw_val_accuracy" in r else ""
    return (f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.4f} "
            f"acc {r['train_accuracy']:.2%}  val loss {r['val_loss']:.4f} "
            f"acc {r['val_accuracy']:.2%}{raw}  lr {r['learning_rate']:.2e}  "
            f"{r['seconds']:.1f}s  {r['images_per_second']:,.0f} img/s")


class Trainer:
    """Runs the epochs of one workdir's run, all members at once."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, dataset: data.Dataset,
                 parts: Components, quiet: bool, layout: sharding.Layout):
        self.config, self.workdir, self.dataset, self.parts, self.quiet = (
            config, workdir, dataset, parts, quiet)
        self.layout = layout
        self.num_members = len(seeds_of(config))
        self.keys = layout.put_members(train_lib.stacked_keys(seeds_of(config)))
        self.num_train = len(dataset.train)
        self.steps_per_epoch = self.num_train // config.batch_size
        self.images = layout.put_host(dataset.train.images)
        self.labels = layout.put_host(dataset.train.labels)
        self.val_images = layout.put_host(dataset.val.images)
        self.val_labels = layout.put_host(dataset.val.labels)
        # auto is scan on every backend, CPU included: there the CNNs train their convolutions
        # as matrix products, which XLA:CPU runs at full speed in a scan body (models/layers.py)
        self.mode = "scan" if config.epoch_mode == "auto" else config.epoch_mode
        step = train_lib.make_train_step(dataset.mean, dataset.std, config.label_smoothing,
                                         config.augment.to_dict(), config.ema_decay)
        self.span = train_lib.make_train_span(step, self.num_members, config.scan_unroll, layout,
                                              config.member_strategy)
        self.predict = train_lib.make_predict(parts.model, dataset.mean, dataset.std,
                                              config.eval_batch_size, tta=config.tta)
        self.end_of_epoch = train_lib.make_end_of_epoch(
            parts.plateau, config.schedule.name == "plateau",
            config.schedule.plateau_metric == "val_loss", config.early_stopping_patience)
        self.compiled = None
        self.compile_seconds = 0.0

    def compile(self, states, acc) -> None:
        """Compiles the train span ahead of time, timing compilation apart from training."""
        length = 1 if self.mode == "loop" else self.steps_per_epoch
        perms = self.permutations(0)
        start = time.perf_counter()
        self.compiled = self.span.lower(*self.layout.put_members((states, acc)), self.images,
                                        self.labels, perms, 0, 0, self.keys["dropout"],
                                        length=length).compile()
        self.compile_seconds = time.perf_counter() - start

    def permutations(self, epoch: int) -> jax.Array:
        """The epoch's batch indices of every member, split over the mesh."""
        perms = train_lib.epoch_permutations(self.keys["data"], epoch, self.num_train,
                                             self.config.batch_size)
        return self.layout.put(perms, self.layout.permutations)

    def learning_rates(self, states) -> np.ndarray:
        steps = np.maximum(train_lib.to_host(states.step) - 1, 0)
        base = np.array([float(self.parts.schedule(int(s))) for s in steps])
        peak = train_lib.to_host(optim.peak_learning_rates(states.opt_state))
        return base * peak * train_lib.to_host(states.plateau.scale)

    def evaluate(self, params, batch_stats, images, labels) -> tuple[np.ndarray, dict]:
        logits = self.predict(params, batch_stats, images)
        sums = train_lib.to_host(train_lib.evaluation_sums(logits, labels))
        return logits, metrics.means(sums)

    def validate(self, states) -> tuple[dict, dict | None]:
        """Validation metrics of the evaluated weights, and of the raw ones when those differ
        (a run keeping a moving average)."""
        _, val = self.evaluate(*train_lib.evaluated_weights(states), self.val_images,
                               self.val_labels)
        if not sweep.keeps_moving_average(self.config):
            return val, None
        return val, self.evaluate(states.params, states.batch_stats, self.val_images,
                                  self.val_labels)[1]

    def check_finite(self, acc: dict, epoch: int, states, ckpts: Checkpoints) -> None:
        bad = np.asarray(acc["nonfinite_step"])
        if (bad >= 0).any():
            member = int(np.argmax(bad >= 0))
            step = int(bad[member])
            kept = ckpts.steps()[-1] if ckpts.steps() else None
            raise TrainingDiverged(
                f"the training loss became NaN or infinite at epoch {epoch + 1}, step "
                f"{step - epoch * self.steps_per_epoch + 1} (global step {step + 1}, seed "
                f"{seeds_of(self.config)[member]}{_setting_of(self.config, member)}, learning rate "
                f"{self.learning_rates(states)[member]:.3g}); nothing was saved from this epoch "
                f"(latest good checkpoint: {kept}); lower --learning-rate or set "
                f"--config.optimizer.grad_clip_norm")

    def run_epoch(self, states, acc, position: Position, interrupt: Interrupt, ckpts):
        """Trains from `position` to the end of its epoch, or until interrupted."""
        epoch = position.epoch
        perms = self.permutations(epoch)
        states, acc = self.layout.put_members((states, acc))
        first_global = epoch * self.steps_per_epoch
        if self.mode == "scan":
            start = position.step_in_epoch  # > 0 only resuming a loop-mode checkpoint (from a CPU)
            span = self.compiled if start == 0 else functools.partial(
                self.span, length=self.steps_per_epoch - start)
            states, acc = span(states, acc, self.images, self.labels, perms, start,
                               first_global + start, self.keys["dropout"])
            return states, acc, self.steps_per_epoch
        bar = tqdm.tqdm(total=self.steps_per_epoch, initial=position.step_in_epoch,
                        desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False,
                        disable=self.quiet or not sys.stderr.isatty(), dynamic_ncols=True)
        with bar:
            for i in range(position.step_in_epoch, self.steps_per_epoch):
                states, acc = self.compiled(states, acc, self.images, self.labels, perms, i,
                                            first_global + i, self.keys["dropout"])
                bar.update()
                if (i + 1) % PROGRESS_EVERY == 0 or interrupt.requested:
                    host = train_lib.to_host(acc)
                    self.check_finite(host, epoch, states, ckpts)
                    m = metrics.means(host)
                    bar.set_postfix(loss=f"{m['loss'].mean():.4f}",
                                    acc=f"{m['accuracy'].mean():.2%}")
                if interrupt.requested:
                    return states, acc, i + 1
        return states, acc, self.steps_per_epoch


def _setting_of(config: ml_collections.ConfigDict, member: int) -> str:
    """`, setting lr=...` of a sweep's member, for messages."""
    if not sweep.is_sweep(config):
        return ""
    values = sweep.settings(config)[sweep.member_settings(config)[member]]
    return f", setting {report.setting_text(values)}"


def _meta(config, dataset, environment_info, num_params) -> dict[str, Any]:
    return {"format": 1, "model": config.model.name, "config": config_to_json(config),
            "class_names": list(dataset.class_names), "param_count": num_params,
            "seeds": seeds_of(config),
            "data": {"mean": dataset.mean, "std": dataset.std, "source": dataset.source,
                     "train_size": len(dataset.train), "val_size": len(dataset.val),
                     "test_size": len(dataset.test)},
            "environment": environment_info}


def _print(quiet: bool, *args) -> None:
    if not quiet:
        print(*args, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       quiet: bool = False, command: str = "", mesh: str = "") -> dict[str, Any]:
    """Trains (or resumes) the run in `workdir`, then tests its best parameters; the summary.

    `mesh` is `--mesh` (e.g. `data:4,seeds:2`; empty: the default of `sharding.mesh_shape`). With
    several processes only process 0 prints and writes files other than checkpoints. A workdir
    made here and left empty by a failure is removed. One run at a time writes a workdir
    (`locking.py`): a second is refused.
    """
    workdir = Path(workdir)
    with removed_if_left_empty(workdir):
        config_lib.validate(config)
        num_members = len(seeds_of(config))
        layout = sharding.make_layout(mesh, num_members)
        layout.check(config.batch_size, num_members)
        ensure_writable(workdir)
        with locking.exclusive(workdir, enabled=sharding.is_primary()):
            return _train_and_evaluate(config, workdir, layout,
                                       quiet or not sharding.is_primary(), command)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path,
                        layout: sharding.Layout, quiet: bool, command: str) -> dict[str, Any]:
    num_members = len(seeds_of(config))
    dataset = data.load_for_config(config)
    if config.batch_size > len(dataset.train):
        raise ConfigError(f"batch size {config.batch_size} exceeds the {len(dataset.train)} "
                          f"training images; lower --batch-size")
    parts = build(config, len(dataset.train))
    memory = check_memory(config, parts, dataset, layout)
    states = initial_states(config, parts)
    num_params = param_count(jax.tree.map(lambda x: x[0], states.params))
    states = layout.put_members(states)
    env = environment() | layout.record(config.batch_size)
    meta = _meta(config, dataset, env, num_params)
    meta["command"] = command
    trainer = Trainer(config, workdir, dataset, parts, quiet, layout)
    _print(quiet, f"model {config.model.name}: {num_params:,} parameters | seeds "
                  f"{seeds_of(config)} | {env['device_count']} x {env['device_kind']} "
                  f"({env['platform']}), {env['process_count']} process(es) | mesh "
                  f"{layout.describe_shape()}, batch {config.batch_size} = "
                  f"{env['per_device_batch']} per device | data {dataset.source}: "
                  f"{len(dataset.train)} train, {len(dataset.val)} val, {len(dataset.test)} test | "
                  f"{trainer.mode} mode | workdir {workdir}")
    if sweep.is_sweep(config):
        _print(quiet, f"sweep: {len(sweep.settings(config))} settings x {config.num_seeds} seeds "
                      f"= {num_members} members ({', '.join(config.sweep)}) | {memory}")
    with Checkpoints(workdir, config.checkpoints_to_keep) as ckpts:
        states, position = _resume(ckpts, config, workdir, states, quiet)
        ensure_space(workdir, states, config.checkpoints_to_keep + 1 - len(ckpts.steps()))
        if sharding.is_primary():
            (workdir / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        acc = train_lib.init_accumulator(num_members)
        if position.partial:
            acc = jax.tree.map(jnp.asarray, {k: np.asarray(v, acc[k].dtype)
                                             for k, v in position.partial.items()})
        trainer.compile(states, acc)
        _print(quiet, f"compiled the train step in {trainer.compile_seconds:.1f}s")
        settings = sweep.member_settings(config) if sweep.is_sweep(config) else None
        with tensorboard.EpochWriter(workdir, seeds_of(config), read_history(workdir), quiet,
                                     settings) as board:
            states = _epochs(trainer, ckpts, states, acc, position, meta, board)
    return _finish(trainer, states, meta, workdir, quiet)


def _resume(ckpts: Checkpoints, config, workdir: Path, states, quiet: bool):
    if not ckpts.steps():
        truncate_metrics(workdir, 0)  # lines of a run killed before its first checkpoint
        return states, Position()

    def template_for(stored: dict[str, Any]):
        if stored.get("weights_only"):
            raise CheckpointError(f"workdir {workdir} is a release of trained weights "
                                  f"(scripts/export.py), which cannot resume training; train in "
                                  f"another --workdir")
        check_resumable(stored["config"], config, workdir)
        return states

    step, states, stored = ckpts.restore(template_for)
    position = Position(**stored["position"])
    truncate_metrics(workdir, position.epoch)
    _print(quiet, f"resumed from checkpoint step {step}: epoch {position.epoch}, "
                  f"step {position.step_in_epoch} of the next")
    return states, position


def _epochs(trainer: Trainer, ckpts: Checkpoints, states, acc, position: Position, meta,
            board: tensorboard.EpochWriter):
    config, workdir = trainer.config, trainer.workdir
    with Interrupt() as interrupt:
        while position.epoch < config.epochs and train_lib.to_host(states.active).any():
            start = time.perf_counter()
            states, acc, done = trainer.run_epoch(states, acc, position, interrupt, ckpts)
            host = train_lib.to_host(acc)
            trainer.check_finite(host, position.epoch, states, ckpts)
            global_step = position.epoch * trainer.steps_per_epoch + done
            if done < trainer.steps_per_epoch:  # interrupted inside the epoch
                position = Position(position.epoch, done, {k: v.tolist() for k, v in host.items()})
                ckpts.save(global_step, states, meta | {"position": dataclasses.asdict(position)})
                ckpts.wait()
                raise KeyboardInterrupt(_saved_and_how_to_resume(global_step, meta, workdir))
            train_seconds = time.perf_counter() - start
            images = int(host["count"].sum())
            val, raw_val = trainer.validate(states)
            active = train_lib.to_host(states.active)
            lr = trainer.learning_rates(states)
            states = trainer.end_of_epoch(
                states, *trainer.layout.put_members((jnp.asarray(val["accuracy"], jnp.float32),
                                                     jnp.asarray(val["loss"], jnp.float32))),
                position.epoch + 1)
            position = Position(position.epoch + 1)
            train = metrics.means(host)
            record = epoch_record(position.epoch, train, val, lr, active,
                                  time.perf_counter() - start, train_seconds, images, raw_val)
            if sweep.is_sweep(config):
                record["settings"] = sweep.epoch_groups(config, {
                    "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                    "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                    "learning_rate": lr, "active_members": active})
            # The line goes first: a kill before the save commits resumes from the previous
            # checkpoint and drops it, while a checkpoint never lacks its line.
            if sharding.is_primary():
                with open(workdir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            board.write(record)
            ckpts.save(global_step, states, meta | {"position": dataclasses.asdict(position)})
            _print(trainer.quiet, _format_epoch(record, config.epochs))
            acc = train_lib.init_accumulator(trainer.num_members)
            if interrupt.requested:
                ckpts.wait()
                raise KeyboardInterrupt(_saved_and_how_to_resume(global_step, meta, workdir))
    return states


def _saved_and_how_to_resume(step: int, meta: dict[str, Any], workdir: Path) -> str:
    command = meta["command"]
    if command and "--workdir" not in command:
        command += f" --workdir={shlex.quote(str(workdir))}"
    return (f"saved checkpoint step {step} in {workdir}; resume with: {command}" if command else
            f"saved checkpoint step {step} in {workdir}; resume by training in the same workdir")


def _finish(trainer: Trainer, states, meta, workdir: Path, quiet: bool) -> dict:
    """Tests the best parameters of every member (and their ensemble); writes summary.json.

    A sweep's summary groups the members by setting, and its ensemble is the best setting's."""
    test = trainer.dataset.test
    images, labels = trainer.layout.put_host(test.images), trainer.layout.put_host(test.labels)
    logits, result = trainer.evaluate(states.best_params, states.best_batch_stats, images, labels)
    history = read_history(workdir)
    summary = {
        "model": meta["model"], "param_count": meta["param_count"], "seeds": meta["seeds"],
        "epochs_completed": len(history),
        "best_epoch": train_lib.to_host(states.best_epoch).tolist(),
        "best_val_accuracy": train_lib.to_host(states.best_accuracy).tolist(),
        "test_accuracy": result["accuracy"].tolist(), "test_loss": result["loss"].tolist(),
        "test_accuracy_stats": metrics.describe(result["accuracy"]),
        "compile_seconds": trainer.compile_seconds,
        "train_seconds": float(sum(r["train_seconds"] for r in history)),
        "seconds": float(sum(r["seconds"] for r in history)),
        "images_per_second": float(np.median([r["images_per_second"] for r in history]))
        if history else None,
        "epoch_mode": trainer.mode, "environment": meta["environment"], "command": meta["command"],
    }
    if sweep.keeps_moving_average(trainer.config):
        _, raw = trainer.evaluate(states.params, states.batch_stats, images, labels)
        summary["latest_raw_weights_test_accuracy"] = raw["accuracy"].tolist()
    members = list(range(trainer.num_members))
    if sweep.is_sweep(trainer.config):
        summary["sweep"] = sweep.summarize(trainer.config, np.asarray(summary["best_val_accuracy"]),
                                           result["accuracy"], np.asarray(summary["best_epoch"]))
        members = summary["sweep"]["settings"][summary["sweep"]["best"]["setting"]]["members"]
    if len(members) > 1:
        probs = metrics.ensemble_probabilities(train_lib.to_host(logits)[members])
        summary["ensemble"] = {"members": members,
            "test_accuracy": float((probs.argmax(-1) == test.labels).mean()),
            "test_loss": float(-np.log(probs[np.arange(len(test.labels)), test.labels]
                                       + 1e-12).mean())}
    if not sharding.is_primary():
        return summary
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if "sweep" in summary:
        plots.save(plots.sweep_figure(summary["sweep"], meta["model"]), workdir / "sweep.png")
        (workdir / "sweep.md").write_text(report.sweep_report(summary, "sweep.png"))
        _print(quiet, report.sweep_table(summary["sweep"]))
        print(report.sweep_headline(summary), flush=True)
        _print(quiet, f"summary: {workdir / 'summary.json'}; table and figure: "
                      f"{workdir / 'sweep.md'}")
        return summary
    stats = summary["test_accuracy_stats"]
    line = f"test accuracy of the best checkpoint: {stats['mean']:.2%}"
    if trainer.num_members > 1:
        line += (f" ± {stats['std']:.2%} (mean ± std over {stats['n']} seeds; min "
                 f"{stats['min']:.2%}, max {stats['max']:.2%}); ensemble "
                 f"{summary['ensemble']['test_accuracy']:.2%}")
    print(line, flush=True)
    _print(quiet, f"summary: {workdir / 'summary.json'}")
    return summary
