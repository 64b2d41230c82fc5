"""Every registered model: output shape, parameter count and the shared signature."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

from fmnist_jax import config as config_lib
from fmnist_jax.errors import ConfigError
from fmnist_jax.models import MODELS, create_model, param_count

# Parameter counts by hand: e.g. lstm = 4 * (28*128 + 128*128 + 128) + 128*10 + 10.
EXPECTED_PARAMS = {"mlp": 569_226, "cnn": 429_450, "cnn_deep": 390_858, "lstm": 81_674,
                   "resnet": 695_658}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_shapes_and_parameter_counts(name):
    model = create_model(config_lib.model_config(name).model)
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    variables = model.init(jax.random.key(1), x, train=False)
    assert param_count(variables["params"]) == EXPECTED_PARAMS[name]
    logits = model.apply(variables, x, train=False)
    chex.assert_shape(logits, (3, 10))
    chex.assert_tree_all_finite(logits)
    train_logits, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                                  mutable=["batch_stats"])
    chex.assert_shape(train_logits, (3, 10))


def test_seed_variants_are_config_overrides():
    """s003's small CNN and the 128-64 ANN are the cnn and mlp modules with other fields."""
    s003 = create_model({"name": "cnn", "conv_features": (32, 32), "padding": "VALID",
                         "use_batch_norm": False, "dense_features": (100,), "dropout": 0.0})
    small = create_model({"name": "mlp", "hidden": (128, 64), "use_batch_norm": False,
                          "dropout": 0.0})
    x = jnp.zeros((1, 28, 28, 1))

    def params(model):  # their shapes, traced without running (or compiling) the init
        return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
    assert param_count(params(s003)) == 90_678
    assert param_count(params(small)) == 109_386


def test_unknown_model_and_field_are_refused():
    with pytest.raises(ConfigError, match="valid models: mlp, cnn"):
        create_model({"name": "vgg"})
    with pytest.raises(ConfigError, match="has no field"):
        create_model({"name": "mlp", "widths": (1,)})
