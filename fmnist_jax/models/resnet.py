"""A small pre-activation ResNet for 28x28 inputs."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from fmnist_jax.models.layers import batch_norm


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut (a 1x1 conv when the shape changes)."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = nn.relu(batch_norm(train)(x))
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(y)
        y = nn.Conv(self.features, (3, 3), self.strides, padding="SAME", use_bias=False)(y)
        y = nn.relu(batch_norm(train)(y))
        y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(y)
        return y + shortcut


class ResNet(nn.Module):
    """A 3x3 stem, stages of pre-activation blocks (each stage after the first halves the size),
    then BN-ReLU, global average pooling and a Dense classifier."""

    stage_features: Sequence[int] = (32, 64, 128)
    blocks_per_stage: int = 2
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.Conv(self.stage_features[0], (3, 3), padding="SAME", use_bias=False)(x)
        for stage, features in enumerate(self.stage_features):
            for block in range(self.blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                x = PreActBlock(features, strides)(x, train=train)
        x = nn.relu(batch_norm(train)(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))
