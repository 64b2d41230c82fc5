"""An LSTM that reads the image row by row: 28 timesteps of 28 pixels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Rows(nn.Module):
    """`nn.RNN(cell)` as a Python loop over the rows, the carry starting at zeros: the same
    parameters and results, for a converter that cannot trace flax's scan (jax2onnx with a
    symbolic batch size, see onnx_export.py)."""

    cell: nn.OptimizedLSTMCell

    def __call__(self, x: jax.Array) -> jax.Array:
        zeros = jnp.zeros((x.shape[0], self.cell.features), x.dtype)
        carry, outputs = (zeros, zeros), []
        for row in range(x.shape[1]):
            carry, y = self.cell(carry, x[:, row])
            outputs.append(y)
        return jnp.stack(outputs, axis=1)


class LSTM(nn.Module):
    """Stacked LSTM layers over the rows; the last step's output feeds a Dense classifier (s003)."""

    hidden: Sequence[int] = (128,)
    num_classes: int = 10
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32
    scan: bool = True  # False: the rows unrolled (`Rows`), for ONNX conversion

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train  # no dropout or BatchNorm
        x = x[..., 0]  # [B, rows, columns]: each row is a timestep
        for features in self.hidden:
            cell = nn.OptimizedLSTMCell(features, dtype=self.dtype)
            x = (nn.RNN(cell) if self.scan else Rows(cell))(x.astype(self.dtype))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x[:, -1])
