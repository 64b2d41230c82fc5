"""An LSTM that reads the image row by row: 28 timesteps of 28 pixels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class LSTM(nn.Module):
    """Stacked LSTM layers over the rows; the last step's output feeds a Dense classifier (s003)."""

    hidden: Sequence[int] = (128,)
    num_classes: int = 10
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train  # no dropout or BatchNorm
        x = x[..., 0]  # [B, rows, columns]: each row is a timestep
        for features in self.hidden:
            x = nn.RNN(nn.OptimizedLSTMCell(features, dtype=self.dtype))(x.astype(self.dtype))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x[:, -1])
