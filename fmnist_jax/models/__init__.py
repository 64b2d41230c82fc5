"""The model registry: every model takes normalised images `[B, 28, 28, 1]` and `train=`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax.errors import ConfigError
from fmnist_jax.models.cnn import CNN
from fmnist_jax.models.lstm import LSTM
from fmnist_jax.models.mlp import MLP
from fmnist_jax.models.resnet import ResNet

# Names map to modules; a name's architecture is its config file's fields (cnn_deep is a CNN).
MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "cnn_deep": CNN,
    "lstm": LSTM,
    "resnet": ResNet,
}


COMPUTE_DTYPES = ("float32", "bfloat16")


def create_model(config: Mapping[str, Any], compute_dtype: str = "float32") -> nn.Module:
    """The module named by `config['name']`, built with the config's other fields.

    `compute_dtype` is the dtype of the activations and matrix products; parameters, BatchNorm
    statistics and the loss stay float32 (mixed precision with 'bfloat16').
    """
    fields = dict(config)
    name = fields.pop("name")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"unknown compute_dtype {compute_dtype!r}; valid: "
                          f"{', '.join(COMPUTE_DTYPES)}")
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    module = MODELS[name]
    valid = {f.name for f in module.__dataclass_fields__.values()} - {"parent", "name", "dtype"}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ConfigError(f"model {name!r} has no field(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(valid))}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return module(**fields, dtype=jnp.dtype(compute_dtype))


def param_count(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
