"""Optimizers and learning-rate schedules from the config, all from optax."""

from __future__ import annotations

import jax
import ml_collections
import optax
from optax import contrib


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The base learning rate per step; reduce-on-plateau scales it further (see `make_plateau`)."""
    lr = config.optimizer.learning_rate
    total = config.epochs * steps_per_epoch
    name = config.schedule.name
    if name == "warmup_cosine":
        warmup = int(config.schedule.warmup_epochs * steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, max(total, warmup + 1), lr * config.schedule.end_factor)
    if name == "onecycle":
        return optax.cosine_onecycle_schedule(total, lr)
    return optax.constant_schedule(lr)  # constant, plateau


def _decay_mask(params):
    """Weight decay on kernels only, never on biases or norm scales."""
    return jax.tree.map(lambda x: x.ndim > 1, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
    opt = config.optimizer
    if opt.name == "adamw":
        base = optax.adamw(schedule, weight_decay=opt.weight_decay, mask=_decay_mask)
    elif opt.name == "sgd":
        base = optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov)
    else:
        base = optax.adam(schedule)
    if opt.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), base)
    return base


def make_plateau(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
    """optax's reduce-on-plateau; updated once per epoch with the validation metric.

    Its `scale` multiplies every update. Under schedules other than `plateau` it is never updated,
    so the scale stays 1.
    """
    s = config.schedule
    return contrib.reduce_on_plateau(factor=s.plateau_factor, patience=s.plateau_patience,
                                     min_scale=s.plateau_min_factor, accumulation_size=1)
