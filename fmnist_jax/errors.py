"""Errors a user can fix: scripts print them on one line and exit with code 2."""

import contextlib
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input: data, flags, config or workdir."""

    exit_code = 2


class DataError(UserError):
    """The dataset is missing, corrupt or of the wrong kind."""


class ConfigError(UserError):
    """An unknown or invalid config field, flag or model name."""


class CheckpointError(UserError):
    """A workdir without a usable checkpoint, or one of another model."""


class DamagedModel(CheckpointError):
    """A model whose output holds NaN or infinity: damaged weights."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class DamagedRun(UserError):
    """A workdir whose own files are damaged (e.g. a garbled line of metrics.jsonl)."""

    exit_code = 3


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turns any error raised while reading the model or run in `path` (a truncated file, invalid
    metadata, ...) into a `CheckpointError`: one line naming it, instead of a traceback."""
    try:
        yield
    except UserError:
        raise
    # whatever a damaged file raises
    except Exception as e:  # pylint: disable=broad-exception-caught
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path} cannot be loaded ({type(e).__name__}: {reason}); restore "
                              f"it, or write it again with scripts/export.py") from e
