"""The train step, the compiled spans, N members at once, epoch-end bookkeeping, checkpoints."""

from __future__ import annotations

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax import config as config_lib
from fmnist_jax import metrics, run
from fmnist_jax import train as train_lib
from fmnist_jax.checkpointing import Checkpoints

from conftest import synthetic_split

BATCH = 32


def small_config(**overrides):
    """A small mlp with BatchNorm, trained by SGD.

    Not Adam: its first steps turn the ~1e-9 float noise in the gradient of a bias that feeds
    BatchNorm (mathematically zero) into updates of +-lr, which no tolerance could compare.
    """
    config = config_lib.model_config("mlp")
    config.model.hidden = (32,)
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.batch_size = BATCH
    config.epochs = 2
    for field, value in overrides.items():
        config_lib.apply_override(config, field, str(value))
    return config


def setup(config, num_train=256):
    """Components, initial stacked states and a learnable synthetic split."""
    parts = run.build(config, num_train)
    states = run.initial_states(config, parts)
    return parts, states, synthetic_split(num_train)


def run_steps(config, num_steps: int, num_train=256):
    """Trains `num_steps` steps of epoch 0 in loop mode; the stacked states and accumulator."""
    parts, states, split = setup(config, num_train)
    keys = train_lib.stacked_keys(run.seeds_of(config))
    span = train_lib.make_train_span(train_lib.make_train_step(0.3, 0.35), config.num_seeds)
    perms = train_lib.epoch_permutations(keys["data"], 0, num_train, BATCH)
    acc = train_lib.init_accumulator(config.num_seeds)
    images, labels = jnp.asarray(split.images), jnp.asarray(split.labels)
    for i in range(num_steps):
        states, acc = span(states, acc, images, labels, perms, i, i, keys["dropout"], length=1)
    return states, acc


class TrainStepTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_train_step_same_with_and_without_jit(self):
        config = small_config()
        parts, states, split = setup(config)
        state = jax.tree.map(lambda x: x[0], states)
        batch = {"image": jnp.asarray(split.images[:BATCH]),
                 "label": jnp.asarray(split.labels[:BATCH])}
        step = self.variant(train_lib.make_train_step(0.3, 0.35))
        new_state, metrics = step(state, batch, jax.random.key(0))
        reference, ref_metrics = jax.jit(train_lib.make_train_step(0.3, 0.35))(
            state, batch, jax.random.key(0))
        chex.assert_trees_all_close(new_state.params, reference.params, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(metrics, ref_metrics, rtol=1e-5)
        chex.assert_tree_all_finite(new_state.params)
        assert int(new_state.step) == 1 and int(metrics["count"]) == BATCH
        assert not jax.tree.all(jax.tree.map(jnp.array_equal, new_state.params, state.params))


def test_loss_falls_when_overfitting_one_batch():
    config = small_config()
    parts, states, split = setup(config)
    state = jax.tree.map(lambda x: x[0], states)
    batch = {"image": jnp.asarray(split.images[:BATCH]), "label": jnp.asarray(split.labels[:BATCH])}
    step = jax.jit(train_lib.make_train_step(0.3, 0.35))
    losses = []
    for i in range(30):
        state, m = step(state, batch, jax.random.key(i))
        losses.append(float(m["loss"]) / BATCH)
    assert losses[-1] < 0.2 * losses[0], losses


def test_stacked_state_shapes():
    config = small_config(num_seeds=3)
    _, states, _ = setup(config)
    chex.assert_shape(states.params["DenseBlock_0"]["Dense_0"]["kernel"], (3, 784, 32))
    chex.assert_shape(states.best_accuracy, (3,))
    chex.assert_shape(states.plateau.scale, (3,))


def test_members_are_independent_and_deterministic():
    states, _ = run_steps(small_config(num_seeds=2), 3)
    again, _ = run_steps(small_config(num_seeds=2), 3)
    chex.assert_trees_all_equal(states.params, again.params)
    kernel = states.params["DenseBlock_0"]["Dense_0"]["kernel"]
    assert not np.allclose(kernel[0], kernel[1])


def test_member_k_equals_the_single_run_of_seed_s_plus_k():
    group, group_acc = run_steps(small_config(num_seeds=3, seed=5), 4)
    single, single_acc = run_steps(small_config(num_seeds=1, seed=7), 4)
    member = jax.tree.map(lambda x: x[2:3], group)
    chex.assert_trees_all_close(member.params, single.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(member.opt_state, single.opt_state, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(group_acc["loss"][2:], single_acc["loss"], rtol=1e-5)


def test_stopped_member_is_frozen():
    config = small_config(num_seeds=2)
    parts, states, split = setup(config)
    states = states.replace(active=jnp.array([True, False]))
    keys = train_lib.stacked_keys(run.seeds_of(config))
    span = train_lib.make_train_span(train_lib.make_train_step(0.3, 0.35), 2)
    perms = train_lib.epoch_permutations(keys["data"], 0, 256, BATCH)
    before = jax.tree.map(np.array, states.params)
    new, acc = span(states, train_lib.init_accumulator(2), jnp.asarray(split.images),
                    jnp.asarray(split.labels), perms, 0, 0, keys["dropout"], length=1)
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x[1], new.params),
                                jax.tree.map(lambda x: x[1], before))
    assert acc["count"].tolist() == [BATCH, 0]


def test_scan_span_equals_the_loop():
    config = small_config()
    parts, states, split = setup(config)
    keys = train_lib.stacked_keys(run.seeds_of(config))
    span = train_lib.make_train_span(train_lib.make_train_step(0.3, 0.35), 1)
    perms = train_lib.epoch_permutations(keys["data"], 0, 256, BATCH)
    images, labels = jnp.asarray(split.images), jnp.asarray(split.labels)
    scanned, scan_acc = span(jax.tree.map(jnp.copy, states), train_lib.init_accumulator(1),
                             images, labels, perms, 0, 0, keys["dropout"], length=8)
    looped, loop_acc = run_steps(config, 8)
    chex.assert_trees_all_close(scanned.params, looped.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(scan_acc, loop_acc, rtol=1e-5)


def test_permutations_cover_each_image_once_per_epoch():
    keys = train_lib.stacked_keys([0, 1])
    perms = np.asarray(train_lib.epoch_permutations(keys["data"], 0, 100, 10))
    chex.assert_shape(perms, (2, 10, 10))
    assert sorted(perms[0].ravel()) == list(range(100))
    assert not np.array_equal(perms[0], perms[1])
    later = np.asarray(train_lib.epoch_permutations(keys["data"], 1, 100, 10))
    assert not np.array_equal(perms, later)


def test_predict_counts_every_image_once_with_a_partial_batch():
    config = small_config(num_seeds=2)
    parts, states, split = setup(config)
    predict = train_lib.make_predict(parts.model, 0.3, 0.35, batch_size=64)
    images = jnp.asarray(split.images[:150])  # 2 full batches and a partial one
    logits = predict(states.params, states.batch_stats, images)
    chex.assert_shape(logits, (2, 150, 10))
    direct = parts.model.apply(
        {"params": jax.tree.map(lambda x: x[0], states.params),
         "batch_stats": jax.tree.map(lambda x: x[0], states.batch_stats)},
        train_lib.normalize(images, 0.3, 0.35), train=False)
    chex.assert_trees_all_close(logits[0], direct, rtol=1e-5, atol=1e-5)
    sums = train_lib.evaluation_sums(logits, jnp.asarray(split.labels[:150]))
    assert sums["count"].tolist() == [150, 150]


def test_predict_members_one_at_a_time_equals_side_by_side():
    config = config_lib.model_config("cnn")  # convolutions: vmapped, they become grouped ones
    config.num_seeds = 3
    parts, states, split = setup(config)
    images = jnp.asarray(split.images[:100])
    logits = {at_a_time: train_lib.make_predict(parts.model, 0.3, 0.35, 64, at_a_time)(
        states.params, states.batch_stats, images) for at_a_time in (True, False)}
    chex.assert_shape(logits[True], (3, 100, 10))
    chex.assert_trees_all_close(logits[True], logits[False], rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits[True][0], logits[True][1])  # the members differ


def test_only_convolutional_members_are_evaluated_one_at_a_time_on_cpu():
    cnn = run.build(config_lib.model_config("cnn"), 256).model
    assert train_lib.members_one_at_a_time(cnn) == (jax.default_backend() == "cpu")
    for name in ("mlp", "lstm"):
        assert not train_lib.members_one_at_a_time(
            run.build(config_lib.model_config(name), 256).model)


def test_end_of_epoch_keeps_best_and_stops_early():
    config = small_config(num_seeds=2, early_stopping_patience=1)
    parts, states, _ = setup(config)
    end = train_lib.make_end_of_epoch(parts.plateau, False, False, patience=1)
    states = end(states, jnp.array([0.5, 0.5]), jnp.array([1.0, 1.0]), 1)
    marked = states.replace(params=jax.tree.map(lambda x: x + 1.0, states.params))
    marked_params = jax.tree.map(np.array, marked.params)  # `end` donates its input
    states = end(marked, jnp.array([0.6, 0.4]), jnp.array([1.0, 1.0]), 2)
    assert states.best_epoch.tolist() == [2, 1]
    assert states.active.tolist() == [True, False]
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], states.best_params),
                                jax.tree.map(lambda x: x[0], marked_params))
    assert not np.allclose(states.best_params["Dense_0"]["kernel"][1],
                           marked_params["Dense_0"]["kernel"][1])


def test_reduce_on_plateau_scales_the_updates():
    config = small_config(**{"schedule.name": "plateau", "schedule.plateau_patience": 1})
    parts, states, _ = setup(config)
    end = train_lib.make_end_of_epoch(parts.plateau, True, False, patience=0)
    for epoch in range(1, 5):  # a flat validation accuracy: the scale halves
        states = end(states, jnp.array([0.5]), jnp.array([1.0]), epoch)
    assert float(states.plateau.scale[0]) < 1.0


@pytest.mark.parametrize("name", ["constant", "warmup_cosine", "onecycle"])
def test_schedules_peak_at_the_learning_rate(name):
    config = small_config(**{"schedule.name": name, "schedule.warmup_epochs": 0.5,
                             "optimizer.learning_rate": 0.01})
    schedule = run.build(config, 320).schedule  # 10 steps an epoch, 20 in all
    values = np.array([float(schedule(s)) for s in range(20)])
    assert values.max() == pytest.approx(0.01, rel=0.05)
    if name != "constant":
        assert values[-1] < 0.005


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers_update(name):
    config = small_config(**{"optimizer.name": name, "optimizer.grad_clip_norm": 1.0})
    states, _ = run_steps(config, 2)
    chex.assert_tree_all_finite(states.params)
    assert int(states.step[0]) == 2


def test_checkpoint_round_trip(tmp_path):
    states, _ = run_steps(small_config(num_seeds=2), 2)
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(2, states, {"position": {"epoch": 1}})
    config = small_config(num_seeds=2)
    template = run.initial_states(config, run.build(config, 256))
    with Checkpoints(tmp_path, read_only=True) as ckpts:
        step, meta = ckpts.restore_meta()
        restored = ckpts.restore_state(step, template)
    assert step == 2 and meta["position"] == {"epoch": 1}
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored.params),
                                jax.tree.map(np.asarray, states.params))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored.opt_state),
                                jax.tree.map(np.asarray, states.opt_state))
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(states.opt_state)


def test_a_checkpoint_older_than_the_moving_average_restores(tmp_path):
    """Written before the state had `ema_*` fields: they restore empty, as a run without one."""
    states, _ = run_steps(small_config(), 1)
    old = {k: v for k, v in flax.serialization.to_state_dict(states).items()
           if not k.startswith("ema_")}
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, old, {"position": {"epoch": 1}})
    template = run.initial_states(small_config(), run.build(small_config(), 256))
    with Checkpoints(tmp_path, read_only=True) as ckpts:
        restored = ckpts.restore_state(1, template)
    assert restored.ema_params == {} and restored.ema_batch_stats == {}
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored.params),
                                jax.tree.map(np.asarray, states.params))


def test_ensemble_probabilities_sum_to_one_and_average_the_members():
    logits = np.random.default_rng(0).normal(size=(3, 5, 10)) * 4
    probs = metrics.ensemble_probabilities(logits)
    chex.assert_shape(probs, (5, 10))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(probs, np.mean([metrics.softmax(l) for l in logits], axis=0))
