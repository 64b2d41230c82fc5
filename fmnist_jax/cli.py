"""Command-line plumbing shared by the scripts: config flags, and errors as one clear line."""

from __future__ import annotations

import argparse
import difflib
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import ml_collections

from fmnist_jax import config as config_lib
from fmnist_jax import sharding
from fmnist_jax.errors import ConfigError, TrainingDiverged, UserError
from fmnist_jax.models import MODELS

# Shorthand flags and the config fields they set.
SHORTHANDS = {
    "epochs": ("epochs", int, "training epochs"),
    "batch_size": ("batch_size", int, "training batch size (global, across devices)"),
    "learning_rate": ("optimizer.learning_rate", float, "peak learning rate"),
    "seed": ("seed", int, "seed of the first member: fixes initialisation, data order, dropout"),
    "seeds": ("num_seeds", int, "train N members with seeds SEED..SEED+N-1 at once (jax.vmap); "
              "on a multi-core CPU, JAX_NUM_CPU_DEVICES=2 (or more) puts them on separate cores"),
    "data_dir": ("data.dir", str, "folder of the four IDX .gz files, or a tfds data dir"),
    "train_limit": ("data.train_limit", int, "train on the first N training images only"),
}


def _fields_help() -> str:
    base = config_lib.flatten(config_lib.base_config())
    lines = ["config fields (override any with --config.FIELD=VALUE):"]
    lines += [f"  {k} = {v!r}" for k, v in base.items() if k != "model.name"]
    lines.append("model fields (--config.model.FIELD=VALUE), per model config:")
    for name in MODELS:
        model = config_lib.model_config(name).model
        fields = ", ".join(f"{k}={v!r}" for k, v in model.items() if k != "name")
        lines.append(f"  {name}: {fields}")
    return "\n".join(lines)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """--model/--config, the shorthands, and the listing of every config field in --help."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", choices=list(MODELS), metavar="NAME",
                       help=f"model to train: {', '.join(MODELS)} (short for "
                            f"--config=configs/NAME.py; default cnn)")
    group.add_argument("--config", metavar="PATH",
                       help="a config file (Python, get_config()), e.g. a tuned recipe "
                            "configs/tuned/cnn.py or a seed replica configs/replicas/s003_lstm.py")
    for flag, (_, kind, text) in SHORTHANDS.items():
        parser.add_argument("--" + flag.replace("_", "-"), type=kind, metavar=flag.upper(),
                            help=f"{text} (config.{SHORTHANDS[flag][0]})")
    parser.epilog = _fields_help()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """--mesh, and --distributed with the coordinates of a multi-process run."""
    group = parser.add_argument_group("devices and hosts")
    group.add_argument("--mesh", default="", metavar="AXES",
                       help="device mesh, e.g. data:4,seeds:2 (data splits each batch, seeds spreads "
                            "the members); default: every device, the seeds on gcd(seeds, devices) "
                            "of them and each batch split over the rest")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run (several hosts, or processes on one) with "
                            "jax.distributed.initialize(); every process runs the same command")
    group.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help=f"address of process 0 (default ${sharding.PROCESS_ENV[0]})")
    group.add_argument("--num-processes", type=int, metavar="N",
                       help=f"number of processes (default ${sharding.PROCESS_ENV[1]})")
    group.add_argument("--process-id", type=int, metavar="I",
                       help=f"this process, 0..N-1 (default ${sharding.PROCESS_ENV[2]}); unset "
                            f"values are detected on Slurm, Open MPI, Kubernetes and Cloud TPU")


def start_devices(args: argparse.Namespace) -> None:
    """With --distributed, joins the other processes; call it before anything uses a device."""
    process = (args.coordinator_address, args.num_processes, args.process_id)
    if not args.distributed:
        if any(value is not None for value in process):
            raise ConfigError("--coordinator-address, --num-processes and --process-id need "
                              "--distributed")
        return
    sharding.initialize_distributed(*process)


def resolve_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   rest: Sequence[str]) -> ml_collections.ConfigDict:
    """The config file's config, with --config.FIELD overrides, then the shorthands applied."""
    path = args.config or config_lib.model_config_path(args.model or "cnn")
    config = config_lib.load_config_file(path)
    rest = list(rest)
    while rest:
        item = rest.pop(0)
        if not item.startswith("--config."):
            # pylint: disable-next=protected-access
            flags = [f for action in parser._actions for f in action.option_strings]
            close = difflib.get_close_matches(item.partition("=")[0], flags, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            parser.error(f"unrecognized argument {item!r}; {hint}see --help")
        field, sep, value = item[len("--config."):].partition("=")
        if not sep:
            if not rest:
                parser.error(f"{item} needs a value: {item}=VALUE")
            value = rest.pop(0)
        config_lib.apply_override(config, field, value)
    for flag, (field, _, _) in SHORTHANDS.items():
        value = getattr(args, flag)
        if value is not None:
            config_lib.apply_override(config, field, str(value))
    config_lib.validate(config)
    return config


# environment variables that change how a run is laid out on the devices, kept in its command
DEVICE_ENV = ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")


def command_line() -> str:
    """This process's command as a user would type it, with the device settings it ran under."""
    settings = [f"{name}={os.environ[name]}" for name in DEVICE_ENV if os.environ.get(name)]
    program, *args = sys.argv
    name = Path(program).name
    head = (["fmnist-jax"] if name == "fmnist-jax"  # the installed command
            else ["python", "-m", "fmnist_jax"] if name == "__main__.py" else ["python", program])
    return shlex.join([*settings, *head, *args])


class Parser(argparse.ArgumentParser):
    """The scripts' argument parser: its errors are one line (no usage block), raised as a
    `ConfigError` for `main_guard` to print and exit on."""

    def __init__(self, description: str | None = None, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(description=description, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message if "--help" in message else f"{message}; see --help")


def add_data_flag(parser: argparse.ArgumentParser,
                  default: str = "where the run was trained from, else the usual search") -> None:
    """--data-dir, as train.py has it, for a script that reads the dataset."""
    parser.add_argument("--data-dir", metavar="DATA_DIR",
                        help=f"{SHORTHANDS['data_dir'][2]} (default: {default})")


def add_tta_flag(parser: argparse.ArgumentParser, default_text: str) -> None:
    """--tta/--no-tta: flip test-time augmentation (each image and its mirror, probabilities
    averaged); None when not given, so the recorded default applies."""
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help=f"average the class probabilities of each image and its mirror "
                             f"(default: {default_text})")


MEMBER_FLAGS = ("setting", "seed", "member")


def add_member_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """--setting, --seed and --member: which members of a multi-seed run or sweep the command
    reads (`restore.select`), each of them refused with --member. `what` says what they do
    without any (e.g. 'all members')."""
    group = parser.add_argument_group("members",
                                      f"of a multi-seed run or a sweep (default: {what})")
    group.add_argument("--setting", type=whole_number(0), metavar="K",
                       help="of a sweep: the members of setting K (see its sweep.md); default "
                            "the best setting, chosen on the validation split")
    group.add_argument("--seed", type=int, metavar="S",
                       help="only the member of seed S (of a sweep: of the setting)")
    group.add_argument("--member", type=whole_number(0), metavar="K",
                       help="only member K (of a sweep: setting K // seeds, seed "
                            "SEED + K %% seeds)")


def member_choice(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `restore.select` the member flags give; --member refused with
    --setting or --seed, which it contradicts."""
    refuse_together(parser, args, "--member", ["seed", "setting"],
                    "it names the member itself; give one of them")
    return {flag: getattr(args, flag) for flag in MEMBER_FLAGS}


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type`: a whole number from `low` to `high` (None: no upper bound)."""
    allowed = f"from {low} to {high}" if high is not None else f"of {low} or more"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number {allowed}, got {text!r}")
        return value

    return parse


def _writable_place(path: Path, folder: Path) -> None:
    """Refuses `path` unless `folder`, or its nearest existing parent, is a folder that can take
    new files (probed; nothing is left behind)."""
    folder = folder.absolute()
    nearest = next(p for p in (folder, *folder.parents) if p.exists())
    if not nearest.is_dir():
        raise argparse.ArgumentTypeError(f"{path} lies under {nearest}, which is a file; give a "
                                         f"path in a folder")
    try:
        tempfile.TemporaryDirectory(dir=nearest).cleanup()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{path}: cannot write in {nearest} ({e.strerror}); "
                                         f"give a writable path") from None


def output_dir(text: str) -> Path:
    """An argparse `type`: a folder to write into, existing or to be made (checked, not made)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder; give a folder to "
                                         f"write into")
    _writable_place(path, path)
    return path


def output_file(text: str) -> Path:
    """An argparse `type`: a file (or file prefix) to write, in a folder existing or to be made."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name")
    _writable_place(path, path.parent)
    return path


def refuse_together(parser: argparse.ArgumentParser, args: argparse.Namespace, flag: str,
                    others: Sequence[str], why: str) -> None:
    """Refuses `flag` given together with any of the `others` (argparse destinations), which it
    contradicts; `why` says what `flag` does instead. A flag is given when it is off its default."""
    def given(dest: str) -> bool:
        return getattr(args, dest) != parser.get_default(dest)

    clashing = [f"--{o.replace('_', '-')}" for o in others if given(o)]
    if given(flag.lstrip("-").replace("-", "_")) and clashing:
        parser.error(f"{flag} cannot be combined with {', '.join(clashing)}: {why}")
def add_runtime_flag(parser: argparse.ArgumentParser) -> None:
    """--runtime: which exported model runs (see runtime.py)."""
    parser.add_argument("--runtime", choices=("jax", "onnx"), default="jax",
                        help="jax runs model.jaxexport (default); onnx runs model.onnx with "
                             "onnxruntime (the [onnx] extra)")


def main_guard(main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> None:
    """Runs `main`, turning the errors a user can fix into one line on stderr and an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        main([a for a in argv if a != "--debug"])
    except (UserError, TrainingDiverged) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted; run the same command to resume",
              file=sys.stderr)
        sys.exit(130)


def default_workdir(model: str) -> Path:
    import datetime  # pylint: disable=import-outside-toplevel
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("checkpoints") / f"{model}-{stamp}"
