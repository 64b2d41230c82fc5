"""Configs: Python files returning an `ml_collections.ConfigDict`, overridden from the command line."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import ml_collections

from fmnist_jax.errors import ConfigError
from fmnist_jax.models import COMPUTE_DTYPES, MODELS
from fmnist_jax.models.layers import CONV_IMPLS, POOL_IMPLS
from fmnist_jax.train import MEMBER_STRATEGIES

# the model configs, tuned recipes, seed replicas and searches: package data, so `--model` and
# `--config=configs/...` work wherever the package is installed
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "onecycle", "plateau")
EPOCH_MODES = ("auto", "loop", "scan")


def base_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with defaults; model configs change what differs."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "cnn"})
    c.seed = 0
    c.num_seeds = 1
    c.epochs = 10
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.label_smoothing = 0.0
    c.early_stopping_patience = 0  # epochs without a better validation accuracy; 0 = off
    c.ema_decay = 0.0  # > 0: keep an exponential moving average of the weights, and evaluate it
    c.compute_dtype = "float32"  # or bfloat16: activations and matmuls; parameters stay float32
    c.tta = False  # predict (validate, test, evaluate) on each image and its mirror, averaged

    c.augment = ml_collections.ConfigDict()  # on-device, inside the compiled step; all off here
    c.augment.translate = 0  # random translation by up to N pixels (pad and crop)
    c.augment.flip = False  # random horizontal flip
    c.augment.erase = 0  # random erasing (cutout) of an N x N square
    c.augment.rotate = 0.0  # random rotation by up to N degrees either way
    c.augment.zoom = 0.0  # random zoom by a scale in [1 - N, 1 + N]

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""  # empty: search the default sources
    c.data.val_fraction = 0.1
    c.data.split_seed = 0  # fixed apart from `seed` so every run validates on the same images
    c.data.train_limit = 0  # > 0: train on the first N training images only

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.0  # adamw only; never applied to biases or norm scales
    c.optimizer.momentum = 0.9  # sgd only
    c.optimizer.nesterov = False  # sgd only
    c.optimizer.b1 = 0.9  # adam and adamw
    c.optimizer.b2 = 0.999  # adam and adamw
    c.optimizer.grad_clip_norm = 0.0  # > 0: clip the global gradient norm

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "constant"
    c.schedule.warmup_epochs = 0.0  # warmup_cosine
    c.schedule.end_factor = 0.0  # warmup_cosine: final lr as a fraction of the peak
    c.schedule.plateau_metric = "val_accuracy"  # plateau: or val_loss
    c.schedule.plateau_factor = 0.5
    c.schedule.plateau_patience = 2
    c.schedule.plateau_min_factor = 0.01

    c.member_strategy = "auto"  # several seeds: vmap (side by side) or map (one after another)
    c.epoch_mode = "auto"  # loop: one jitted step per batch; scan (auto): one dispatch per epoch
    c.scan_unroll = 1
    c.checkpoints_to_keep = 2
    c.sweep = ()  # set by --sweep (sweep.py): 'FIELD=V1,V2,...' per varied field
    return c


def find_config_file(path: str | Path) -> Path:
    """`path` if it is a file; else `configs/REST` names the packaged `CONFIG_DIR/REST` (the
    recipes' documented paths work from any folder, and from an installed wheel)."""
    path = Path(path)
    packaged = CONFIG_DIR.joinpath(*path.parts[1:])
    if not path.is_file() and path.parts[:1] == ("configs",) and packaged.is_file():
        return packaged
    return path


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Calls `get_config()` of the Python file at `path` (see `find_config_file`)."""
    path = find_config_file(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; model configs: "
                          f"{', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.py')))}")
    spec = importlib.util.spec_from_file_location(f"fmnist_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config()
    except Exception as e:  # pylint: disable=broad-except  # any error in the user's file
        raise ConfigError(f"config file {path} failed to load ({type(e).__name__}: {e}); fix it "
                          f"so that get_config() returns a ConfigDict") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path}: get_config() returned {type(config).__name__}, "
                          f"not an ml_collections.ConfigDict")
    return config


def model_config_path(model: str) -> Path:
    path = CONFIG_DIR / f"{model}.py"
    if model not in MODELS or not path.is_file():
        raise ConfigError(f"unknown model {model!r}; valid models: {', '.join(MODELS)}")
    return path


def with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A run's stored (JSON) config with every field it predates set to its default: the
    behaviour the run had, since a new field's default keeps the old behaviour."""
    def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        return base | {k: merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict)
                       else v for k, v in over.items()}
    return merged(json.loads(base_config().to_json()), stored)  # as JSON: tuples as lists


def model_config(model: str) -> ml_collections.ConfigDict:
    """The config of `configs/<model>.py`; tuned recipes and replicas start from it."""
    return load_config_file(model_config_path(model))


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """`{'optimizer.learning_rate': 0.001, ...}` for every leaf field."""
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _parse_value(field: str, text: str, current: Any) -> Any:
    """`text` converted to the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
            kinds = {type(v) for v in current}
            if not isinstance(value, (tuple, list)) or any(type(v) not in kinds for v in value):
                raise ValueError(text)
            return tuple(value)
        return text
    except (ValueError, SyntaxError):
        raise ConfigError(f"--config.{field}={text!r} is not a valid {type(current).__name__}; "
                          f"give one like its current value {current!r}") from None


def apply_override(config: ml_collections.ConfigDict, field: str, text: str) -> None:
    """Sets the dotted `field` from its command-line text, or names the closest valid field."""
    fields = flatten(config)
    if field not in fields:
        close = difflib.get_close_matches(field, list(fields), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown config field {field!r}; {hint}see --help for the valid fields")
    set_field(config, field, _parse_value(field, text, fields[field]))


def set_field(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
    """Sets the dotted `field` (e.g. 'optimizer.learning_rate') to `value`, whatever its type."""
    *parents, leaf = field.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    with node.ignore_type():
        node[leaf] = value


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects values no run could use, naming the field and the valid range."""
    _require(config.model.name in MODELS,
             f"unknown model {config.model.name!r}; valid models: {', '.join(MODELS)}")
    for field in ("epochs", "batch_size", "eval_batch_size", "num_seeds"):
        _require(config[field] > 0, f"config.{field} must be positive, got {config[field]}")
    _require(0 < config.optimizer.learning_rate < math.inf,
             f"config.optimizer.learning_rate must be positive and finite, got "
             f"{config.optimizer.learning_rate}")
    _require(0 < config.data.val_fraction < 1,
             f"config.data.val_fraction must lie in (0, 1), got {config.data.val_fraction}")
    _require(config.data.train_limit >= 0, "config.data.train_limit must be >= 0 (0 = all)")
    _require(0 <= config.label_smoothing < 1, "config.label_smoothing must lie in [0, 1)")
    _require(0 <= config.augment.translate < 14 and 0 <= config.augment.erase <= 28,
             "config.augment.translate must lie in [0, 14) and config.augment.erase in [0, 28]")
    _require(0 <= config.augment.rotate <= 180 and 0 <= config.augment.zoom < 1,
             "config.augment.rotate (degrees) must lie in [0, 180] and config.augment.zoom in "
             "[0, 1)")
    _require(0 <= config.ema_decay < 1, "config.ema_decay must lie in [0, 1) (0 = off)")
    for field in ("momentum", "b1", "b2"):
        _require(0 <= config.optimizer[field] < 1,
                 f"config.optimizer.{field} must lie in [0, 1), got {config.optimizer[field]}")
    _require(config.optimizer.weight_decay >= 0 and config.optimizer.grad_clip_norm >= 0,
             "config.optimizer.weight_decay and config.optimizer.grad_clip_norm must be >= 0")
    _require(config.compute_dtype in COMPUTE_DTYPES,
             f"unknown compute_dtype {config.compute_dtype!r}; valid: {', '.join(COMPUTE_DTYPES)}")
    _require(config.early_stopping_patience >= 0, "config.early_stopping_patience must be >= 0")
    _require(config.optimizer.name in OPTIMIZERS,
             f"unknown optimizer {config.optimizer.name!r}; valid: {', '.join(OPTIMIZERS)}")
    _require(config.schedule.name in SCHEDULES,
             f"unknown schedule {config.schedule.name!r}; valid: {', '.join(SCHEDULES)}")
    _require(config.schedule.plateau_metric in ("val_accuracy", "val_loss"),
             "config.schedule.plateau_metric must be val_accuracy or val_loss")
    for field, valid in (("conv_impl", CONV_IMPLS), ("pool_impl", POOL_IMPLS)):
        _require(config.model.get(field, "auto") in valid,
                 f"unknown model.{field} {config.model.get(field)!r}; valid: {', '.join(valid)}")
    _require(config.member_strategy in MEMBER_STRATEGIES,
             f"unknown member_strategy {config.member_strategy!r}; valid: "
             f"{', '.join(MEMBER_STRATEGIES)}")
    _require(config.epoch_mode in EPOCH_MODES,
             f"unknown epoch_mode {config.epoch_mode!r}; valid: {', '.join(EPOCH_MODES)}")
    _require(config.checkpoints_to_keep >= 1, "config.checkpoints_to_keep must be >= 1")
