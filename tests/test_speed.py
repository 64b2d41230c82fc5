"""The speed work: alternative conv/pool implementations equal the default, no recompiles,
donated buffers, and the benchmark's configs and tables. Speed targets live in the benchmark."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fmnist_jax import benchmark, run
from fmnist_jax import config as config_lib
from fmnist_jax import train as train_lib
from fmnist_jax.errors import ConfigError
from fmnist_jax.models import create_model
from fmnist_jax.models import layers

from conftest import synthetic_split

# The seeds' CNNs, smaller: s001's (ReLU then BatchNorm), s000's (BatchNorm then ReLU, conv
# dropout) and s003's (VALID padding, odd sizes 26 -> 13 -> 11 -> 5, no BatchNorm).
CNNS = {
    "cnn": dict(conv_features=(4, 8), dense_features=(16,), dropout=0.4),
    "cnn_deep": dict(conv_features=(4, 8), norm_before_relu=True, conv_dropout=0.25,
                     dense_features=(16,), dropout=0.4),
    "cnn_s003": dict(conv_features=(4, 4), padding="VALID", use_batch_norm=False,
                     dense_features=(16,), dropout=0.0),
}
REFERENCE = ("xla", "window")
ALTERNATIVES = [("matmul", "window"), ("xla", "slices"), ("matmul", "slices")]


def random_variables(model, images):
    """Variables of `model`'s shapes, drawn with numpy (no init to compile); unit batch variance."""
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
    rng = np.random.default_rng(0)
    draw = lambda path, x: (np.ones if path[-1].key == "var" else np.zeros)(x.shape, x.dtype) \
        if path[0].key == "batch_stats" else rng.normal(0, 0.3, x.shape).astype(x.dtype)
    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache
def outputs(name: str) -> dict:
    """Per implementation pair of one CNN: its parameter tree structure, and from the same
    parameters its evaluation logits and one training batch's logits, batch statistics and
    parameter gradients (every pair in one compiled function)."""
    models = {impls: create_model({"name": "cnn", **CNNS[name], "conv_impl": impls[0],
                                   "pool_impl": impls[1]}) for impls in [REFERENCE, *ALTERNATIVES]}
    split = synthetic_split(8)
    images = train_lib.normalize(jnp.asarray(split.images), 0.3, 0.35)
    labels = jnp.asarray(split.labels)
    variables = random_variables(models[REFERENCE], images)

    def run_model(model, variables):
        def loss(params):
            logits, updates = model.apply({**variables, "params": params}, images, train=True,
                                          rngs={"dropout": jax.random.key(3)},
                                          mutable=["batch_stats"])
            return train_lib.cross_entropy(logits, labels).mean(), (logits, updates)

        grads, train_outputs = jax.grad(loss, has_aux=True)(variables["params"])
        return model.apply(variables, images, train=False), train_outputs, grads

    results = jax.jit(lambda v: {k: run_model(m, v) for k, m in models.items()})(variables)
    return {k: (jax.tree.structure(random_variables(m, images)), results[k])
            for k, m in models.items()}


@pytest.mark.xdist_group("cnn-implementations")  # one worker compiles each cnn's `outputs`
@pytest.mark.parametrize("name", CNNS)
@pytest.mark.parametrize("impls", ALTERNATIVES, ids="-".join)
def test_cnn_implementations_equal_the_default(name, impls):
    structure, got = outputs(name)[impls]
    expected_structure, expected = outputs(name)[REFERENCE]
    assert structure == expected_structure  # same parameter names: checkpoints interchange
    chex.assert_trees_all_close(got, expected, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 1))])
@pytest.mark.parametrize("shape,features", [((2, 9, 9, 1), 5), ((3, 6, 7, 4), 2)])
def test_conv_as_matmul_equals_lax_conv(padding, shape, features):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], features))
    conv = functools.partial(lax.conv_general_dilated, window_strides=(1, 1), padding=padding,
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    matmul = functools.partial(layers.conv_as_matmul, window_strides=(1, 1), padding=padding)

    @jax.jit
    def forward_and_backward(x, w):
        y = {name: jax.vjp(f, x, w) for name, f in (("conv", conv), ("matmul", matmul))}
        cotangent = jax.random.normal(jax.random.key(2), y["conv"][0].shape)
        return {name: (out, pullback(cotangent)) for name, (out, pullback) in y.items()}

    result = forward_and_backward(x, w)
    chex.assert_trees_all_close(result["matmul"], result["conv"], rtol=1e-4, atol=1e-4)


def test_conv_as_matmul_refuses_dilation_and_groups():
    x, w = jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 1, 2))
    with pytest.raises(NotImplementedError, match="no dilation and one group"):
        layers.conv_as_matmul(x, w, (1, 1), "SAME", rhs_dilation=(2, 2))
    with pytest.raises(NotImplementedError, match="no dilation and one group"):
        layers.conv_as_matmul(x, w, (1, 1), "SAME", feature_group_count=2)


def test_auto_resolves_per_backend():
    cpu = jax.default_backend() == "cpu"
    assert layers.resolve_conv_impl("auto", train=True) == ("matmul" if cpu else "xla")
    assert layers.resolve_conv_impl("auto", train=False) == "xla"
    assert layers.resolve_conv_impl("matmul", train=False) == "matmul"
    assert layers.resolve_pool_impl("auto") == ("slices" if cpu else "window")
    assert layers.resolve_pool_impl("window") == "window"


@pytest.mark.parametrize("field", ["conv_impl", "pool_impl"])
def test_unknown_implementation_is_refused(field):
    config = config_lib.model_config("cnn")
    config.model[field] = "fast"
    with pytest.raises(ConfigError, match=f"model.{field}"):
        config_lib.validate(config)


def small_config(num_seeds: int = 1):
    config = config_lib.model_config("mlp")
    config.model.hidden = (8,)
    config.batch_size, config.num_seeds = 16, num_seeds
    return config


@pytest.mark.parametrize("num_seeds,length", [(1, 1), (2, 4)])  # loop with 1, scan with 2
def test_train_span_traces_once_across_steps_and_epochs(num_seeds, length):
    config = small_config(num_seeds)
    parts = run.build(config, 64)
    states = run.initial_states(config, parts)
    split = synthetic_split(64)
    images, labels = jnp.asarray(split.images), jnp.asarray(split.labels)
    keys = train_lib.stacked_keys(run.seeds_of(config))
    chex.clear_trace_counter()  # counts are kept per function across the parametrized cases
    step = chex.assert_max_traces(train_lib.make_train_step(0.3, 0.35), n=1)
    span = train_lib.make_train_span(step, num_seeds)
    acc = train_lib.init_accumulator(num_seeds)
    for epoch in range(2):  # new permutations, positions and global steps: no new trace
        perms = train_lib.epoch_permutations(keys["data"], epoch, 64, 16)
        for first in range(0, 4, length):
            states, acc = span(states, acc, images, labels, perms, first, epoch * 4 + first,
                               keys["dropout"], length=length)
    assert int(np.asarray(acc["count"]).sum()) == 2 * 64 * num_seeds


def test_train_span_donates_the_states_and_sums():
    config = small_config()
    parts = run.build(config, 64)
    states = run.initial_states(config, parts)
    split = synthetic_split(64)
    keys = train_lib.stacked_keys([0])
    span = train_lib.make_train_span(train_lib.make_train_step(0.3, 0.35), 1)
    acc = train_lib.init_accumulator(1)
    perms = train_lib.epoch_permutations(keys["data"], 0, 64, 16)
    span(states, acc, jnp.asarray(split.images), jnp.asarray(split.labels), perms, 0, 0,
         keys["dropout"], length=1)
    assert all(x.is_deleted() for x in jax.tree.leaves((states.params, states.opt_state, acc)))


def test_benchmark_cases_are_valid_configs():
    settings = benchmark.Settings(train_images=1000, overrides=("optimizer.learning_rate=0.01",))
    for case, (_, fields) in benchmark.CASES.items():
        config = benchmark.case_config(case, 4, "scan", settings)
        assert (config.num_seeds, config.epoch_mode) == (4, "scan")
        assert config.data.train_limit % config.batch_size == 0
        assert config.batch_size == fields.get("batch_size", config.batch_size)
        assert config.optimizer.learning_rate == 0.01
    with pytest.raises(ConfigError, match="unknown model"):
        benchmark.case_config("vgg", 1, "auto", settings)


def fake_result(model: str, seeds: int, epoch_seconds: float) -> dict:
    return {"model": model, "seeds": seeds, "mode": "scan", "batch_size": 64,
            "member_strategy": "vmap" if seeds > 1 else "single", "compute_dtype": "float32",
            "compile_seconds": 1.0, "epoch_seconds": epoch_seconds,
            "train_images_per_second": 6000.0 * seeds / epoch_seconds,
            "eval_images_per_second": 20000.0, "flops_per_image": 2.4e7,
            "gflops_per_second": 144.0, "fraction_of_peak": 0.012, "peak_tflops": 12.0,
            "peak_precision": "float32 2048x2048 matmul, measured", "peak_source": "measured here",
            "peak_host_mib": 900.0, "peak_device_mib": None}


def test_benchmark_tables_show_measurements_and_seed_scaling():
    results = [fake_result("cnn", 1, 1.0), fake_result("cnn", 4, 3.0)]
    text = benchmark.table(results)
    assert "met" not in text and "PyTorch" not in text  # only what was measured where it ran
    assert "| 6,000 " in text and "| 8,000 " in text and "| 1.2 " in text  # % of peak
    assert "12 TFLOP/s (float32 2048x2048 matmul, measured" in text
    untimed = benchmark.table([{**fake_result("cnn", 1, 1.0), "eval_images_per_second": None}])
    assert "20,000" not in untimed and "| -" in untimed.splitlines()[2]
    scaling = benchmark.seed_scaling(results).splitlines()
    assert scaling[1].endswith("1.000") and scaling[2].endswith("0.750")
