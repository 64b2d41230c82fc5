"""Checkpoints: checksums saved with every step and verified on restore, and reads that fail
half-way leave nothing running behind them."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import chex
import numpy as np
import pytest

from fmnist_jax import checkpointing
from fmnist_jax.checkpointing import Checkpoints
from fmnist_jax.errors import CheckpointError


def _state(value: float) -> dict[str, np.ndarray]:
    return {"params": {"w": np.full((3, 4), value, np.float32), "b": np.arange(4, dtype=np.float32)},
            "step": np.array(7, np.int32)}


def _save(workdir: Path, steps: dict[int, float]) -> None:
    with Checkpoints(workdir, keep=len(steps)) as ckpts:
        for step, value in steps.items():
            ckpts.save(step, _state(value), {"value": value})


def _restore(workdir: Path, read_only: bool = False):
    with Checkpoints(workdir, read_only=read_only) as ckpts:
        return ckpts.restore(lambda meta: _state(0.0))


def _change_a_checksum(workdir: Path, step: int) -> None:
    """Step `step`'s recorded checksum of `w` replaced, as if the array had changed since."""
    record = workdir / "checkpoints" / str(step) / "checksums" / "metadata"
    sums = json.loads(record.read_text())
    sums["sha256"]["['params']['w']"] = "0" * 64
    record.write_text(json.dumps(sums))


def test_checksums_name_every_array_and_change_with_any_byte():
    sums = checkpointing.checksums(_state(1.0))
    assert sorted(sums) == ["['params']['b']", "['params']['w']", "['step']"]
    changed = _state(1.0)
    changed["params"]["w"][2, 3] = np.nextafter(np.float32(1.0), np.float32(2.0))
    assert {k for k, v in checkpointing.checksums(changed).items() if sums[k] != v} == {
        "['params']['w']"}


def test_a_step_whose_arrays_differ_from_their_checksums_gives_way_to_the_previous_one(
        tmp_path, caplog):
    _save(tmp_path, {1: 1.0, 2: 2.0})
    _change_a_checksum(tmp_path, 2)
    with caplog.at_level(logging.WARNING, logger=checkpointing.__name__):
        step, state, meta = _restore(tmp_path)
    assert step == 1 and meta == {"value": 1.0}
    chex.assert_trees_all_equal(state, _state(1.0))
    assert ("checkpoint step 2 in" in caplog.text and "is unreadable (ChecksumMismatch: 1 of 3 "
            "arrays differ from their checksums: ['params']['w']); using step 1" in caplog.text)
    assert (tmp_path / "checkpoints-unreadable" / "2").is_dir()


def test_a_read_only_restore_of_a_mismatching_only_step_names_it(tmp_path):
    _save(tmp_path, {5: 1.0})
    _change_a_checksum(tmp_path, 5)
    with pytest.raises(CheckpointError, match=r"step 5 \(ChecksumMismatch: 1 of 3 arrays differ"):
        _restore(tmp_path, read_only=True)


def test_a_step_saved_without_checksums_restores_unchecked(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpointing, "checksums", lambda tree: None)  # as saved before them
    _save(tmp_path, {3: 3.0})
    monkeypatch.undo()
    assert not (tmp_path / "checkpoints" / "3" / "checksums").exists()
    step, state, _ = _restore(tmp_path, read_only=True)
    assert step == 3
    chex.assert_trees_all_equal(state, _state(3.0))


def test_reads_still_under_way_finish_before_their_event_loop_closes():
    """As orbax restores: one loop per restore, closed as soon as one read fails while others
    still wait on threads (tensorstore's); those must end inside the loop, not after it."""
    finished = []

    async def read(fails: bool) -> None:
        if fails:
            raise OSError("corrupt array")
        await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.2)
        finished.append(True)

    async def restore() -> None:
        await asyncio.gather(read(True), read(False), read(False))

    with checkpointing._reads_finish_before_their_loop_closes():  # pylint: disable=protected-access
        loop = asyncio.new_event_loop()
        with pytest.raises(OSError, match="corrupt array"):
            loop.run_until_complete(restore())
        loop.close()
    assert finished == [True, True]
    assert not isinstance(asyncio.get_event_loop_policy(),
                          checkpointing._FinishingPolicy)  # pylint: disable=protected-access
