"""Faults injected into the real training script: kills, Ctrl-C, NaN, corrupt checkpoints, disks.

Every interrupted run is resumed with the same command and must end bitwise where a run never
interrupted ends: the whole checkpointed state (parameters, optimizer, plateau and early-stopping
state, best-so-far record), its position, metrics.jsonl and the test results.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import chex
import numpy as np
import pytest

import subprocess_runs as runs
from conftest import PRETRAINED
from fmnist_jax import integrity, release as release_lib, run
from fmnist_jax.errors import UserError

pytestmark = pytest.mark.e2e
LAST_STEP = 3 * runs.STEPS_PER_EPOCH


def train(workdir: Path, *extra: str, fault: str | None = None):
    return runs.run("train", *runs.SMALL_RUN, f"--workdir={workdir}", *extra, fault=fault)


def train_in_process(workdir: Path, *extra: str):
    """The same command through train's main in this process: for the runs that are not the
    faulty ones (the reference, the resumes), whose results, not processes, are compared."""
    return runs.run_main("train", *runs.SMALL_RUN, f"--workdir={workdir}", *extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The workdir of the run never interrupted."""
    workdir = tmp_path_factory.mktemp("reference")
    result = train_in_process(workdir)
    assert result.returncode == 0, result.stderr
    return workdir


def assert_resumes_to(workdir: Path, reference: Path, from_step: int | None,
                      in_process: bool = True) -> str:
    """Runs the same command again, checks it ends exactly where `reference` ended; its stderr
    (a script's, with its logged warnings, unless `in_process`)."""
    result = train_in_process(workdir) if in_process else train(workdir)
    assert result.returncode == 0, result.stderr
    if from_step is None:  # stopped before the first checkpoint was committed: starts afresh
        assert "resumed from" not in result.stdout
    else:
        assert f"resumed from checkpoint step {from_step}:" in result.stdout
    step, state, meta = runs.checkpoint(workdir)
    ref_step, ref_state, ref_meta = runs.checkpoint(reference)
    assert step == ref_step == LAST_STEP
    assert meta["position"] == ref_meta["position"] == {"epoch": 3, "step_in_epoch": 0,
                                                         "partial": None}
    runs.assert_bitwise_equal(state, ref_state)
    assert runs.metrics(workdir) == runs.metrics(reference)
    assert runs.summary(workdir) == runs.summary(reference)
    return result.stderr


@pytest.fixture(scope="module")
def ctrl_c_at_step_21(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The run stopped by Ctrl-C before global step 21 (`sigint@21`) and the workdir it left,
    which the tests that resume it copy (it stays pristine): one run for the two that need it."""
    workdir = tmp_path_factory.mktemp("ctrl-c") / "run"
    return train(workdir, fault="sigint@21"), workdir


def stopped_run(fault: str, workdir: Path, ctrl_c_at_step_21):
    """The run stopped by `fault` and the folder it stopped in; `workdir` holds what it left: a
    copy of the shared run for `sigint@21`, else a run of its own."""
    if fault != "sigint@21":
        return train(workdir, fault=fault), workdir
    stopped, pristine = ctrl_c_at_step_21
    shutil.copytree(pristine, workdir)
    return stopped, pristine


# fault, exit code, checkpoint steps left, position (epoch, step) of the latest, metrics lines
INJECTED = [
    pytest.param("sigkill@24", -signal.SIGKILL, [16], (1, 0), [1], id="sigkill-mid-epoch"),
    pytest.param("sigkill-after-save@16", -signal.SIGKILL, [], None, [1],
                 id="sigkill-while-saving-the-first-checkpoint"),
    pytest.param("sigkill-after-save@32", -signal.SIGKILL, [16], (1, 0), [1, 2],
                 id="sigkill-while-saving"),
    pytest.param("sigint@21", 130, [16, 22], (1, 6), [1], id="ctrl-c-mid-epoch"),
]


@pytest.mark.parametrize("fault, code, steps, position, lines", INJECTED)
def test_run_stopped_at_an_exact_step_resumes_to_the_uninterrupted_result(
        fault, code, steps, position, lines, tmp_path, reference, ctrl_c_at_step_21):
    workdir = tmp_path / "run"
    stopped, stopped_in = stopped_run(fault, workdir, ctrl_c_at_step_21)
    assert stopped.returncode == code, stopped.stderr
    assert runs.checkpoint_steps(workdir) == steps
    if steps:
        _, _, meta = runs.checkpoint(workdir)
        assert (meta["position"]["epoch"], meta["position"]["step_in_epoch"]) == position
    assert [r["epoch"] for r in runs.metrics(workdir)] == lines
    if fault.startswith("sigkill-after-save@"):  # the half-written step is there, and ignored
        step = fault.partition("@")[2]
        assert list((workdir / "checkpoints").glob(f"{step}.orbax-checkpoint-tmp*"))
    if code == 130:
        last = stopped.stderr.strip().splitlines()[-1]
        assert last.startswith(f"interrupted: saved checkpoint step {steps[-1]} in {stopped_in}; "
                               f"resume with: python "), last
        assert last.endswith(f"--workdir={stopped_in}"), last
    assert_resumes_to(workdir, reference, from_step=steps[-1] if steps else None)


@pytest.mark.parametrize("signum, moment", [
    pytest.param(signal.SIGKILL, "metrics.jsonl", id="sigkill-as-epoch-1-is-saved"),
    pytest.param(signal.SIGKILL, "checkpoints/16", id="sigkill-after-epoch-1-is-saved"),
    pytest.param(signal.SIGINT, "checkpoints/16", id="ctrl-c-after-epoch-1-is-saved"),
])
def test_signal_from_outside_at_any_moment_resumes_to_the_uninterrupted_result(
        signum, moment, tmp_path, reference):
    """The signal lands wherever the run happens to be when `moment` appears; any place works."""
    process = subprocess.Popen(runs.command("train", *runs.SMALL_RUN, f"--workdir={tmp_path}"),
                               env=runs.script_env(), cwd=runs.ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        runs.wait_for(tmp_path / moment, process)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if signum == signal.SIGINT:
        assert process.returncode == 130, stderr
        assert "interrupted: saved checkpoint step" in stderr and "Traceback" not in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    steps = runs.checkpoint_steps(tmp_path)
    assert_resumes_to(tmp_path, reference, from_step=steps[-1] if steps else None)


@pytest.mark.parametrize("extra, fault, message, steps", [
    pytest.param((), "nan@20", "at epoch 2, step 5 (global step 21, seed 0, learning rate "
                               "0.001); nothing was saved from this epoch (latest good checkpoint: "
                               "16)", [16], id="nan-weights-in-epoch-2"),
    pytest.param(("--config.optimizer.name=sgd", "--learning-rate=1e30"), None,
                 "at epoch 1, step 2 (global step 2, seed 0, learning rate 1e+30); nothing was "
                 "saved from this epoch (latest good checkpoint: None)", [],
                 id="learning-rate-1e30"),
])
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(extra, fault, message, steps,
                                                                    tmp_path):
    line = runs.one_line_error(train(tmp_path, *extra, fault=fault), 3)
    assert line == (f"error: the training loss became NaN or infinite {message}; lower "
                    f"--learning-rate or set --config.optimizer.grad_clip_norm")
    assert runs.checkpoint_steps(tmp_path) == steps
    assert len(runs.metrics(tmp_path)) == len(steps)
    if steps:
        chex.assert_tree_all_finite(runs.checkpoint(tmp_path)[1])


def _truncate_largest_array_file(step_dir: Path) -> None:
    largest = max((step_dir / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.truncate(1000)


def _flip_a_byte_in_array_data(step_dir: Path) -> None:
    """A byte in the middle of the largest array file inverted: it still decompresses, to other
    numbers (orbax's array store keeps no checksums of its own)."""
    largest = max((step_dir / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))


def _garble_run_record(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text("{not json")


def _delete_array_manifest(step_dir: Path) -> None:
    (step_dir / "state" / "manifest.ocdbt").unlink()


def _empty_step_folder(step_dir: Path) -> None:
    shutil.rmtree(step_dir)
    step_dir.mkdir()


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "flipped-byte-in-array-data": _flip_a_byte_in_array_data,
    "truncated-array-data": _truncate_largest_array_file,
    "garbled-run-record": _garble_run_record,
    "deleted-array-manifest": _delete_array_manifest,
    "emptied-step-folder": _empty_step_folder,
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(corrupt, tmp_path, reference):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    corrupt(workdir / "checkpoints" / str(LAST_STEP))
    previous = LAST_STEP - runs.STEPS_PER_EPOCH
    warnings = assert_resumes_to(workdir, reference, from_step=previous, in_process=False)
    assert f"checkpoint step {LAST_STEP} in {workdir / 'checkpoints'} is unreadable" in warnings
    assert f"moved unreadable checkpoint step {LAST_STEP} to" in warnings
    assert (workdir / "checkpoints-unreadable" / str(LAST_STEP)).is_dir()


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """The shipped mlp release exported anew: one checkpoint, with checksums."""
    out = tmp_path_factory.mktemp("release") / "mlp"
    release_lib.export(PRETRAINED / "mlp", out)  # a fixture, not under test: in this process
    return out


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_evaluating_a_release_with_a_corrupt_checkpoint_prints_one_line_and_nothing_after(
        corrupt, tmp_path, release):
    """Its only checkpoint unreadable: the error line alone, and no tracebacks after it from
    orbax's reads still under way when the first one failed."""
    copy = Path(shutil.copytree(release, tmp_path / "mlp"))
    step_dir = next((copy / "checkpoints").iterdir())
    corrupt(step_dir)
    integrity.record(copy)  # damaged before its manifest was taken: the checkpoint's own checks
    line = runs.one_line_error(runs.run("evaluate", f"--workdir={copy}"), 2)
    assert line.startswith(f"error: no readable checkpoint in {copy / 'checkpoints'}: "
                           f"step {step_dir.name} ("), line
    if corrupt is _flip_a_byte_in_array_data:
        assert "(ChecksumMismatch: 1 of 20 arrays differ from their checksums: " in line


def test_workdir_under_a_file_fails_before_training(tmp_path):
    """The script's main in this process: refused before the data is read or anything compiled
    (the same probe, in a real script: test_full_disk_fails_at_the_write_probe_...)."""
    (tmp_path / "file").write_text("")
    line = runs.one_line_error(
        runs.run_main("train", *runs.SMALL_RUN, f"--workdir={tmp_path / 'file' / 'run'}"), 2)
    assert line == (f"error: workdir {tmp_path / 'file' / 'run'} is not writable (Not a "
                    f"directory); choose another --workdir or free some space")


def test_full_disk_fails_at_the_write_probe_and_leaves_no_probe(tmp_path):
    line = runs.one_line_error(train(tmp_path, fault=f"max-file-size@{512 << 10}"), 2)
    assert line == (f"error: workdir {tmp_path} is not writable (File too large); choose another "
                    f"--workdir or free some space")
    assert list(tmp_path.iterdir()) == []


def test_too_little_space_for_the_checkpoints_fails_before_training(tmp_path, monkeypatch):
    states = {"params": np.zeros((1 << 20,), np.float32)}  # 4 MiB a checkpoint
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=10 << 20))
    run.ensure_space(tmp_path, states, 2)
    with pytest.raises(UserError, match=r"has 10\.0 MiB free but its checkpoints need 12\.0 MiB"):
        run.ensure_space(tmp_path, states, 3)


def test_ctrl_c_in_loop_mode_then_resuming_in_scan_mode_continues_from_the_same_step(
        tmp_path, reference, ctrl_c_at_step_21):
    """A run stopped mid-epoch in loop mode (one step per dispatch), resumed in scan mode: the
    rest of the interrupted epoch runs as a shorter scan, the next ones as whole-epoch scans."""
    stopped, pristine = ctrl_c_at_step_21  # the run of test_run_stopped_...[ctrl-c-mid-epoch]
    assert stopped.returncode == 130, stopped.stderr
    workdir = Path(shutil.copytree(pristine, tmp_path / "run"))
    resumed = train_in_process(workdir, "--config.epoch_mode=scan")
    assert resumed.returncode == 0, resumed.stderr
    assert "| scan mode |" in resumed.stdout
    assert "resumed from checkpoint step 22:" in resumed.stdout
    # scan and loop programs round differently, so close rather than bitwise
    chex.assert_trees_all_close(runs.metrics(workdir), runs.metrics(reference), rtol=1e-4)
    chex.assert_trees_all_close(runs.checkpoint(workdir)[1]["params"],
                                runs.checkpoint(reference)[1]["params"], atol=1e-4)
