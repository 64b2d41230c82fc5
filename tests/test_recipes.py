"""The accuracy options: the weights' moving average, bfloat16 compute, strided matmul convolutions,
the tuned and replica configs, and releases of trained weights."""

from __future__ import annotations

import functools
import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subprocess_runs
from fmnist_jax import config as config_lib
from fmnist_jax import evaluation, portable, release, restore, run
from fmnist_jax import train as train_lib
from fmnist_jax.errors import ConfigError
from fmnist_jax.models import create_model, param_count
from fmnist_jax.models.layers import conv_as_matmul
from subprocess_runs import SMALL_RUN
from test_train import BATCH, run_steps, setup, small_config

TUNED = sorted((config_lib.CONFIG_DIR / "tuned").glob("*.py"))
REPLICAS = sorted((config_lib.CONFIG_DIR / "replicas").glob("*.py"))
SEARCH = sorted((config_lib.CONFIG_DIR / "search").glob("*.py"))


def test_ema_update_moves_the_average_by_the_ramped_rate():
    config = small_config(ema_decay=0.9)
    _, states, _ = setup(config)
    state = jax.tree.map(lambda x: x[0], states)
    chex.assert_trees_all_equal(state.ema_params, state.params)  # starts at the initial weights
    moved = state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params), step=jnp.int32(100))
    updated = train_lib.update_ema(moved, 0.9)
    rate = 1.0 - min(0.9, 101 / 110)  # min(decay, (1 + t) / (10 + t)) at t = 100
    chex.assert_trees_all_close(updated.ema_params,
                                jax.tree.map(lambda p: p + rate, state.params), atol=1e-6)
    early = train_lib.update_ema(moved.replace(step=jnp.int32(0)), 0.9)  # rate 1 - 0.1 at t = 0
    chex.assert_trees_all_close(early.ema_params,
                                jax.tree.map(lambda p: p + 0.9, state.params), atol=1e-6)


def test_ema_is_trained_validated_and_kept_as_the_best_weights():
    states, _ = run_steps(small_config(ema_decay=0.5), 3)
    chex.assert_tree_all_finite(states.ema_params)
    assert not np.allclose(states.ema_params["Dense_0"]["kernel"], states.params["Dense_0"]["kernel"])
    params, _ = train_lib.evaluated_weights(states)
    chex.assert_trees_all_equal(params, states.ema_params)
    config = small_config(ema_decay=0.5)
    end = train_lib.make_end_of_epoch(run.build(config, 256).plateau, False, False, patience=0)
    ema_params = jax.tree.map(np.array, states.ema_params)
    ended = end(states, jnp.array([0.7]), jnp.array([1.0]), 1)
    chex.assert_trees_all_close(ended.best_params, ema_params)


def test_without_ema_the_state_keeps_no_average():
    states, _ = run_steps(small_config(), 1)
    assert jax.tree.leaves(states.ema_params) == []
    chex.assert_trees_all_equal(train_lib.evaluated_weights(states)[0], states.params)


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm", "resnet"])
def test_bfloat16_compute_keeps_float32_parameters_and_close_outputs(name):
    config = config_lib.model_config(name).model
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    f32, bf16 = create_model(config), create_model(config, "bfloat16")
    variables = f32.init(jax.random.key(1), x, train=False)
    assert {p.dtype for p in jax.tree.leaves(bf16.init(jax.random.key(1), x, train=False))} == {
        jnp.dtype(jnp.float32)}
    low = bf16.apply(variables, x, train=False)
    assert low.dtype == jnp.bfloat16
    chex.assert_trees_all_close(low.astype(jnp.float32), f32.apply(variables, x, train=False),
                                atol=0.15, rtol=0.1)


def test_bfloat16_train_step_has_a_float32_loss_and_gradients():
    config = small_config(compute_dtype="bfloat16")
    states, acc = run_steps(config, 2)
    assert {p.dtype for p in jax.tree.leaves(states.params)} == {jnp.dtype(jnp.float32)}
    assert acc["loss"].dtype == jnp.float32
    chex.assert_tree_all_finite((states.params, acc))


def test_an_unknown_compute_dtype_is_refused():
    with pytest.raises(ConfigError, match="compute_dtype"):
        config_lib.validate(small_config(compute_dtype="float16"))


@pytest.mark.parametrize("strides,padding,kernel", [((2, 2), "SAME", 3), ((2, 2), "SAME", 1),
                                                    ((1, 1), "VALID", 3), ((2, 2), "VALID", 3)])
def test_strided_matmul_convolution_equals_xla(strides, padding, kernel):
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 5))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 5, 7))
    expected = jax.lax.conv_general_dilated(x, w, strides, padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    chex.assert_trees_all_close(conv_as_matmul(x, w, strides, padding), expected,
                                rtol=1e-4, atol=1e-4)


def test_resnet_trains_the_same_with_matmul_and_xla_convolutions():
    fields = dict(config_lib.model_config("resnet").model, stage_features=(8, 16), blocks_per_stage=1)
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    xla = create_model(dict(fields, conv_impl="xla"))
    matmul = create_model(dict(fields, conv_impl="matmul"))
    # jitted: eagerly, every op of the init and of both backward passes compiles on its own (~4x)
    variables = jax.jit(functools.partial(xla.init, train=False))(jax.random.key(1), x)
    stem, norms, dense = 8 * 9, 2 * (8 + 8 + 8 + 16 + 16), 16 * 10 + 10  # BN: scale and bias
    convs = 8 * 8 * 9 * 2 + 8 * 16 * 9 + 16 * 16 * 9 + 8 * 16  # block 1, block 2, its shortcut
    assert param_count(variables["params"]) == stem + norms + convs + dense

    def loss(model, params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
        return jax.nn.logsumexp(logits, -1).mean()

    gradient = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
    chex.assert_trees_all_close(gradient(matmul, variables["params"]),
                                gradient(xla, variables["params"]), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("path", TUNED + REPLICAS + SEARCH,
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_tuned_replica_and_search_configs_load_validate_and_build(path):
    config = config_lib.load_config_file(path)
    config_lib.validate(config)
    model = create_model(config.model)
    # Traced, not run: building is tracing the whole init; only the parameters' shapes are read.
    variables = jax.eval_shape(lambda key, x: model.init(key, x, train=False),
                               jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert param_count(variables["params"]) > 0
    assert isinstance(model, nn.Module)


def test_every_model_has_a_tuned_recipe_and_every_seed_a_replica():
    assert [p.stem for p in TUNED] == ["cnn", "cnn_deep", "lstm", "mlp", "resnet"]
    assert [p.stem for p in REPLICAS] == ["s000_ann", "s000_cnn", "s001_ann", "s001_cnn",
                                          "s002_ann", "s003_cnn", "s003_lstm", "s004_ann",
                                          "s004_cnn", "s004_cnn_deep"]


@pytest.mark.e2e
def test_a_release_evaluates_as_its_run_and_cannot_resume(tmp_path):
    workdir, out = tmp_path / "run", tmp_path / "release"
    trained = subprocess_runs.run_main("train", *SMALL_RUN, "--seeds=2", "--config.ema_decay=0.9",
                                       f"--workdir={workdir}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    history = run.read_history(workdir)
    assert all("raw_val_accuracy" in r for r in history)
    exported = subprocess_runs.run_main("export", f"--workdir={workdir}", f"--out={out}",
                                        "--seed=1")
    assert exported.returncode == 0, exported.stderr[-3000:]
    record = json.loads((out / "release.json").read_text())
    summary = json.loads((workdir / "summary.json").read_text())
    assert record["seeds"] == [1] and record["test_accuracy"] == summary["test_accuracy"][1:]
    assert record["train_command"].startswith("python") and record["device"]
    assert release.size_bytes(out / "checkpoints") < release.size_bytes(workdir / "checkpoints") / 4
    original = evaluation.evaluate(restore.load_workdir(workdir))
    released = evaluation.evaluate(restore.load_workdir(out))
    chex.assert_trees_all_close(released.member_probabilities[0],
                                original.member_probabilities[1], rtol=1e-6, atol=1e-7)
    assert abs(float((released.probabilities.argmax(-1) == released.labels).mean())
               - summary["test_accuracy"][1]) < 1e-9
    portable_model = portable.load(out)  # the release carries its portable model: seed 1's
    assert portable_model.metadata["seeds"] == [1]
    chex.assert_trees_all_close(np.asarray(portable_model(released.images[:50])),
                                released.member_probabilities[0][:50], atol=2e-6)
    # in this process: the refusal comes before training, from the release's checkpoint
    resumed = subprocess_runs.run_main("train", *SMALL_RUN, f"--workdir={out}")
    assert resumed.returncode != 0 and "release" in resumed.stderr, resumed.stderr[-2000:]
    assert len(list((out / "checkpoints").iterdir())) == 1  # the release was left as it was
