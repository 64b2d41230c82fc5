"""One writer per workdir or release: a second is refused with one line naming the first, which
goes on untouched; a lock of a dead process is taken over; concurrent exports leave one complete
release (issue 23, point 3)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import subprocess_runs as runs
from conftest import PRETRAINED
from fmnist_jax import integrity, locking, release



def holder_line(folder: Path, pid: int) -> str:
    return f"{folder} is being written by another process: PID {pid} ("


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    folder = tmp_path / "run"
    with locking.exclusive(folder):
        held = json.loads(locking.lock_path(folder).read_text())
        assert held["pid"] == os.getpid() and held["command"]
        with pytest.raises(locking.Locked) as refused:
            locking.acquire(folder)
        assert str(refused.value).startswith(holder_line(folder, os.getpid()))
    assert not locking.lock_path(folder).exists()  # removed by its holder
    with locking.exclusive(folder):  # and free again
        pass


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    code = (f"from fmnist_jax import locking; import os, signal; locking.acquire({str(folder)!r});"
            f" os.kill(os.getpid(), signal.SIGKILL)")
    died = subprocess.run([sys.executable, "-c", code], env=runs.script_env(), check=False)
    assert died.returncode == -signal.SIGKILL
    assert json.loads(locking.lock_path(folder).read_text())["pid"] != os.getpid()  # left behind
    with locking.exclusive(folder):
        assert json.loads(locking.lock_path(folder).read_text())["pid"] == os.getpid()


def test_an_export_into_a_release_being_written_is_refused_and_changes_nothing(tmp_path):
    out = Path(shutil.copytree(PRETRAINED / "mlp", tmp_path / "mlp"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with locking.exclusive(out), pytest.raises(locking.Locked, match="being written by"):
        release.export(PRETRAINED / "cnn", out, overwrite=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def wait_until_stopped(process: subprocess.Popen, timeout: float = 300) -> None:
    """Polls /proc until `process` is stopped (SIGSTOP); fails if it ends first."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{process.pid}/stat").read_text().split(") ")[1][0] != "T":
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never paused"
        time.sleep(0.05)


@pytest.mark.e2e
def test_a_second_training_in_a_workdir_is_refused_and_the_first_completes(tmp_path):
    workdir = tmp_path / "run"
    args = (*runs.SMALL_RUN, f"--workdir={workdir}")
    first = subprocess.Popen(runs.command("train", *args, fault="pause@20"), cwd=runs.ROOT,
                             env=runs.script_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_until_stopped(first)  # mid-epoch 2, holding the workdir
        # the second run's main in this process (refused before it reads anything); real
        # scripts refused by a real holder: test_three_concurrent_overwrites_...
        line = runs.one_line_error(runs.run_main("train", *args), 2)
        assert line.startswith(f"error: {holder_line(workdir, first.pid)}"), line
        assert "scripts/train.py" in line
        first.send_signal(signal.SIGCONT)
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert [r["epoch"] for r in runs.metrics(workdir)] == [1, 2, 3]
    assert runs.summary(workdir)["epochs_completed"] == 3
    assert not locking.lock_path(workdir).exists()


@pytest.mark.e2e
def test_three_concurrent_overwrites_leave_one_complete_release_and_say_so(tmp_path):
    """The cnn release overwritten by the mlp one (the cheaper of the two to export)."""
    out = Path(shutil.copytree(PRETRAINED / "cnn", tmp_path / "cnn"))
    integrity.record(out)
    command = runs.command("export", f"--workdir={PRETRAINED / 'mlp'}", f"--out={out}",
                           "--overwrite")
    stop, missing = threading.Event(), []

    def read_while_written() -> None:  # a reader finds the old or the new release, never none
        while not stop.is_set():
            if not (out / "release.json").is_file():
                missing.append(time.monotonic())
            time.sleep(0.001)

    reader = threading.Thread(target=read_while_written)
    reader.start()
    try:
        exports = [subprocess.Popen(command, cwd=runs.ROOT, env=runs.script_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(3)]
        outputs = [e.communicate(timeout=300) for e in exports]
    finally:
        stop.set()
        reader.join()
    for export, (stdout, stderr) in zip(exports, outputs):
        if export.returncode == 0:
            assert stdout.startswith("released mlp (seeds [0], test accuracy 90.48%"), stdout
            assert f") to {out}: " in stdout, stdout
        else:
            assert export.returncode == 2 and "Traceback" not in stderr, stderr
            assert stderr.strip().splitlines()[-1].startswith(f"error: {out} is being written by "
                                                              f"another process: PID "), stderr
    assert any(e.returncode == 0 for e in exports)
    assert not missing
    integrity.verify(out)
    assert json.loads((out / "release.json").read_text())["model"] == "mlp"
    assert sorted(p.name for p in out.parent.iterdir()) == ["cnn"]  # no .partial, .old, .lock
