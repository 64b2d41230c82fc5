"""The model registry: every model takes normalised images `[B, 28, 28, 1]` and `train=`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
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


def create_model(config: Mapping[str, Any]) -> nn.Module:
    """The module named by `config['name']`, built with the config's other fields."""
    fields = dict(config)
    name = fields.pop("name")
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    module = MODELS[name]
    valid = {f.name for f in module.__dataclass_fields__.values()} - {"parent", "name"}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ConfigError(f"model {name!r} has no field(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(valid))}")
    return module(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def param_count(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
