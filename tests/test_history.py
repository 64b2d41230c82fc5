"""metrics.jsonl at resume: a damaged history is refused with one line naming the file and the line
(exit 3), never dropped quietly; summary.json counts the epochs really trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import subprocess_runs as runs
from fmnist_jax import workdir as workdir_lib
from fmnist_jax.errors import DamagedRun


def _record(epoch: int) -> dict:
    return {"epoch": epoch, **{name: 0.5 for name in workdir_lib.HISTORY_FIELDS}}


def _write(workdir: Path, lines: list[str]) -> Path:
    (workdir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return workdir / "metrics.jsonl"


GOOD = [json.dumps(_record(1)), json.dumps(_record(2)), json.dumps(_record(3))]
DAMAGED = {
    "garbled": '{"epoch": 2, "train_lo',
    "a list": "[1, 2]",
    "a number": "7",
    "wrong epoch": json.dumps(_record(1)),
    "no epoch": json.dumps({k: v for k, v in _record(2).items() if k != "epoch"}),
    "a field missing": json.dumps({k: v for k, v in _record(2).items() if k != "seconds"}),
    "a text value": json.dumps(_record(2) | {"train_seconds": "fast"}),
    "a boolean epoch": json.dumps(_record(2) | {"epoch": True}),
    "empty": "",
}


def test_a_whole_history_reads_back(tmp_path):
    _write(tmp_path, GOOD)
    assert workdir_lib.read_history(tmp_path) == [_record(1), _record(2), _record(3)]


def test_a_last_line_cut_short_by_a_kill_is_dropped_and_a_complete_one_kept(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(GOOD[0] + "\n" + GOOD[1][:20])
    assert workdir_lib.read_history(tmp_path) == [_record(1)]
    (tmp_path / "metrics.jsonl").write_text(GOOD[0] + "\n" + GOOD[1])
    assert workdir_lib.read_history(tmp_path) == [_record(1), _record(2)]


@pytest.mark.parametrize("kind", DAMAGED)
def test_a_damaged_line_is_refused_naming_the_file_and_line(kind, tmp_path):
    path = _write(tmp_path, [GOOD[0], DAMAGED[kind], GOOD[2]])
    with pytest.raises(DamagedRun, match=f"^{path} line 2 is damaged: .*; restore the file"):
        workdir_lib.read_history(tmp_path)
    assert DamagedRun.exit_code == 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small run of 2 epochs (checkpoint at epoch 2)."""
    workdir = tmp_path_factory.mktemp("history") / "run"
    result = runs.run_main("train", *runs.SMALL_RUN, "--epochs=2", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    return workdir


def _damage(lines: list[str], kind: str) -> list[str]:
    if kind == "line 2 dropped":
        return lines[:1]
    return [lines[0], {"garbled": lines[1][:30] + "}{", "wrong shape": "[2]"}[kind]]


@pytest.mark.e2e
@pytest.mark.parametrize("kind, in_script", [("garbled", True), ("wrong shape", False),
                                             ("line 2 dropped", False)])
def test_resuming_a_damaged_history_fails_with_one_line_and_changes_nothing(kind, in_script,
                                                                            trained, tmp_path):
    """One kind as a real script; the others, refused at the same place (reading the history
    after the checkpoint is restored, before anything is compiled), run the script's main in this
    process."""
    workdir = Path(shutil.copytree(trained, tmp_path / "run"))
    path = _write(workdir, _damage((workdir / "metrics.jsonl").read_text().splitlines(), kind))
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    result = (runs.run if in_script else runs.run_main)("train", *runs.SMALL_RUN,
                                                        f"--workdir={workdir}")
    line = runs.one_line_error(result, 3)
    assert line.startswith(f"error: {path} ") and "new --workdir" in line, line
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
