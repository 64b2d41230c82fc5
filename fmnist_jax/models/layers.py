"""Building blocks shared by the models.

Convolutions and max-pools have interchangeable implementations (the same parameters, results
equal to float tolerance), chosen by `conv_impl` and `pool_impl`; 'auto' picks per backend:

- conv 'matmul' (auto on CPU in training): shifted (strided) slices concatenated into patches,
  then one matrix product. XLA:CPU leaves Eigen for a generic loop when it runs a convolution's
  gradient inside a `lax.scan` body (a cnn epoch as one scan trained ~15x slower) and for the grouped
  convolution that `jax.vmap` makes of several seeds' kernels (4 seeds trained ~4.6x slower than
  4 separate runs); as matrix products both run at full speed. 'xla' is `nn.Conv`: auto on other
  backends, and on CPU for evaluation, where the patches of a 1,000-image batch would be large
  (it evaluated ~2x faster).
- pool 'slices' (auto on CPU): the max of the four strided 2x2 positions; its gradient is
  elementwise and fuses. `nn.max_pool` ('window') differentiates through a variadic
  `reduce_window` with index tensors and a scatter, which took about half of a cnn train step's
  CPU time. At a tie the gradient is split between the tied inputs instead of going to one; after
  a ReLU the tied inputs are zeros whose gradient is zero, so parameter gradients agree.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

BATCH_NORM_MOMENTUM = 0.9  # flax's 0.99 adapts too slowly for runs of a few thousand steps
CONV_IMPLS = ("auto", "xla", "matmul")
POOL_IMPLS = ("auto", "window", "slices")


def batch_norm(train: bool, dtype: Any = jnp.float32) -> nn.BatchNorm:
    """BatchNorm computing in `dtype`; its statistics and parameters stay float32."""
    return nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM, dtype=dtype)


def conv_as_matmul(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None):
    """`lax.conv_general_dilated` for NHWC x HWIO: strided slices as patches, then one matmul."""
    del dimension_numbers  # nn.Conv passes NHWC/HWIO for image batches
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if feature_group_count != 1 or dilated:
        raise NotImplementedError("conv_impl='matmul' supports no dilation and one group")
    kh, kw, cin, cout = rhs.shape
    sh, sw = window_strides
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (sh, sw), padding)
    x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    h, w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    patches = jnp.concatenate(
        [x[:, i:i + (h - 1) * sh + 1:sh, j:j + (w - 1) * sw + 1:sw]
         for i in range(kh) for j in range(kw)], axis=-1)  # [B, h, w, kh*kw*cin], HWI order
    return jnp.dot(patches, rhs.reshape(kh * kw * cin, cout), precision=precision)


def resolve_conv_impl(impl: str, train: bool) -> str:
    if impl == "auto":
        return "matmul" if train and jax.default_backend() == "cpu" else "xla"
    return impl


def conv(features: int, kernel_size: int, train: bool, impl: str = "auto", **kwargs) -> nn.Conv:
    """`nn.Conv` with a square kernel, run as `impl` resolves (see the module docstring)."""
    matmul = resolve_conv_impl(impl, train) == "matmul"
    return nn.Conv(features, (kernel_size, kernel_size),
                   conv_general_dilated=conv_as_matmul if matmul else None, **kwargs)


def resolve_pool_impl(impl: str) -> str:
    if impl == "auto":
        return "slices" if jax.default_backend() == "cpu" else "window"
    return impl


def max_pool_2x2(x: jax.Array, impl: str = "auto") -> jax.Array:
    """2x2 max-pool at stride 2; an odd last row or column is dropped (flax's VALID max_pool)."""
    if resolve_pool_impl(impl) == "window":
        return nn.max_pool(x, (2, 2), strides=(2, 2))
    b, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    rows = jnp.maximum(x[:, :, 0], x[:, :, 1])
    return jnp.maximum(rows[:, :, :, 0], rows[:, :, :, 1])


class DenseBlock(nn.Module):
    """Dense, then BatchNorm (optional), ReLU and Dropout (when the rate is above zero)."""

    features: int
    use_batch_norm: bool = False
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.Dense(self.features, dtype=self.dtype)(x)
        if self.use_batch_norm:
            x = batch_norm(train, self.dtype)(x)
        x = nn.relu(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x) if self.dropout else x


class ConvBlock(nn.Module):
    """Conv, ReLU and BatchNorm in the order given, then a 2x2 max-pool and Dropout."""

    features: int
    kernel_size: int = 3
    padding: str = "SAME"
    use_batch_norm: bool = True
    norm_before_relu: bool = True
    dropout: float = 0.0
    conv_impl: str = "auto"
    pool_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = conv(self.features, self.kernel_size, train, self.conv_impl, padding=self.padding,
                 dtype=self.dtype)(x)
        if self.use_batch_norm and self.norm_before_relu:
            x = batch_norm(train, self.dtype)(x)
        x = nn.relu(x)
        if self.use_batch_norm and not self.norm_before_relu:
            x = batch_norm(train, self.dtype)(x)
        x = max_pool_2x2(x, self.pool_impl)
        return nn.Dropout(self.dropout, deterministic=not train)(x) if self.dropout else x
