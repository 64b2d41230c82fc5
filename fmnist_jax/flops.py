"""FLOPs of a function counted from its jaxpr, and the peak FLOP rate of the device it runs on.

The count is analytic and the same on every backend: 2 x the multiply-adds of every matrix product
(`dot_general`) and convolution (`conv_general_dilated`) the traced function performs, a `scan`
body counted `length` times; elementwise work (activations, BatchNorm, the optimizer) is left out,
as FLOP counts of networks usually do. XLA's own `cost_analysis()` is no substitute: it is None on
some backends, and on a GPU it leaves out convolutions that run as cuDNN custom calls (an H200
reported 4.5 MFLOP per resnet training image where the count here gives ~480).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core


def _jaxprs(value: Any) -> list[jax_core.Jaxpr]:
    """The jaxprs inside an equation parameter (a jaxpr, a closed one, or a tuple of them)."""
    if isinstance(value, jax_core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jax_core.Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _jaxprs(v)]
    return []


def _equation_flops(eqn) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape  # each output element sums kernel window x in-features
        out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features
    if name == "scan":
        return eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"].jaxpr)
    if name == "cond":  # the costliest branch
        return max(jaxpr_flops(j) for j in _jaxprs(eqn.params["branches"]))
    # pjit, custom_jvp/vjp calls, remat, while (its body once: a lower bound): every sub-jaxpr
    return sum(jaxpr_flops(j) for value in eqn.params.values() for j in _jaxprs(value))


def jaxpr_flops(jaxpr: jax_core.Jaxpr) -> float:
    """2 x multiply-adds of the matrix products and convolutions in `jaxpr`."""
    return sum(_equation_flops(eqn) for eqn in jaxpr.eqns)


def count(fn: Callable, *args, **kwargs) -> float:
    """FLOPs of one call `fn(*args, **kwargs)` (arrays or `jax.ShapeDtypeStruct`s), traced only."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def forward_flops_per_image(model, batch: int = 2) -> float:
    """FLOPs of the model's evaluation forward pass, per image."""
    images = jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return count(lambda v, x: model.apply(v, x, train=False), variables, images) / batch


class Peak(NamedTuple):
    """A device's peak rate for the precision the run's matrix products use, and where it is from."""

    flops_per_second: float
    precision: str  # e.g. 'TF32 tensor cores (dense)', 'float32 matmul, measured'
    source: str


# Dense (no sparsity) peak TFLOP/s per chip: (float32 as JAX runs it by default, bfloat16).
# JAX's default precision lets float32 matrix products and convolutions run as TF32 on NVIDIA
# Ampere and later and as bfloat16 passes on TPUs, so those are the float32 peaks given there.
# Sources: NVIDIA H100/H200 datasheets (SXM: TF32 494.7, BF16 989.4 dense; H100 PCIe 378 / 756),
# NVIDIA A100 datasheet (TF32 156, BF16 312), NVIDIA L4 datasheet (TF32 60, BF16 121), NVIDIA
# V100 datasheet (FP32 15.7, no TF32/BF16 tensor cores: BF16 runs at the FP32 rate), Google Cloud
# TPU system architecture pages (bf16 per chip: v4 275, v5e 197, v5p 459, v6e 918).
KNOWN_PEAKS: tuple[tuple[str, float, float, str, str], ...] = (
    # (device_kind pattern, float32 TFLOP/s, bfloat16 TFLOP/s, float32 precision, source)
    (r"H200", 494.7, 989.4, "TF32 tensor cores", "NVIDIA H200 datasheet"),
    (r"H100.*PCIe", 378.0, 756.0, "TF32 tensor cores", "NVIDIA H100 datasheet (PCIe)"),
    (r"H100", 494.7, 989.4, "TF32 tensor cores", "NVIDIA H100 datasheet (SXM)"),
    (r"A100", 156.0, 312.0, "TF32 tensor cores", "NVIDIA A100 datasheet"),
    (r"\bL4\b", 60.0, 121.0, "TF32 tensor cores", "NVIDIA L4 datasheet"),
    (r"V100", 15.7, 15.7, "FP32 CUDA cores", "NVIDIA V100 datasheet (SXM2)"),
    (r"TPU v4", 275.0, 275.0, "bf16 passes (default precision)", "Google Cloud TPU v4 page"),
    (r"TPU v5 ?lite|TPU v5e", 197.0, 197.0, "bf16 passes (default precision)",
     "Google Cloud TPU v5e page"),
    (r"TPU v5p|TPU v5$", 459.0, 459.0, "bf16 passes (default precision)",
     "Google Cloud TPU v5p page"),
    (r"TPU v6 ?lite|TPU v6e", 918.0, 918.0, "bf16 passes (default precision)",
     "Google Cloud TPU v6e page"),
)


def known_peak(device_kind: str, compute_dtype: str) -> Peak | None:
    """The table's peak of `device_kind` for `compute_dtype`, or None for a device not in it."""
    for pattern, fp32, bf16, fp32_precision, source in KNOWN_PEAKS:
        if re.search(pattern, device_kind):
            if compute_dtype == "bfloat16":
                return Peak(bf16 * 1e12, "bfloat16 (dense)", source)
            return Peak(fp32 * 1e12, f"float32 as {fp32_precision} (dense)", source)
    return None


def measured_matmul_peak(compute_dtype: str, size: int = 2048, repeats: int = 3) -> Peak:
    """The rate of a large square matrix product on the default device (best of `repeats`)."""
    dtype = jnp.dtype(compute_dtype)
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return Peak(2.0 * size**3 / best, f"{compute_dtype} {size}x{size} matmul, measured",
                "measured here by flops.measured_matmul_peak")


def device_peak(compute_dtype: str = "float32") -> Peak:
    """The default device's peak: from KNOWN_PEAKS, else (a CPU, an unknown chip) measured."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        peak = known_peak(device.device_kind, compute_dtype)
        if peak is not None:
            return peak
    return measured_matmul_peak(compute_dtype)


def xla_flops(compiled_or_lowered) -> float | None:
    """XLA's cost-analysis FLOPs, where the backend gives any (None otherwise); a cross-check."""
    try:
        analysis = compiled_or_lowered.cost_analysis()
    except Exception:  # pylint: disable=broad-except  # backends without an analysis raise
        return None
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None
