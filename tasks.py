#!/usr/bin/env python3
"""Sets everything up on a fresh machine (a virtualenv with the project installed), then runs a
task in it. Needs only python3.

  python3 tasks.py train --model=cnn --epochs=2   # any command: train, evaluate, predict, export,
                                                  # serve, similar, compare, benchmark
  python3 tasks.py test                           # the test suite (what CI runs); pytest flags too
  python3 tasks.py test -m "not e2e"              # the fast half: unit tests only
  python3 tasks.py --stack=oldest test            # in .venv-oldest: Python 3.11, the lower bounds
  python3 tasks.py --stack=newest test            # in .venv-newest: Python 3.13, newest releases

Stacks: `current` (default) is .venv with this python3 and the newest releases it resolves;
`oldest` pins every core dependency to its lower bound in pyproject.toml (ci/oldest.txt) on
Python 3.11; `newest` installs the newest jax and flax on Python 3.13. `--python=PATH` picks the
interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
PYENV = Path.home() / ".pyenv" / "versions"
# stack -> (virtualenv, default interpreter, pip constraints)
STACKS = {
    "current": (ROOT / ".venv", sys.executable, None),
    "oldest": (ROOT / ".venv-oldest", str(PYENV / "3.11.7" / "bin" / "python3"), ROOT / "ci" / "oldest.txt"),
    "newest": (ROOT / ".venv-newest", str(PYENV / "3.13.0" / "bin" / "python3"), None),
}
# what the end-to-end tests need from the system: Debian package -> a file it installs
TEST_NEEDS = {"dataset-fashion-mnist": DATA_DIR / "train-images-idx3-ubyte.gz",
              "chromium": Path("/usr/bin/chromium"), "chromium-driver": Path("/usr/bin/chromedriver")}


def ensure_environment(stack: str, python: str | None) -> Path:
    """Creates the stack's virtualenv and installs the project with its test extra (which takes
    the serve, onnx and tensorboard extras) when pyproject.toml or the constraints changed."""
    folder, default_python, constraints = STACKS[stack]
    executable = folder / "bin" / "python"
    if not executable.exists():
        print(f"creating {folder}", flush=True)
        if stack == "current" and not python:
            venv.EnvBuilder(with_pip=True).create(folder)
        else:
            subprocess.run([python or default_python, "-m", "venv", folder], check=True)
    stamp = folder / ".installed-pyproject"
    wanted = (ROOT / "pyproject.toml").read_text() + (constraints.read_text() if constraints else "")
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing fmnist-jax and its dependencies into {folder}", flush=True)
        pip = [executable, "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *(["-c", constraints] if constraints else []),
                        *(["--upgrade", "--upgrade-strategy=eager"] if stack == "newest" else []),
                        "-e", f"{ROOT}[test]"], check=True)
        stamp.write_text(wanted)
    return executable


def ensure_test_needs() -> bool:
    """The data and the browser of the end-to-end tests: installed when root, else named in one
    line; False when something is still missing."""
    missing = [package for package, path in TEST_NEEDS.items() if not path.exists()]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
        missing = [package for package, path in TEST_NEEDS.items() if not path.exists()]
    if missing:
        print(f"error: the tests need {', '.join(missing)}; install them with `sudo apt-get "
              f"install -y {' '.join(missing)}` (or run only the unit tests: python3 tasks.py "
              f"test -m 'not e2e')", file=sys.stderr)
    return not missing


def warn_if_no_data() -> None:
    if not DATA_DIR.is_dir() and not os.environ.get("TFDS_DATA_DIR"):
        print(f"note: {DATA_DIR} is missing; offline, install it with "
              f"`sudo apt-get install -y dataset-fashion-mnist` (online, tfds downloads the data)",
              file=sys.stderr)


def main(argv: list[str]) -> int:
    options = {}
    while argv and argv[0].startswith(("--stack=", "--python=")):
        key, _, value = argv.pop(0)[2:].partition("=")
        options[key] = value
    stack = options.get("stack", "current")
    if not argv or argv[0] in ("-h", "--help") or stack not in STACKS:
        print(__doc__)
        return 0 if stack in STACKS else 2
    task, rest = argv[0], argv[1:]
    unit_only = "not e2e" in rest
    if task == "test" and not unit_only and not ensure_test_needs():
        return 2
    python = ensure_environment(stack, options.get("python"))
    if task == "test":
        command = [python, "-m", "pytest", "-n", "2", "--dist=loadgroup", *rest]
    else:
        warn_if_no_data()
        command = [python, "-m", "fmnist_jax", task, *rest]
    return subprocess.run(command, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
