"""FLOPs counted from the jaxpr against hand counts, per model; the device peak table."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from fmnist_jax import config as config_lib
from fmnist_jax import flops, run
from fmnist_jax import train as train_lib
from fmnist_jax.models import create_model


def conv(size: int, kernel: int, cin: int, cout: int) -> int:
    """Multiply-adds of a SAME convolution with a `size` x `size` output."""
    return size * size * kernel * kernel * cin * cout


# Multiply-adds of one image's forward pass, by hand, layer by layer, for configs/<name>.py.
HAND_MACS = {
    "mlp": 784 * 512 + 512 * 256 + 256 * 128 + 128 * 10,
    "cnn": conv(28, 3, 1, 32) + conv(14, 3, 32, 64) + 7 * 7 * 64 * 128 + 128 * 64 + 64 * 10,
    "cnn_deep": conv(28, 3, 1, 32) + conv(14, 3, 32, 64) + conv(7, 3, 64, 128)
                + 3 * 3 * 128 * 256 + 256 * 10,  # the last pool drops 7x7's odd row: 3x3
    "lstm": 28 * (28 + 128) * 4 * 128 + 128 * 10,  # 28 rows; input and recurrent gate matrices
    "resnet": conv(28, 3, 1, 32)  # stem
              + 4 * conv(28, 3, 32, 32)  # stage 1: two blocks of two convs
              + conv(14, 1, 32, 64) + conv(14, 3, 32, 64) + 3 * conv(14, 3, 64, 64)  # stage 2
              + conv(7, 1, 64, 128) + conv(7, 3, 64, 128) + 3 * conv(7, 3, 128, 128)  # stage 3
              + 128 * 10,
}


def model_of(name: str, **fields):
    config = config_lib.model_config(name)
    return create_model({**config.model.to_dict(), **fields})


@pytest.mark.parametrize("name", HAND_MACS)
def test_forward_flops_equal_the_hand_count(name):
    assert flops.forward_flops_per_image(model_of(name)) == 2 * HAND_MACS[name]


def train_flops_per_image(name: str, batch: int = 4, **fields) -> float:
    model = model_of(name, **fields)
    tx = run.optim.make_optimizer(config_lib.model_config(name), lambda _: 1e-3)
    state = jax.eval_shape(functools.partial(
        train_lib.create_state, model, tx, run.optim.make_plateau(config_lib.model_config(name)),
        False), jax.random.key(0))
    batch_data = {"image": jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.uint8),
                  "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    step = train_lib.make_train_step(0.3, 0.35)
    return flops.count(step, state, batch_data, jax.random.key(1)) / batch


def test_training_counts_forward_weight_and_input_gradients():
    # Each layer's weight gradient costs its forward pass again, and so does its input gradient,
    # except the first layer's (nothing needs the gradient of the images).
    forward = 2 * HAND_MACS["mlp"]
    assert train_flops_per_image("mlp") == 3 * forward - 2 * 784 * 512


def test_training_flops_do_not_depend_on_the_conv_implementation():
    xla, matmul = (train_flops_per_image("cnn", conv_impl=impl) for impl in ("xla", "matmul"))
    assert xla == matmul
    assert 2.5 < xla / (2 * HAND_MACS["cnn"]) < 3.0  # ~3x forward, less the first input gradient


def test_counts_agree_with_xla_cost_analysis_on_cpu():
    model = model_of("cnn", conv_impl="xla")
    images = jnp.zeros((8, 28, 28, 1))
    variables = model.init(jax.random.key(0), images, train=False)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    xla = flops.xla_flops(apply.lower(variables, images).compile())
    counted = flops.count(apply, variables, images)
    assert xla is not None
    # XLA:CPU leaves out the products with a SAME convolution's padding zeros (~6% of the cnn's)
    # and adds the elementwise work the count leaves out.
    assert 0.85 < xla / counted < 1.1


def test_scan_bodies_count_once_per_iteration():
    w = jnp.ones((3, 3))
    body = lambda c, _: (c @ w, None)
    assert flops.count(lambda c: jax.lax.scan(body, c, None, length=5)[0], jnp.ones((2, 3))) == \
        5 * 2 * 2 * 3 * 3


@pytest.mark.parametrize("kind,dtype,tflops,precision", [
    ("NVIDIA H200", "bfloat16", 989.4, "bfloat16"),
    ("NVIDIA H100 80GB HBM3", "float32", 494.7, "TF32"),
    ("NVIDIA H100 PCIe", "float32", 378.0, "TF32"),
    ("NVIDIA A100-SXM4-40GB", "bfloat16", 312.0, "bfloat16"),
    ("NVIDIA L4", "float32", 60.0, "TF32"),
    ("Tesla V100-SXM2-16GB", "float32", 15.7, "FP32"),
    ("TPU v5 lite", "bfloat16", 197.0, "bfloat16"),
    ("TPU v4", "float32", 275.0, "bf16 passes"),
])
def test_known_device_peaks(kind, dtype, tflops, precision):
    peak = flops.known_peak(kind, dtype)
    assert peak.flops_per_second == pytest.approx(tflops * 1e12) and precision in peak.precision
    assert peak.source


def test_unknown_devices_have_no_table_peak_and_the_cpu_is_measured():
    assert flops.known_peak("NVIDIA L40S", "float32") is None  # L4's pattern must not match it
    peak = flops.device_peak("float32")  # this CPU: measured
    assert "measured" in peak.precision and 1e8 < peak.flops_per_second < 1e14
