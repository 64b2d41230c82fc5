"""Building blocks shared by the models."""

from __future__ import annotations

import flax.linen as nn
import jax

BATCH_NORM_MOMENTUM = 0.9  # flax's 0.99 adapts too slowly for runs of a few thousand steps


def batch_norm(train: bool) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM)


class DenseBlock(nn.Module):
    """Dense, then BatchNorm (optional), ReLU and Dropout (when the rate is above zero)."""

    features: int
    use_batch_norm: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.Dense(self.features)(x)
        if self.use_batch_norm:
            x = batch_norm(train)(x)
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

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), padding=self.padding)(x)
        if self.use_batch_norm and self.norm_before_relu:
            x = batch_norm(train)(x)
        x = nn.relu(x)
        if self.use_batch_norm and not self.norm_before_relu:
            x = batch_norm(train)(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dropout(self.dropout, deterministic=not train)(x) if self.dropout else x
