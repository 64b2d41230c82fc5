"""Running the real scripts as a user would, with or without an injected fault, and reading back
what a run left in its workdir (checkpointed state, metrics) for bitwise comparisons."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import chex
import httpx
import jax
import numpy as np
import orbax.checkpoint as ocp

from fmnist_jax import commands

ROOT = Path(__file__).resolve().parent.parent
FAULTS = ROOT / "tests" / "fault_injection.py"
# A run of a few seconds on the real data: 16 steps per epoch, 3 epochs, global steps 0..47.
SMALL_RUN = ("--model=mlp", "--config.model.hidden=(64,)", "--train-limit=1024", "--epochs=3",
             "--batch-size=64", "--config.data.val_fraction=0.02", "--config.epoch_mode=loop")
STEPS_PER_EPOCH = 16
TIMING_FIELDS = ("seconds", "train_seconds", "images_per_second")
# Reruns skip compilation; safe for bitwise comparisons, since a cached program is the same program.
COMPILATION_CACHE = ROOT / ".pytest_cache" / "jax-compilation-cache"
# Whether the test being set up is marked e2e (conftest.py sets it): only those may run scripts,
# so that `pytest -m "not e2e"` stays fast.
E2E_ALLOWED = True


def command(script: str, *args: str, fault: str | None = None) -> list[str]:
    """The command line of `scripts/<script>.py ARGS`, run through the fault injector if `fault`."""
    assert E2E_ALLOWED, f"a test that runs scripts/{script}.py must be marked @pytest.mark.e2e"
    path = str(ROOT / "scripts" / f"{script}.py")
    prefix = [str(FAULTS), fault] if fault else []
    return [sys.executable, *prefix, path, *args]


def run(script: str, *args: str, fault: str | None = None, env: Mapping[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs the script to its end in `script_env()` (plus `env`); stdout and stderr as text."""
    return subprocess.run(command(script, *args, fault=fault), capture_output=True, text=True,
                          timeout=timeout, env=script_env(**(env or {})), cwd=ROOT, check=False)


def run_main(script: str, *args: str) -> subprocess.CompletedProcess:
    """The script's `main` under `cli.main_guard`, as its `__main__` runs it, but in this process.

    For flag and config errors, which fail before anything is imported that logs: as faithful as a
    subprocess, and a second faster. Also for whole runs whose printed output or files a test
    reads, where the process is not what it tests (their logging goes to pytest's, not to
    stderr): a few seconds faster, without the interpreter's start and the imports. `sys.argv` is
    the script's meanwhile, so that the command a run records is the script's.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    argv = sys.argv
    sys.argv = [str(ROOT / "scripts" / f"{script}.py"), *args]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            commands.run(script, list(args))
        except SystemExit as e:
            code = e.code
        finally:
            sys.argv = argv
    return subprocess.CompletedProcess(list(args), code, stdout.getvalue(), stderr.getvalue())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(log: Path, *args: str, timeout: float = 240):
    """`scripts/serve.py ARGS` on a free loopback port until it answers /healthz; yields its base
    URL and process, and kills it at the end if it still runs."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(command("serve", *args, f"--port={port}"), stdout=out,
                                   stderr=subprocess.STDOUT, cwd=ROOT, env=script_env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"the server exited: {log.read_text()}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the server did not start: {log.read_text()}"
            time.sleep(0.5)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Polls until `path` exists; fails if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended (code {process.returncode}) before {path}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout}s"
        time.sleep(0.005)


def one_line_error(result: subprocess.CompletedProcess, code: int) -> str:
    """The single stderr line of a run that failed with `code`; asserts there is nothing else."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def checkpoint_steps(workdir: Path) -> list[int]:
    """The committed checkpoint steps (orbax's own view: unfinished temporary folders excluded)."""
    with _manager(workdir) as manager:
        return sorted(manager.all_steps())


def checkpoint(workdir: Path, step: int | None = None) -> tuple[int, dict[str, Any], dict]:
    """A checkpoint's step, its raw state tree as numpy arrays, and its run record."""
    with _manager(workdir) as manager:
        step = manager.latest_step() if step is None else step
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    return step, jax.tree.map(np.asarray, restored.state), dict(restored.meta)


def metrics(workdir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the timing fields, which differ between any two runs."""
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
            for line in lines]


def summary(workdir: Path) -> dict[str, Any]:
    record = json.loads((workdir / "summary.json").read_text())
    return {k: record[k] for k in ("epochs_completed", "best_epoch", "best_val_accuracy",
                                   "test_accuracy", "test_loss")}


def assert_bitwise_equal(actual: Any, expected: Any) -> None:
    """Equal structure, shapes, dtypes and bytes (so NaN == NaN and -0.0 != 0.0)."""
    chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected)
    chex.assert_trees_all_equal(jax.tree.map(_bytes, actual), jax.tree.map(_bytes, expected))


def _bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(-1).view(np.uint8)


def _manager(workdir: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(Path(workdir).resolve() / "checkpoints", options=options,
                                 item_names=("state", "meta"))


def script_env(**extra: str) -> dict[str, str]:
    """The scripts' environment: CPU only, the shared compilation cache, and this checkout's
    fmnist_jax (the scripts do not patch sys.path; an installed copy must not be tested instead)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
            "JAX_COMPILATION_CACHE_DIR": str(COMPILATION_CACHE),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **extra}

