"""Checks that need several devices, run in a process of their own (a test session has already
fixed its device count):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_checks.py OUT.json

runs every check and writes `{check: "ok" or its traceback}` to OUT.json. `tests/test_sharding.py`
runs it; importing this module touches no device, so the tests can share `train_epoch`.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import chex
import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# pylint: disable=wrong-import-position
from conftest import synthetic_split  # noqa: E402
from fmnist_jax import run, sharding  # noqa: E402
from fmnist_jax import train as train_lib  # noqa: E402
from test_train import BATCH, small_config  # noqa: E402

NUM_DEVICES = 8
NUM_TRAIN = 256  # one epoch: 8 steps of BATCH 32
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}  # float32 sums in another order, over 8 SGD steps
CHECKS: dict[str, Callable[[], None]] = {}


def check(fn: Callable[[], None]) -> Callable[[], None]:
    CHECKS[fn.__name__] = fn
    return fn


def train_epoch(config, layout: sharding.Layout | None, length: int = 1):
    """One epoch of `config` on the synthetic split, placed by `layout` (None: one device, as the
    code was before meshes), `length` steps per dispatch (1: the loop, 8: the scan)."""
    states = run.initial_states(config, run.build(config, NUM_TRAIN))
    split = synthetic_split(NUM_TRAIN)
    keys = train_lib.stacked_keys(run.seeds_of(config))
    span = train_lib.make_train_span(train_lib.make_train_step(0.3, 0.35), config.num_seeds,
                                     layout=layout)
    perms = train_lib.epoch_permutations(keys["data"], 0, NUM_TRAIN, BATCH)
    acc = train_lib.init_accumulator(config.num_seeds)
    images, labels, dropout = jnp.asarray(split.images), jnp.asarray(split.labels), keys["dropout"]
    if layout is not None:
        states, acc, dropout = layout.put_members((states, acc, dropout))
        images, labels = layout.put_host(split.images), layout.put_host(split.labels)
        perms = layout.put(perms, layout.permutations)
    for first in range(0, NUM_TRAIN // BATCH, length):
        states, acc = span(states, acc, images, labels, perms, first, first, dropout,
                           length=length)
    return states, acc


@functools.cache
def one_device(num_seeds: int, length: int):
    """The reference: `small_config` with `num_seeds` members trained on one device."""
    return train_epoch(small_config(num_seeds=num_seeds), None, length)


def assert_same_training(config, mesh: str, length: int, shape: dict[str, int]) -> None:
    """`config` (a `small_config`) trained on `mesh` ends where it ends on one device, and its
    states and sums stay placed by members."""
    layout = sharding.make_layout(mesh, config.num_seeds)
    assert dict(layout.mesh.shape) == shape, (mesh, layout.mesh.shape)
    got, got_acc = train_epoch(config, layout, length)
    want, want_acc = one_device(config.num_seeds, length)
    for field in ("params", "batch_stats", "opt_state"):
        chex.assert_trees_all_close(train_lib.to_host(getattr(got, field)),
                                    train_lib.to_host(getattr(want, field)), **TOLERANCE)
    chex.assert_trees_all_close(train_lib.to_host(got_acc), train_lib.to_host(want_acc),
                                **TOLERANCE)
    for leaf in jax.tree.leaves((got, got_acc)):
        assert leaf.sharding.is_equivalent_to(layout.members, leaf.ndim), leaf.sharding


@check
def data_parallel_epoch_equals_one_device() -> None:
    for length in (1, NUM_TRAIN // BATCH):
        assert_same_training(small_config(), "data:8", length, {"seeds": 1, "data": 8})


@check
def seeds_mesh_equals_the_vmapped_run() -> None:
    config = small_config(num_seeds=4)
    assert_same_training(config, "seeds:4,data:1", 1, {"seeds": 4, "data": 1})
    assert_same_training(config, "seeds:4", 1, {"seeds": 4, "data": 2})


@check
def default_mesh_puts_eight_seeds_on_eight_devices() -> None:
    assert_same_training(small_config(num_seeds=8), "", NUM_TRAIN // BATCH,
                         {"seeds": 8, "data": 1})


@check
def data_parallel_step_splits_the_batch_and_all_reduces() -> None:
    """Each device's first layer sees BATCH / 8 rows, and XLA averages across devices."""
    config = small_config()
    layout = sharding.make_layout("data:8", 1)
    states = layout.put_members(run.initial_states(config, run.build(config, NUM_TRAIN)))
    acc = layout.put_members(train_lib.init_accumulator(1))
    keys = train_lib.stacked_keys([0])
    split = synthetic_split(NUM_TRAIN)
    images, labels = layout.put_host(split.images), layout.put_host(split.labels)
    # as `train_epoch` makes them, so the permutations' program is the one already compiled
    perms = layout.put(train_lib.epoch_permutations(keys["data"], 0, NUM_TRAIN, BATCH),
                       layout.permutations)
    keys = layout.put_members(keys)
    span = train_lib.make_train_span(train_lib.make_train_step(0.3, 0.35), 1, layout=layout)
    hlo = span.lower(states, acc, images, labels, perms, 0, 0, keys["dropout"],
                     length=1).compile().as_text()
    assert re.search(rf"f32\[{BATCH // NUM_DEVICES},784\]", hlo), "no per-device batch"
    assert "all-reduce" in hlo, "no all-reduce"


def main(out: str) -> None:
    assert jax.device_count() == NUM_DEVICES, (
        f"{jax.device_count()} devices; set XLA_FLAGS=--xla_force_host_platform_device_count=8")
    results = {}
    for name, fn in CHECKS.items():
        try:
            fn()
            results[name] = "ok"
        except Exception:  # pylint: disable=broad-except  # reported to the test, which fails
            results[name] = traceback.format_exc()
    Path(out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
