"""Runs a script with one fault injected at an exact point, for the reliability tests.

    python tests/fault_injection.py FAULT SCRIPT [ARGS...]

FAULT is one of
  sigkill@N             SIGKILL before global train step N, once pending checkpoint writes end
  sigint@N              SIGINT (Ctrl-C) before global train step N
  nan@N                 the parameters turn NaN before global train step N
  sigkill-after-save@N  SIGKILL right after the save of checkpoint step N started (in flight)
  offline               no Debian package folder, and the download host refuses connections
  max-file-size@N       writing a file past N bytes fails (EFBIG), as writing to a full disk does
  pause@N               SIGSTOP before global train step N (the test continues it with SIGCONT)

The faults hook the training loop's compiled step and `Checkpoints.save` from outside; the script
itself runs unchanged.
"""

from __future__ import annotations

import os
import resource
import runpy
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position

from fmnist_jax import checkpointing, data, run  # noqa: E402  pylint: disable=wrong-import-position

GLOBAL_STEP_ARG = 6  # compiled(states, acc, images, labels, perms, first, global_first, keys)
_OPENED: list[checkpointing.Checkpoints] = []
_CLOSED_PORT = socket.socket()


def _before_step(step: int, action: Callable[[tuple], tuple]) -> None:
    """Calls `action(args) -> args` on the compiled step's arguments before global step `step`."""
    compile_span = run.Trainer.compile

    def compile_with_fault(self, states, acc) -> None:
        compile_span(self, states, acc)
        compiled = self.compiled

        def faulty(*args):
            if int(args[GLOBAL_STEP_ARG]) == step:
                args = action(args)
            return compiled(*args)

        self.compiled = faulty

    run.Trainer.compile = compile_with_fault


def _sigkill_after_save(step: int) -> None:
    save = checkpointing.Checkpoints.save

    def save_then_die(self, saved_step, state, meta) -> None:
        save(self, saved_step, state, meta)
        if saved_step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpointing.Checkpoints.save = save_then_die


def _sigkill_when_saved(args: tuple) -> tuple:
    for ckpts in _OPENED:
        ckpts.wait()
    os.kill(os.getpid(), signal.SIGKILL)
    return args


def _sigint(args: tuple) -> tuple:
    os.kill(os.getpid(), signal.SIGINT)
    return args


def _pause(args: tuple) -> tuple:
    os.kill(os.getpid(), signal.SIGSTOP)
    return args


def _nan_params(args: tuple) -> tuple:
    states = args[0]
    states = states.replace(params=jax.tree.map(lambda p: p * jnp.nan, states.params))
    return (states, *args[1:])


def _track_checkpoints() -> None:
    init = checkpointing.Checkpoints.__init__

    def init_tracked(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        _OPENED.append(self)

    checkpointing.Checkpoints.__init__ = init_tracked


def install(fault: str) -> None:
    name, _, at = fault.partition("@")
    if name == "sigkill":
        _track_checkpoints()
        _before_step(int(at), _sigkill_when_saved)
    elif name == "sigint":
        _before_step(int(at), _sigint)
    elif name == "nan":
        _before_step(int(at), _nan_params)
    elif name == "pause":
        _before_step(int(at), _pause)
    elif name == "sigkill-after-save":
        _sigkill_after_save(int(at))
    elif name == "offline":
        data.DEBIAN_DIR = Path("/nonexistent/fashion-mnist")
        _CLOSED_PORT.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        data.DOWNLOAD_URL = f"http://127.0.0.1:{_CLOSED_PORT.getsockname()[1]}/"
    elif name == "max-file-size":
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(at), int(at)))  # Python ignores SIGXFSZ
    else:
        raise SystemExit(f"unknown fault {fault!r}; see {__file__}")


if __name__ == "__main__":
    install(sys.argv[1])
    script = sys.argv[2]
    sys.argv = [script, *sys.argv[3:]]
    runpy.run_path(script, run_name="__main__")
