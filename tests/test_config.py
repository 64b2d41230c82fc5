"""Config files, command-line overrides and validation."""

from __future__ import annotations

import pytest

from fmnist_jax import config as config_lib
from fmnist_jax import run
from fmnist_jax.errors import CheckpointError, ConfigError
from fmnist_jax.models import MODELS


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_config_loads_and_validates(name):
    config = config_lib.model_config(name)
    config_lib.validate(config)
    assert config.model.name == name


def test_overrides_are_typed():
    config = config_lib.model_config("cnn")
    config_lib.apply_override(config, "optimizer.learning_rate", "3e-3")
    config_lib.apply_override(config, "model.conv_features", "16,32")
    config_lib.apply_override(config, "model.use_batch_norm", "false")
    config_lib.apply_override(config, "epochs", "4")
    assert config.optimizer.learning_rate == 3e-3 and config.epochs == 4
    assert tuple(config.model.conv_features) == (16, 32) and config.model.use_batch_norm is False


def test_unknown_field_suggests_the_closest():
    config = config_lib.base_config()
    with pytest.raises(ConfigError, match="did you mean 'optimizer.learning_rate'"):
        config_lib.apply_override(config, "optimizer.learning_rat", "1")
    with pytest.raises(ConfigError, match="not a valid int"):
        config_lib.apply_override(config, "epochs", "many")


@pytest.mark.parametrize("field, value, message", [
    ("epochs", "0", "epochs must be positive"),
    ("batch_size", "-1", "batch_size must be positive"),
    ("optimizer.learning_rate", "0", "learning_rate must be positive"),
    ("data.val_fraction", "1.0", r"val_fraction must lie in \(0, 1\)"),
    ("optimizer.name", "lion", "unknown optimizer"),
    ("schedule.name", "step", "unknown schedule"),
])
def test_invalid_values_are_refused(field, value, message):
    config = config_lib.base_config()
    config_lib.apply_override(config, field, value)
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(config)


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid models: mlp, cnn, cnn_deep, lstm"):
        config_lib.model_config_path("vgg")



def test_resume_accepts_implementation_changes_and_refuses_others(tmp_path):
    config = config_lib.model_config("cnn")
    stored = run.config_to_json(config)
    del stored["model"]["conv_impl"]  # a workdir written before the field existed
    stored["epoch_mode"], stored["epochs"] = "loop", 1
    run.check_resumable(stored, config, tmp_path)  # the same function computed: it resumes
    stored["model"]["dropout"] = 0.1
    with pytest.raises(CheckpointError, match=r"model.dropout \(0.1 -> 0.4\)"):
        run.check_resumable(stored, config, tmp_path)


def test_the_recorded_command_names_the_device_settings(monkeypatch):
    from fmnist_jax import cli  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr("sys.argv", ["scripts/train.py", "--seeds=4"])
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "2")
    assert cli.command_line() == "JAX_NUM_CPU_DEVICES=2 python scripts/train.py --seeds=4"
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES")
    assert cli.command_line() == "python scripts/train.py --seeds=4"
