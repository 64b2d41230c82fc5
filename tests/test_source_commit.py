"""The commit a run records: the project's own checkout's, never an enclosing repository's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def copy_project(dest: Path) -> Path:
    shutil.copytree(ROOT / "fmnist_jax", dest / "fmnist_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def recorded_commit(project: Path) -> list[str]:
    """`workdir.source_commit()` as the copy at `project` computes it, in a fresh process."""
    code = "from fmnist_jax import workdir; print(*workdir.source_commit(), sep='\\n')"
    done = subprocess.run([sys.executable, "-c", code], cwd=project, check=True,
                          capture_output=True, text=True, env={"PYTHONPATH": str(project),
                                                               "PATH": "/usr/bin:/bin"})
    return done.stdout.splitlines()


def test_a_copy_inside_another_repository_records_no_commit(tmp_path):
    outer = tmp_path / "outer"
    outer.mkdir()
    git(outer, "init", "-q")
    project = copy_project(outer / "vendored" / "fmnist-jax")
    git(outer, "add", "-A")
    git(outer, "commit", "-qm", "outer")
    commit, note = recorded_commit(project)
    assert commit == "None"
    assert "not a git checkout of its own" in note and str(outer) in note


def test_a_checkout_of_its_own_records_its_head(tmp_path):
    project = copy_project(tmp_path / "fmnist-jax")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "project")
    head = git(project, "rev-parse", "HEAD")
    assert recorded_commit(project)[0] == head
    (project / "fmnist_jax" / "configs" / "cnn.py").write_text("# edited\n")
    assert recorded_commit(project)[0] == head + "+dirty"


def test_a_copy_outside_any_repository_records_no_commit(tmp_path):
    commit, note = recorded_commit(copy_project(tmp_path / "fmnist-jax"))
    assert commit == "None" and "not a git checkout" in note
