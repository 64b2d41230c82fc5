"""Checkpoints through orbax: the stacked train state plus a JSON record of the run, per step.

Orbax writes each step to a temporary folder and renames it on commit, so a killed run never leaves
a half-written checkpoint that `latest_step()` would pick up. The best parameters per member live
inside the state (`best_params`), so the latest checkpoint holds both what resumes and what
evaluation uses.

Orbax's array store keeps no checksums, so each step also holds the SHA-256 of every array's bytes
(the `checksums` item), computed from the arrays handed to `save` and committed with the step;
a restore compares the arrays it read with them and treats a step that differs as unreadable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from fmnist_jax.errors import CheckpointError

log = logging.getLogger(__name__)
ITEMS = ("state", "meta", "checksums")


class ChecksumMismatch(Exception):
    """Arrays read back from a checkpoint differ from the checksums saved with them."""


class Checkpoints:
    """The checkpoints of one workdir: `WORKDIR/checkpoints/<global step>/{state,meta}`."""

    def __init__(self, workdir: str | Path, keep: int = 2, read_only: bool = False):
        self.directory = Path(workdir).resolve() / "checkpoints"
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep), read_only=read_only,
            create=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves asynchronously; the write becomes visible only once complete.

        The checksums are taken before `save` returns, from the very arrays orbax writes.
        """
        state = flax.serialization.to_state_dict(state)
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        sums = checksums(state)
        if sums is not None:
            items["checksums"] = ocp.args.JsonSave({"sha256": sums})
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, template_for: Callable[[dict[str, Any]], Any]) -> tuple[int, Any, dict]:
        """The latest checkpoint whose run record and state both read back: step, state, record.

        `template_for(record)` gives the state structure to restore into; its errors (a checkpoint
        of another model or config) end the search. A step that cannot be read is skipped; once an
        older one restores, each skipped step gets a warning and is moved to
        `WORKDIR/checkpoints-unreadable/` (unless read-only), so that training can write it anew.
        When none restores, the error names every step and why.
        """
        unreadable = []
        for step in self.steps()[::-1]:
            try:
                meta = self._read_meta(step)
            except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
                unreadable.append((step, _first_line(e)))
                continue
            template = template_for(meta)
            try:
                state = self._read_state(step, template)
            except Exception as e:  # pylint: disable=broad-except
                unreadable.append((step, _first_line(e)))
                continue
            self._fell_back(unreadable, step)
            if unreadable and not self.read_only:
                self._set_aside([s for s, _ in unreadable], step)
            return step, state, meta
        raise self._none_readable(unreadable)

    def restore_meta(self, step: int | None = None) -> tuple[int, dict[str, Any]]:
        """The step and run record of `step` (default: the latest readable one)."""
        unreadable = []
        for candidate in self._candidates(step):
            try:
                meta = self._read_meta(candidate)
            except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
                unreadable.append((candidate, _first_line(e)))
                continue
            self._fell_back(unreadable, candidate)
            return candidate, meta
        raise self._none_readable(unreadable)

    def restore_state(self, step: int, template: Any) -> Any:
        """The state saved at `step`, with the structure (and shardings) of `template`."""
        try:
            return self._read_state(step, template)
        except Exception as e:  # pylint: disable=broad-except
            raise CheckpointError(f"checkpoint {self.directory / str(step)} cannot be restored "
                                  f"into this model ({_first_line(e)}); "
                                  f"delete that step folder or use another --workdir") from None

    def _read_meta(self, step: int) -> dict[str, Any]:
        with _reads_finish_before_their_loop_closes():
            restored = self.manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def _read_state(self, step: int, template: Any) -> Any:
        target = flax.serialization.to_state_dict(template)
        with _reads_finish_before_their_loop_closes():
            stored = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
            # fields newer than the checkpoint that are empty in its run (e.g. no moving average)
            missing = {k: v for k, v in target.items()
                       if k not in stored and not jax.tree.leaves(v)}
            abstract = jax.tree.map(_restore_target,
                                    {k: v for k, v in target.items() if k not in missing})
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
            self._verify(step, restored.state)
        return flax.serialization.from_state_dict(template, {**missing, **restored.state})

    def _verify(self, step: int, state: dict[str, Any]) -> None:
        """Raises `ChecksumMismatch` unless `state`'s arrays match those saved at `step` (a step
        saved before checksums were kept, or by several processes, goes unchecked)."""
        if not (self.directory / str(step) / "checksums").is_dir():
            return
        saved = self.manager.restore(step, args=ocp.args.Composite(
            checksums=ocp.args.JsonRestore())).checksums["sha256"]
        read = checksums(state) or {}
        differ = [path for path, digest in read.items() if saved.get(path) != digest]
        if differ:
            raise ChecksumMismatch(f"{len(differ)} of {len(read)} arrays differ from their "
                                   f"checksums: {', '.join(differ[:3])}")

    def _set_aside(self, steps: list[int], restored: int) -> None:
        """Moves unreadable step folders out of orbax's sight, keeping them for inspection."""
        aside = self.directory.parent / "checkpoints-unreadable"
        if jax.process_count() > 1:  # every process would move the same folders at once
            raise CheckpointError(f"checkpoint steps {steps} in {self.directory} are unreadable; "
                                  f"move them to {aside} by hand and run again to resume from "
                                  f"step {restored}")
        aside.mkdir(exist_ok=True)
        for step in steps:
            target = aside / str(step)
            while target.exists():
                target = target.with_name(target.name + "+")
            (self.directory / str(step)).rename(target)
            log.warning("moved unreadable checkpoint step %d to %s", step, target)
        self.manager.reload()

    def _none_readable(self, unreadable: list[tuple[int, str]]) -> CheckpointError:
        if not unreadable:
            return CheckpointError(f"no checkpoint in {self.directory}; train first with "
                                   f"scripts/train.py --workdir={self.directory.parent}")
        steps = ", ".join(f"step {step} ({why})" for step, why in unreadable)
        return CheckpointError(f"no readable checkpoint in {self.directory}: {steps}; move that "
                               f"folder away to start over, or use another --workdir")

    def _candidates(self, step: int | None) -> list[int]:
        steps = self.steps()
        if step is not None:
            return [step] if step in steps else []
        return steps[::-1]

    def _fell_back(self, unreadable: list[tuple[int, str]], step: int) -> None:
        for skipped, why in unreadable:
            log.warning("checkpoint step %d in %s is unreadable (%s); using step %d instead",
                        skipped, self.directory, why, step)


class _FinishingEventLoop(asyncio.SelectorEventLoop):
    """An event loop that, asked to close, first lets the tasks still pending in it finish.

    Orbax reads a checkpoint in a fresh event loop and closes it as soon as one array fails to
    read, while the reads of the other arrays are still under way in tensorstore's threads: they
    then complete into the closed loop (`RuntimeError: Event loop is closed` from those threads)
    or are destroyed pending (`Exception ignored in <coroutine ...>` at exit), printing tracebacks
    after the one-line error.
    """

    def close(self) -> None:
        pending = asyncio.all_tasks(self)
        if pending and not self.is_running() and not self.is_closed():
            self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        super().close()


class _FinishingPolicy(asyncio.DefaultEventLoopPolicy):
    _loop_factory = _FinishingEventLoop


@contextlib.contextmanager
def _reads_finish_before_their_loop_closes() -> Iterator[None]:
    """Event loops made meanwhile (orbax makes one per restore) are `_FinishingEventLoop`s."""
    policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_FinishingPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(policy)


def checksums(tree: Any) -> dict[str, str] | None:
    """The SHA-256 of each array's bytes in `tree`, by its path; None when an array lies partly
    on another process's devices (no process holds it whole)."""
    sums = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return None
        data = np.ascontiguousarray(leaf).reshape(-1).view(np.uint8)
        sums[jax.tree_util.keystr(path)] = hashlib.sha256(data).hexdigest()
    return sums


def _restore_target(leaf: Any) -> jax.ShapeDtypeStruct:
    """A template leaf as orbax's restore target: onto the leaf's devices (any mesh, whatever the
    devices that saved it), or the default device when the leaf has none (an `eval_shape`)."""
    target = ocp.utils.to_shape_dtype_struct(leaf)
    if target.sharding is not None:
        return target
    return jax.ShapeDtypeStruct(target.shape, target.dtype,
                                sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))


def _first_line(error: Exception) -> str:
    """An orbax/tensorstore error, shortened to its type and the start of its first line."""
    first = (str(error).strip().splitlines() or [""])[0].partition(" See full TensorStore")[0]
    return f"{type(error).__name__}: {first[:160]}"
