"""A small pre-activation ResNet for 28x28 inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmnist_jax.models.layers import batch_norm, conv


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut (a 1x1 conv when the shape changes)."""

    features: int
    strides: int = 1
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        def conv_layer(kernel_size, strides=1):
            return conv(self.features, kernel_size, train, self.conv_impl, strides=strides,
                        padding="SAME", use_bias=False, dtype=self.dtype)

        y = nn.relu(batch_norm(train, self.dtype)(x))
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = conv_layer(1, self.strides)(y)
        y = conv_layer(3, self.strides)(y)
        y = nn.relu(batch_norm(train, self.dtype)(y))
        return conv_layer(3)(y) + shortcut


class ResNet(nn.Module):
    """A 3x3 stem, stages of pre-activation blocks (each stage after the first halves the size),
    then BN-ReLU, global average pooling and a Dense classifier."""

    stage_features: Sequence[int] = (32, 64, 128)
    blocks_per_stage: int = 2
    num_classes: int = 10
    conv_impl: str = "auto"  # see layers.py: xla, matmul
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = conv(self.stage_features[0], 3, train, self.conv_impl, padding="SAME",
                 use_bias=False, dtype=self.dtype)(x)
        for stage, features in enumerate(self.stage_features):
            for block in range(self.blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                x = PreActBlock(features, strides, self.conv_impl, self.dtype)(x, train=train)
        x = nn.relu(batch_norm(train, self.dtype)(x))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x.mean(axis=(1, 2)))
