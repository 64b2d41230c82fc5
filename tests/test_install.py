"""The project as a user installs it: a wheel built from this checkout, installed (not editable)
into a fresh virtualenv, runs `fmnist-jax train` from another folder, with the packaged configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e


def build_wheel(out: Path) -> Path:
    """The wheel of a clean copy of the checkout (no build files left in the clone); offline: the
    build backend is the test environment's own setuptools."""
    source = out / "source"
    shutil.copytree(ROOT / "fmnist_jax", source / "fmnist_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(source)], check=True, capture_output=True, text=True)
    return next(out.glob("fmnist_jax-*.whl"))


def fresh_venv(folder: Path) -> Path:
    """A virtualenv whose only fmnist_jax is the one installed into it; the dependencies come from
    this interpreter's site-packages, appended after the venv's own (no download)."""
    venv.EnvBuilder(with_pip=False).create(folder)
    site = next((folder / "lib").glob("python3*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder / "bin"


def test_a_wheel_installed_in_a_fresh_venv_trains_from_another_folder(tmp_path, real_data_dir):
    wheel = build_wheel(tmp_path / "wheel")
    assert "fmnist_jax/configs/tuned/mlp.py" in zipfile.ZipFile(wheel).namelist()
    bin_dir = fresh_venv(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install",
                    "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"JAX_PLATFORMS": "cpu"}
    where = subprocess.run([bin_dir / "python", "-c", "import fmnist_jax; print(fmnist_jax.__file__)"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True)
    assert where.stdout.startswith(str(tmp_path / "venv")), where.stdout
    done = subprocess.run([bin_dir / "fmnist-jax", "train", "--model=mlp", "--epochs=1",
                           "--train-limit=512", f"--data-dir={real_data_dir}", "--quiet"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (workdir,) = (elsewhere / "checkpoints").iterdir()  # the default workdir, under this folder
    assert json.loads((workdir / "summary.json").read_text())["epochs_completed"] == 1
    assert json.loads((workdir / "config.json").read_text())["command"].startswith(
        "fmnist-jax train --model=mlp")
