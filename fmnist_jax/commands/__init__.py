"""The commands of fmnist-jax, one module each, and `fmnist-jax COMMAND ...` that dispatches them.

  fmnist-jax train --model=cnn --epochs=2       # = python scripts/train.py ... in a clone
  fmnist-jax evaluate --workdir=DIR             # any command: fmnist-jax COMMAND --help
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from fmnist_jax import cli

COMMANDS = {
    "train": "trains (or resumes) a run",
    "evaluate": "evaluates a workdir or release on a split",
    "predict": "classifies image files",
    "export": "makes a release from a finished run",
    "serve": "serves a release or workdir over HTTP",
    "similar": "the most similar training images of your pictures",
    "compare": "puts evaluated workdirs side by side",
    "benchmark": "training and evaluation speed of every model",
}


def module(name: str) -> ModuleType:
    """The module of command `name` (its `main(argv)` and its `--help` text)."""
    return importlib.import_module(f"fmnist_jax.commands.{name}")


def run(name: str, argv: Sequence[str] | None = None) -> None:
    """Runs command `name` on `argv` (default: this process's arguments) as its script does."""
    cli.main_guard(module(name).main, sys.argv[1:] if argv is None else argv)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "usage: fmnist-jax COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """`fmnist-jax COMMAND ARGS`: the installed command ([project.scripts] in pyproject.toml)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        sys.exit(2)
    run(argv[0], argv[1:])
