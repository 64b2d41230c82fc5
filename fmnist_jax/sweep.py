"""Sweeps: a grid of hyperparameter settings x seeds, trained as the members of one run.

`--sweep=optimizer.learning_rate=1e-3,2e-3 --sweep=label_smoothing=0,0.1 --seeds=3` makes
2 x 2 settings x 3 seeds = 12 members, vmapped in one compiled program like the seeds of a run
(train.py). Members are setting-major: member `k * num_seeds + j` is setting `k` with seed
`seed + j`, the settings being the grid in the order the fields were given (first field outermost).

Only fields that change numbers, never shapes or code, can vary: each member carries its own values
as arrays, its optimizer hyperparameters in its optimizer state (`optax.inject_hyperparams`, see
optim.py) and the others in `TrainState.hparams`. The sweep is stored in the config
(`config.sweep`), so checkpoints, resumption and evaluation rebuild the same members.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from fmnist_jax import config as config_lib
from fmnist_jax import metrics, optim
from fmnist_jax.errors import ConfigError

OPTIMIZER = "optimizer."
ALL_OPTIMIZERS = config_lib.OPTIMIZERS
# The fields that can vary per member, and the optimizers that read them.
VARIABLE = {
    "optimizer.learning_rate": ALL_OPTIMIZERS,
    "optimizer.weight_decay": ("adamw",),
    "optimizer.momentum": ("sgd",),
    "optimizer.b1": ("adam", "adamw"),
    "optimizer.b2": ("adam", "adamw"),
    "optimizer.grad_clip_norm": ALL_OPTIMIZERS,
    "label_smoothing": ALL_OPTIMIZERS,
    "ema_decay": ALL_OPTIMIZERS,
}
assert {f[len(OPTIMIZER):] for f in VARIABLE if f.startswith(OPTIMIZER)} == set(optim.HYPERPARAMS)
CAN_VARY = ", ".join(VARIABLE)
MAX_MEMBERS = 4096  # settings x seeds of one run: one compiled program, one metrics line per epoch
ACTIVATION_FACTOR = 3  # an activation's value, its gradient and one temporary, per layer output


def _parse(spec: str) -> tuple[str, tuple[float, ...]]:
    """`'FIELD=V1,V2'` as `(FIELD, (V1, V2))`, refusing a field that cannot vary per member."""
    field, sep, text = spec.partition("=")
    field = field.strip().removeprefix("config.")
    if field not in VARIABLE:
        raise ConfigError(f"--sweep={spec}: {field or '(no field)'} cannot vary between the "
                          f"members of one run; the fields that can: {CAN_VARY}")
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not sep or not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--sweep={spec} needs numbers: --sweep={field}=V1,V2,...")
    if len(set(values)) < len(values):
        raise ConfigError(f"--sweep={spec} repeats a value; give each value once")
    return field, values


def apply(config: ml_collections.ConfigDict, specs: Sequence[str]) -> None:
    """Sets `config.sweep` from the `--sweep` flags, after checking every setting is valid."""
    grid = {}
    for field, values in map(_parse, specs):
        if field in grid:
            raise ConfigError(f"--sweep={field} is given twice; give all its values in one flag")
        readers = VARIABLE[field]
        if config.optimizer.name not in readers:
            raise ConfigError(f"--sweep={field}: the {config.optimizer.name} optimizer does not "
                              f"use it (only {', '.join(readers)}); set "
                              f"--config.optimizer.name={readers[0]} or sweep another field")
        grid[field] = values
    members = math.prod(len(values) for values in grid.values()) * config.num_seeds
    if members > MAX_MEMBERS:
        raise ConfigError(f"--sweep: {' x '.join(str(len(v)) for v in grid.values())} settings x "
                          f"{config.num_seeds} seed(s) = {members:,} members, more than the "
                          f"{MAX_MEMBERS:,} one run holds; sweep fewer values or seeds, or split "
                          f"the grid over several runs")
    for field, values in grid.items():  # each field is checked on its own, so each value once
        for value in values:
            try:
                config_lib.validate(_plain(config, {field: value}))
            except ConfigError as e:
                raise ConfigError(f"--sweep={field} value {value!r}: {e}") from None
    with config.ignore_type():
        config.sweep = tuple(f"{f}={','.join(map(repr, v))}" for f, v in grid.items())


def grid(config: ml_collections.ConfigDict) -> dict[str, tuple[float, ...]]:
    """`{field: values}` of the run's sweep, in the order given; empty for a plain run."""
    return dict(_parse(spec) for spec in config.get("sweep", ()))


def is_sweep(config: ml_collections.ConfigDict) -> bool:
    return bool(config.get("sweep", ()))


def settings(config: ml_collections.ConfigDict) -> list[dict[str, float]]:
    """Every setting `{field: value}` of the grid, first field outermost (`[{}]` without a sweep)."""
    fields = grid(config)
    return [dict(zip(fields, values)) for values in itertools.product(*fields.values())]


def member_seeds(config: ml_collections.ConfigDict) -> list[int]:
    """The seed of every member, setting-major."""
    seeds = range(config.seed, config.seed + config.num_seeds)
    return [seed for _ in settings(config) for seed in seeds]


def member_settings(config: ml_collections.ConfigDict) -> list[int]:
    """The setting index of every member."""
    return [k for k in range(len(settings(config))) for _ in range(config.num_seeds)]


def _plain(config: ml_collections.ConfigDict,
           values: dict[str, float]) -> ml_collections.ConfigDict:
    """A plain run's copy of `config` with the sweep's fields set to `values`."""
    single = config.copy_and_resolve_references()
    for field, value in values.items():
        config_lib.apply_override(single, field, repr(value))
    with single.ignore_type():
        single.sweep = ()
    return single


def setting_config(config: ml_collections.ConfigDict, k: int,
                   seed: int | None = None) -> ml_collections.ConfigDict:
    """The plain run's config of setting `k` (all its seeds, or `seed` alone)."""
    single = _plain(config, settings(config)[k])
    if seed is not None:
        single.seed, single.num_seeds = seed, 1
    return single


def short(field: str) -> str:
    return field.removeprefix(OPTIMIZER)


def member_hparams(config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """Each member's values `[S]`: the optimizer's (`optim.HYPERPARAMS` names) and the train
    step's (`label_smoothing`, `ema_decay`); empty without a sweep."""
    every = settings(config)
    chosen = [every[k] for k in member_settings(config)]
    optimizer, step = {}, {}
    for field in grid(config):
        values = np.array([s[field] for s in chosen], np.float32)
        if field.startswith(OPTIMIZER):
            optimizer[short(field)] = values
        else:
            step[field] = values
    return optimizer, step


def per_member_optimizer(config: ml_collections.ConfigDict) -> bool:
    return any(field.startswith(OPTIMIZER) for field in grid(config))


def keeps_moving_average(config: ml_collections.ConfigDict) -> bool:
    """Whether the run keeps a moving average of the weights: some member's decay is > 0."""
    return config.ema_decay > 0 or any(v > 0 for v in grid(config).get("ema_decay", ()))


# Results grouped by setting.


def group(config: ml_collections.ConfigDict, values: np.ndarray) -> list[np.ndarray]:
    """Per-member `values` `[S, ...]` split into one array per setting (its seeds)."""
    values = np.asarray(values)
    return [values[k * config.num_seeds:(k + 1) * config.num_seeds]
            for k in range(len(settings(config)))]


def epoch_groups(config: ml_collections.ConfigDict,
                 columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One record per setting of an epoch's per-member columns: each one's mean and std over the
    setting's seeds (the std only with several)."""
    records = [{"setting": k, **values} for k, values in enumerate(settings(config))]
    for name, values in columns.items():
        for record, part in zip(records, group(config, values)):
            part = np.asarray(part, np.float64)
            record[name] = float(part.mean())
            if part.size > 1:
                record[f"{name}_std"] = float(part.std(ddof=1))
    return records


def best_setting(per_setting_val: Sequence[dict[str, Any]]) -> int:
    """The setting with the best mean validation accuracy (the first of equals)."""
    return int(np.argmax([s["val_accuracy"]["mean"] for s in per_setting_val]))


def summarize(config: ml_collections.ConfigDict, best_val_accuracy: np.ndarray,
              test_accuracy: np.ndarray, best_epoch: np.ndarray) -> dict[str, Any]:
    """summary.json's `sweep`: every setting's validation accuracy (mean ± std over its seeds, of
    each member's best epoch) and test accuracy; the best setting, chosen on validation only."""
    seeds = member_seeds(config)
    records = []
    for k, (values, val, test, epochs) in enumerate(zip(
            settings(config), group(config, best_val_accuracy), group(config, test_accuracy),
            group(config, best_epoch))):
        members = list(range(k * config.num_seeds, (k + 1) * config.num_seeds))
        records.append({"setting": k, "values": values, "members": members,
                        "seeds": [seeds[m] for m in members], "best_epoch": epochs.tolist(),
                        "val_accuracy": metrics.describe(val),
                        "test_accuracy": metrics.describe(test)})
    best = best_setting(records)
    chosen = records[best]
    member = chosen["members"][int(np.argmax(group(config, best_val_accuracy)[best]))]
    return {"fields": list(grid(config)), "num_seeds": config.num_seeds, "settings": records,
            "best": {"setting": best, "values": chosen["values"], "chosen_on": "validation",
                     "val_accuracy": chosen["val_accuracy"],
                     "test_accuracy": chosen["test_accuracy"],
                     "best_member": member, "best_member_seed": seeds[member]}}


# Memory: how many members fit.


def available_bytes(device: jax.Device) -> int:
    """Memory free for a run: the accelerator's free memory, or the host's available RAM."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def member_bytes(abstract_state: Any, model: Any, batch_size: int) -> tuple[int, int]:
    """One member's state bytes (of the stacked `abstract_state`), and an estimate of its training
    activations: every layer output of one batch (shapes from `jax.eval_shape`) times
    `ACTIVATION_FACTOR`."""
    members = abstract_state.step.shape[0]
    state = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state)) // members
    member = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                          {"params": abstract_state.params,
                           "batch_stats": abstract_state.batch_stats})
    images = jax.ShapeDtypeStruct((batch_size, 28, 28, 1), np.float32)

    def forward(variables, x):
        return model.apply(variables, x, train=True, capture_intermediates=True,
                           mutable=["intermediates", "batch_stats"],
                           rngs={"dropout": jax.random.key(0)})

    _, captured = jax.eval_shape(forward, member, images)
    outputs = jax.tree.leaves(captured["intermediates"])
    activations = ACTIVATION_FACTOR * sum(x.size * x.dtype.itemsize for x in outputs)
    return state, activations


def check_memory(abstract_state: Any, model: Any, batch_size: int, data_bytes: int,
                 members_per_device: int, device: jax.Device) -> str:
    """Refuses members that cannot fit the memory of one device (the host's RAM on a CPU, whose
    devices share it: give them all), before anything is compiled; else a line saying how many
    would fit."""
    state, activations = member_bytes(abstract_state, model, batch_size)
    per_member = state + activations
    free = available_bytes(device)
    fit = max((free - data_bytes) // per_member, 0)
    where = "host RAM" if device.platform == "cpu" else f"{device.device_kind} memory per device"
    estimate = (f"about {_gib(per_member)} per member ({_gib(state)} state + {_gib(activations)} "
                f"activations, estimated) and {_gib(data_bytes)} of data, {_gib(free)} of "
                f"{where} available")
    if members_per_device > fit:
        raise ConfigError(f"{members_per_device} members do not fit in memory: {estimate}, so "
                          f"about {fit} fit; sweep fewer values or seeds, or lower --batch-size")
    return f"memory: {members_per_device} members, about {fit} would fit ({estimate})"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
