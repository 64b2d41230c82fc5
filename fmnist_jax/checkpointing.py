"""Checkpoints through orbax: the stacked train state plus a JSON record of the run, per step.

Orbax writes each step to a temporary folder and renames it on commit, so a killed run never leaves
a half-written checkpoint that `latest_step()` would pick up. The best parameters per member live
inside the state (`best_params`), so the latest checkpoint holds both what resumes and what
evaluation uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp

from fmnist_jax.errors import CheckpointError

log = logging.getLogger(__name__)


class Checkpoints:
    """The checkpoints of one workdir: `WORKDIR/checkpoints/<global step>/{state,meta}`."""

    def __init__(self, workdir: str | Path, keep: int = 2, read_only: bool = False):
        self.directory = Path(workdir).resolve() / "checkpoints"
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep), read_only=read_only,
            create=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

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
        """Saves asynchronously; the write becomes visible only once complete."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave(meta)), force=True)

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
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def _read_state(self, step: int, template: Any) -> Any:
        target = flax.serialization.to_state_dict(template)
        stored = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
        # fields newer than the checkpoint that are empty in its run (e.g. no moving average)
        missing = {k: v for k, v in target.items() if k not in stored and not jax.tree.leaves(v)}
        abstract = jax.tree.map(_restore_target,
                                {k: v for k, v in target.items() if k not in missing})
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return flax.serialization.from_state_dict(template, {**missing, **restored.state})

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
