"""A convolutional network: conv blocks, each followed by a max-pool, then a dense head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmnist_jax.models.layers import ConvBlock, DenseBlock


class CNN(nn.Module):
    """Conv blocks then dense layers; the defaults are s001's CNN (conv 32, conv 64, dense 128, 64).

    The deeper s000 CNN (`cnn_deep`) and s003's small CNN are the same module with other fields.
    """

    conv_features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    padding: str = "SAME"
    use_batch_norm: bool = True
    norm_before_relu: bool = False
    conv_dropout: float = 0.0
    dense_features: Sequence[int] = (128, 64)
    dropout: float = 0.4
    num_classes: int = 10
    conv_impl: str = "auto"  # see layers.py: xla, matmul
    pool_impl: str = "auto"  # see layers.py: window, slices
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for features in self.conv_features:
            x = ConvBlock(features, self.kernel_size, self.padding, self.use_batch_norm,
                          self.norm_before_relu, self.conv_dropout, self.conv_impl,
                          self.pool_impl, self.dtype)(x, train=train)
        x = x.reshape(x.shape[0], -1)
        for features in self.dense_features:
            x = DenseBlock(features, dropout=self.dropout, dtype=self.dtype)(x, train=train)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)
