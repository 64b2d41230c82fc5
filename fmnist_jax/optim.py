"""Optimizers and learning-rate schedules from the config, all from optax."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax import contrib

# The optimizer's numeric fields, as the hyperparameters of `optax.inject_hyperparams`: a sweep
# (sweep.py) gives each member its own values in its optimizer state.
HYPERPARAMS = ("learning_rate", "weight_decay", "momentum", "b1", "b2", "grad_clip_norm")


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                  unit: bool = False) -> optax.Schedule:
    """The base learning rate per step; reduce-on-plateau scales it further (see `make_plateau`).

    With `unit`, the schedule of a peak of 1, which a member's own learning rate multiplies (every
    schedule here is proportional to its peak)."""
    lr = 1.0 if unit else config.optimizer.learning_rate
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


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                   per_member: bool = False) -> optax.GradientTransformation:
    """The configured optimizer; with `per_member`, wrapped in `optax.inject_hyperparams` so that
    its numeric fields (`HYPERPARAMS`) live in the optimizer state, where `set_hyperparams` gives
    each member its own, and `schedule` is the unit schedule its learning rate multiplies."""
    opt = config.optimizer
    if not per_member:
        base = _optimizer(opt.name, opt.nesterov, schedule, opt.weight_decay,
                          opt.momentum or None, opt.b1, opt.b2)
        if opt.grad_clip_norm > 0:
            return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), base)
        return base

    def factory(learning_rate, weight_decay, momentum, b1, b2, grad_clip_norm):
        rate = lambda count: learning_rate * schedule(count)
        clip = jnp.where(grad_clip_norm > 0, grad_clip_norm, jnp.inf)  # 0: off, as above
        return optax.chain(optax.clip_by_global_norm(clip),
                           _optimizer(opt.name, opt.nesterov, rate, weight_decay, momentum, b1, b2))

    return optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(
        **{name: float(opt[name]) for name in HYPERPARAMS})


def _optimizer(name: str, nesterov: bool, rate: optax.Schedule, weight_decay, momentum, b1, b2):
    if name == "adamw":
        return optax.adamw(rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=_decay_mask)
    if name == "sgd":
        return optax.sgd(rate, momentum=momentum, nesterov=nesterov)
    return optax.adam(rate, b1=b1, b2=b2)


def set_hyperparams(opt_state, values: Mapping[str, jax.Array]):
    """`opt_state` of an optimizer made `per_member`, with `values` (`{name: scalar}`) in place of
    its configured hyperparameters."""
    hyperparams = {**opt_state.hyperparams,
                   **{k: jnp.asarray(v, jnp.float32) for k, v in values.items()}}
    return opt_state._replace(hyperparams=hyperparams)


def peak_learning_rates(opt_state) -> jax.Array | float:
    """Each member's own learning rate (that multiplies the unit schedule), or 1 when the run has
    one for all (already in its schedule)."""
    hyperparams = getattr(opt_state, "hyperparams", None)
    return 1.0 if hyperparams is None else hyperparams["learning_rate"]


def make_plateau(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
    """optax's reduce-on-plateau; updated once per epoch with the validation metric.

    Its `scale` multiplies every update. Under schedules other than `plateau` it is never updated,
    so the scale stays 1.
    """
    s = config.schedule
    return contrib.reduce_on_plateau(factor=s.plateau_factor, patience=s.plateau_patience,
                                     min_scale=s.plateau_min_factor, accumulation_size=1)
