"""A multilayer perceptron on the flattened image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmnist_jax.models.layers import DenseBlock


class MLP(nn.Module):
    """784 -> hidden... -> 10; each hidden layer Dense + BatchNorm + ReLU + Dropout (s000's ANN)."""

    hidden: Sequence[int] = (512, 256, 128)
    use_batch_norm: bool = True
    dropout: float = 0.3
    num_classes: int = 10
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for features in self.hidden:
            x = DenseBlock(features, self.use_batch_norm, self.dropout, self.dtype)(x, train=train)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)
