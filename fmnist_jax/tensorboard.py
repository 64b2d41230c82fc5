"""A run's per-epoch metrics as TensorBoard event files in `WORKDIR/tensorboard/`.

`metrics.jsonl` stays the record; the event files are a view of it for TensorBoard
(`tensorboard --logdir=checkpoints` shows every run). They are written with tensorboardX, which needs
no TensorFlow, when the `tensorboard` extra is installed (`pip install -e .[tensorboard]`); without
it a run writes none and says so in one line.

Tags, at step = epoch: each metric of metrics.jsonl under its own name (`val_accuracy`, ...: the
mean over the members), and with several seeds each member's as `member_<seed>/<metric>`. Of a
sweep, each setting's mean over its seeds as `setting_<k>/<metric>` and each member's as
`setting_<k>/seed_<seed>/<metric>`, so members of one seed in different settings stay apart.

Resume: the event files are rewritten from `metrics.jsonl` when a run starts, after the resumed run
dropped the lines of epochs past its checkpoint, so every epoch appears once, with the values of
the run that kept it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fmnist_jax import sharding

FOLDER = "tensorboard"
METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "raw_val_loss",
           "raw_val_accuracy", "learning_rate", "images_per_second", "seconds")
MISSING = ("TensorBoard: no event files written (tensorboardX is not installed; "
           "`pip install -e .[tensorboard]` to write them)")


def member_tags(seeds: Sequence[int], settings: Sequence[int] | None = None) -> list[str]:
    """Each member's tag prefix: `member_<seed>`, or of a sweep (`settings`: each member's
    setting) `setting_<k>/seed_<seed>`."""
    if settings is None:
        return [f"member_{seed}" for seed in seeds]
    return [f"setting_{k}/seed_{seed}" for k, seed in zip(settings, seeds)]


def scalars(record: dict[str, Any], members: Sequence[str]) -> dict[str, float]:
    """The TensorBoard tags and values of one line of metrics.jsonl (`members`: `member_tags`)."""
    values = {name: record[name] for name in METRICS if name in record}
    for name in METRICS:
        for member, value in zip(members, record.get(name + "_members", ())):
            values[f"{member}/{name}"] = value
    for setting in record.get("settings", ()):
        values.update({f"setting_{setting['setting']}/{name}": setting[name]
                       for name in METRICS if name in setting})
    return values


class EpochWriter:
    """Writes each epoch's record as scalars; a no-op without tensorboardX or off process 0."""

    def __init__(self, workdir: Path, seeds: Sequence[int], history: Iterable[dict[str, Any]],
                 quiet: bool = False, settings: Sequence[int] | None = None):
        self.members = member_tags(seeds, settings)
        self.writer = None
        if not sharding.is_primary():
            return
        try:
            from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
        except ImportError:
            if not quiet:
                print(MISSING, flush=True)
            return
        folder = Path(workdir) / FOLDER
        shutil.rmtree(folder, ignore_errors=True)  # rewritten from metrics.jsonl, see above
        self.writer = SummaryWriter(logdir=str(folder))
        for record in history:
            self.write(record)

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for tag, value in scalars(record, self.members).items():
            self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()

    def __enter__(self) -> EpochWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()
