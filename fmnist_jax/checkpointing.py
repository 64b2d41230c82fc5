"""Checkpoints through orbax: the stacked train state plus a JSON record of the run, per step.

Orbax writes each step to a temporary folder and renames it on commit, so a killed run never leaves
a half-written checkpoint that `latest_step()` would pick up. The best parameters per member live
inside the state (`best_params`), so the latest checkpoint holds both what resumes and what
evaluation uses.
"""

from __future__ import annotations

import logging
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

    def restore_meta(self, step: int | None = None) -> tuple[int, dict[str, Any]]:
        """The step and run record of `step` (default: the latest readable one)."""
        for candidate in self._candidates(step):
            try:
                restored = self.manager.restore(
                    candidate, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                return candidate, dict(restored.meta)
            except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
                self._skip(candidate, e)
        raise CheckpointError(f"no readable checkpoint in {self.directory}; "
                              f"train first with scripts/train.py --workdir={self.directory.parent}")

    def restore_state(self, step: int, template: Any) -> Any:
        """The state saved at `step`, with the structure (and shardings) of `template`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                flax.serialization.to_state_dict(template))
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as e:  # pylint: disable=broad-except
            raise CheckpointError(f"checkpoint {self.directory / str(step)} cannot be restored "
                                  f"into this model ({type(e).__name__}: {str(e)[:200]}); "
                                  f"delete that step folder or use another --workdir") from None
        return flax.serialization.from_state_dict(template, restored.state)

    def _candidates(self, step: int | None) -> list[int]:
        steps = self.steps()
        if step is not None:
            return [step] if step in steps else []
        return steps[::-1]

    def _skip(self, step: int, error: Exception) -> None:
        log.warning("checkpoint step %d in %s is unreadable (%s: %s); trying the previous one",
                    step, self.directory, type(error).__name__, str(error)[:200])
