#!/usr/bin/env python3
"""Sets everything up on a fresh machine (a virtualenv in .venv with the project installed), then
runs a task in it. Needs only python3.

  python3 tasks.py train --model=cnn --epochs=2   # any scripts/train.py flags
  python3 tasks.py test                           # the test suite (what CI runs)
  python3 tasks.py evaluate --workdir=DIR         # any script in scripts/ by name
  python3 tasks.py serve --workdir=checkpoints/pretrained/cnn   # the model over HTTP, port 8000
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed-pyproject"
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")


def ensure_environment() -> None:
    """Creates .venv and installs the project with its test extra (which takes the serve, onnx
    and tensorboard extras) when pyproject.toml changed."""
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pyproject = (ROOT / "pyproject.toml").read_text()
    if not STAMP.exists() or STAMP.read_text() != pyproject:
        print("installing fmnist-jax and its dependencies into .venv", flush=True)
        subprocess.run([PYTHON, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([PYTHON, "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]"], check=True)
        STAMP.write_text(pyproject)


def warn_if_no_data() -> None:
    if not DATA_DIR.is_dir() and not os.environ.get("TFDS_DATA_DIR"):
        print(f"note: {DATA_DIR} is missing; offline, install it with "
              f"`sudo apt-get install -y dataset-fashion-mnist` (online, tfds downloads the data)",
              file=sys.stderr)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    task, rest = argv[0], argv[1:]
    ensure_environment()
    warn_if_no_data()
    if task == "test":
        command = [PYTHON, "-m", "pytest", "-n", "2", *rest]
    else:
        script = ROOT / "scripts" / f"{task}.py"
        if not script.is_file():
            names = sorted(p.stem for p in (ROOT / "scripts").glob("*.py"))
            print(f"error: unknown task {task!r}; tasks: test, {', '.join(names)}", file=sys.stderr)
            return 2
        command = [PYTHON, script, *rest]
    return subprocess.run(command, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
