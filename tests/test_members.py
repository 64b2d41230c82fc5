"""The ways several members can train (member_strategy, conv_impl, compute_dtype) give the same
parameters as the default, so that `auto` may pick any of them per backend."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax import config as config_lib
from fmnist_jax import run
from fmnist_jax import train as train_lib
from fmnist_jax.errors import ConfigError

from conftest import synthetic_split

# on one xdist worker: every test reads the default's members from the cache of `trained`
pytestmark = pytest.mark.xdist_group("test_members")
NUM_MEMBERS, STEPS, BATCH = 3, 2, 16
DEFAULT = {}
CANDIDATES = {
    "map": {"member_strategy": "map"},
    "vmap-xla": {"member_strategy": "vmap", "model.conv_impl": "xla"},
    "map-xla": {"member_strategy": "map", "model.conv_impl": "xla"},
}  # conv_impl=matmul is the default's on a CPU (auto); CANDIDATES then compare it with xla


@functools.lru_cache
def trained(fields: tuple[tuple[str, str], ...]):
    """Parameters, batch statistics and epoch sums of a small cnn's members after a few steps."""
    config = config_lib.model_config("cnn")
    config.model.conv_features, config.model.dense_features = (4, 8), (16,)
    config.batch_size, config.num_seeds = BATCH, NUM_MEMBERS
    for field, value in fields:
        config_lib.apply_override(config, field, value)
    parts = run.build(config, STEPS * BATCH)
    states = run.initial_states(config, parts)
    split = synthetic_split(STEPS * BATCH)
    keys = train_lib.stacked_keys(run.seeds_of(config))
    span = train_lib.make_train_span(train_lib.make_train_step(0.3, 0.35), NUM_MEMBERS,
                                     member_strategy=config.member_strategy)
    perms = train_lib.epoch_permutations(keys["data"], 0, STEPS * BATCH, BATCH)
    acc = train_lib.init_accumulator(NUM_MEMBERS)
    for i in range(STEPS):  # one compiled step, as epoch_mode=loop runs it
        states, acc = span(states, acc, jnp.asarray(split.images), jnp.asarray(split.labels),
                           perms, i, i, keys["dropout"], length=1)
    return (states.params, states.batch_stats), acc


@pytest.mark.parametrize("name", CANDIDATES)
def test_every_candidate_trains_the_members_as_the_default_does(name):
    got, got_acc = trained(tuple(CANDIDATES[name].items()))
    expected, expected_acc = trained(tuple(DEFAULT.items()))
    chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(got_acc, expected_acc, rtol=1e-4, atol=1e-5)
    members = jax.tree.leaves(expected[0])[0]
    assert not np.allclose(members[0], members[1])  # the members differ: the check has teeth


def test_bfloat16_members_train_to_a_close_loss():
    for strategy in ("vmap", "map"):
        (params, _), acc = trained((("member_strategy", strategy), ("compute_dtype", "bfloat16")))
        _, expected_acc = trained(())
        chex.assert_tree_all_finite(params)
        np.testing.assert_allclose(acc["loss"], expected_acc["loss"], rtol=0.05)


def test_member_strategy_resolution():
    assert train_lib.resolve_member_strategy("map", 1) == "single"
    assert train_lib.resolve_member_strategy("map", 4) == "map"
    assert train_lib.resolve_member_strategy("auto", 4) == \
        train_lib.AUTO_MEMBER_STRATEGY[jax.default_backend()]
    assert train_lib.AUTO_MEMBER_STRATEGY["cpu"] == "vmap"  # nothing slower on CPU than before


def test_unknown_member_strategy_is_refused():
    config = config_lib.model_config("cnn")
    config.member_strategy = "pmap"
    with pytest.raises(ConfigError, match="member_strategy 'pmap'; valid: auto, vmap, map"):
        config_lib.validate(config)
