"""The state a run starts from: the model, schedule and optimizers a config builds, and the
initial train states of every member (seeds, and sweep settings, stacked)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import optax

from fmnist_jax import data, optim, sharding, sweep
from fmnist_jax import train as train_lib
from fmnist_jax.models import create_model


@dataclasses.dataclass(frozen=True)
class Components:
    """What the config builds before any data is touched."""

    model: Any
    schedule: optax.Schedule
    tx: optax.GradientTransformation
    plateau: optax.GradientTransformationExtraArgs


def build(config: ml_collections.ConfigDict, num_train: int) -> Components:
    steps_per_epoch = num_train // config.batch_size
    per_member = sweep.per_member_optimizer(config)  # then the schedule is a unit one
    schedule = optim.make_schedule(config, steps_per_epoch, unit=per_member)
    return Components(create_model(config.model, config.compute_dtype), schedule,
                      optim.make_optimizer(config, schedule, per_member), optim.make_plateau(config))


def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
    """The seed of every member: SEED..SEED+N-1, for each setting of a sweep (sweep.py)."""
    return sweep.member_seeds(config)


def initial_states(config: ml_collections.ConfigDict, parts: Components) -> train_lib.TrainState:
    keys = train_lib.stacked_keys(seeds_of(config))
    optimizer_hparams, step_hparams = sweep.member_hparams(config)
    states = jax.jit(lambda k: train_lib.create_states(
        parts.model, parts.tx, parts.plateau, k, sweep.keeps_moving_average(config),
        optimizer_hparams, step_hparams))(keys["init"])
    # jit may hand one buffer to equal outputs (params and best_params); donation needs distinct ones.
    return jax.tree.map(lambda x: x.copy(), states)


def check_memory(config: ml_collections.ConfigDict, parts: Components, dataset: data.Dataset,
                 layout: sharding.Layout) -> str:
    """`sweep.check_memory` for this run's members, from shapes only (nothing is allocated)."""
    abstract = jax.eval_shape(lambda: initial_states(config, parts))
    device = layout.mesh.devices.flat[0]
    members, batch = len(seeds_of(config)), config.batch_size
    if device.platform != "cpu":  # a CPU's devices share the host's memory: count them all
        members, batch = -(-members // layout.seeds_size), layout.per_device_batch(batch)
    data_bytes = sum(part.images.nbytes + part.labels.nbytes
                     for part in (dataset.train, dataset.val, dataset.test))
    return sweep.check_memory(abstract, parts.model, batch, data_bytes, members, device)
