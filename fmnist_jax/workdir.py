"""A run's workdir: its files (metrics.jsonl), the guards run before training (writable, space,
a resumable config) and the provenance stored with every result (commit, device, versions)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from fmnist_jax import config as config_lib
from fmnist_jax import files, sharding
from fmnist_jax.errors import CheckpointError, DamagedRun, UserError

# Fields a resumed run may change (any other change is refused): the length, where the data is read
# from, and implementation choices that compute the same function (a model field the stored config
# predates reads as None).
RESUMABLE_CHANGES = ("epochs", "data.dir", "checkpoints_to_keep", "epoch_mode", "scan_unroll",
                     "model.conv_impl", "model.pool_impl", "member_strategy")


def source_commit(root: Path | None = None) -> tuple[str | None, str]:
    """The git commit of the code (with '+dirty' when it has uncommitted changes) and how it was
    found; the commit is None unless the project's root is itself the top of a git work tree (a
    copy of the project inside another repository's folder must not record that repository's)."""
    root = (root or Path(__file__).parent.parent).resolve()
    git = functools.partial(subprocess.run, cwd=root, capture_output=True, text=True, timeout=10,
                            check=True)
    try:
        top = git(["git", "rev-parse", "--show-toplevel"]).stdout.strip()
        if Path(top).resolve() != root:
            return None, f"{root} is not a git checkout of its own (it lies inside {top})"
        commit = git(["git", "rev-parse", "HEAD"]).stdout.strip()
        dirty = git(["git", "status", "--porcelain", "--untracked-files=no"]).stdout
    except (OSError, subprocess.SubprocessError):
        return None, f"{root} is not a git checkout (or git is not installed)"
    return commit + ("+dirty" if dirty.strip() else ""), f"git HEAD of {root}"


def device_description() -> str:
    """The device kind and count; for a CPU, its model and the cores this process may use."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{jax.device_count()} x {device.device_kind} ({device.platform})"
    name = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0))
    return f"{name}, {cores} core{'s' if cores > 1 else ''} (cpu)"


def environment() -> dict[str, Any]:
    """The device, library versions and code commit, stored with every claim a run makes."""
    import flax  # pylint: disable=import-outside-toplevel
    import orbax.checkpoint  # pylint: disable=import-outside-toplevel
    device = jax.devices()[0]
    commit, commit_note = source_commit()
    return {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            "device": device_description(), "commit": commit, "commit_note": commit_note,
            "versions": {"jax": jax.__version__, "jaxlib": jax.lib.__version__,
                         "flax": flax.__version__, "optax": optax.__version__,
                         "orbax-checkpoint": orbax.checkpoint.__version__,
                         "numpy": np.__version__, "python": sys.version.split()[0]}}


def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json())


def ensure_writable(workdir: Path) -> None:
    """Creates the workdir and writes a probe, so a bad path fails before any training."""
    probe = workdir / ".write-probe"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0" * (1 << 20))
    except OSError as e:
        raise UserError(f"workdir {workdir} is not writable ({e.strerror}); "
                        f"choose another --workdir or free some space") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def ensure_space(workdir: Path, states, count: int) -> None:
    """Fails now if the disk cannot take `count` more checkpoints of `states` (at least one)."""
    needed = max(count, 1) * sum(x.nbytes for x in jax.tree.leaves(states))
    free = shutil.disk_usage(workdir).free
    if free < needed:
        raise UserError(f"workdir {workdir} has {free / 2**20:.1f} MiB free but its checkpoints need "
                        f"{needed / 2**20:.1f} MiB; free some space or choose another --workdir")


def check_resumable(stored: dict[str, Any], config: ml_collections.ConfigDict,
                    workdir: Path) -> None:
    """Refuses to resume a checkpoint of another model or config, naming the difference."""
    old = config_lib.flatten(ml_collections.ConfigDict(config_lib.with_defaults(stored)))
    new = config_lib.flatten(ml_collections.ConfigDict(config_to_json(config)))
    if old.get("model.name") != new["model.name"]:
        raise CheckpointError(
            f"workdir {workdir} holds a checkpoint of model {old.get('model.name')!r}, not "
            f"{new['model.name']!r}; use another --workdir")
    changed = [f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in sorted(set(old) | set(new))
               if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)]
    if changed:
        raise CheckpointError(f"workdir {workdir} was trained with another config: "
                              f"{'; '.join(changed)}; use another --workdir or the same settings")


def truncate_metrics(workdir: Path, completed_epochs: int) -> None:
    """Drops lines of epochs after the checkpoint a resumed run starts from (atomically); refuses a
    history that lacks some of the checkpoint's epochs."""
    path = workdir / "metrics.jsonl"
    if not sharding.is_primary():
        return
    kept = [r for r in read_history(workdir) if r["epoch"] <= completed_epochs]
    if len(kept) < completed_epochs:
        raise DamagedRun(f"{path} holds {len(kept)} epoch(s) but the checkpoint has "
                         f"{completed_epochs}; restore the file from a copy, or train again "
                         f"in a new --workdir")
    if path.exists():
        files.write_atomically(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


# What every line of metrics.jsonl holds (the readers sum and average these).
HISTORY_FIELDS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds",
                  "train_seconds", "images_per_second")


def _history_problem(record: Any, epoch: int) -> str | None:
    """Why `record` cannot be line `epoch` of metrics.jsonl (None: it can)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a record of an epoch"
    if record.get("epoch") != epoch or isinstance(record.get("epoch"), bool):
        return f"epoch {record.get('epoch')!r} where epoch {epoch} belongs"
    wrong = [name for name in HISTORY_FIELDS if isinstance(record.get(name), bool)
             or not isinstance(record.get(name), (int, float))]
    return f"no number in {', '.join(wrong)}" if wrong else None


def read_history(workdir: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl, one per completed epoch (1, 2, ...). A last line cut short by
    a kill (no newline) is dropped; any other line that is not an epoch's record stops the run
    with `DamagedRun`, naming the file and line, rather than losing that epoch's history."""
    path = Path(workdir) / "metrics.jsonl"
    lines = path.read_text().split("\n") if path.exists() else []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # after the last newline: empty, or cut short by a kill
                break
            record, problem = None, f"not JSON ({e.msg})"
        else:
            problem = _history_problem(record, number)
        if problem:
            raise DamagedRun(f"{path} line {number} is damaged: {problem}; restore the file from "
                             f"a copy, or train again in a new --workdir (the history of its "
                             f"epochs cannot be rebuilt from the checkpoints)")
        records.append(record)
    return records


@contextlib.contextmanager
def removed_if_left_empty(workdir: Path) -> Iterator[None]:
    """Removes `workdir` when the run made it and stopped before writing anything in it (a refused
    config or too little memory), so a refused run leaves nothing behind."""
    existed = workdir.exists()
    try:
        yield
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                workdir.rmdir()  # only ever an empty folder
        raise
