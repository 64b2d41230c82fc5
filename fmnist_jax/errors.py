"""Errors a user can fix: scripts print them on one line and exit with code 2."""


class UserError(Exception):
    """A problem with the user's input: data, flags, config or workdir."""

    exit_code = 2


class DataError(UserError):
    """The dataset is missing, corrupt or of the wrong kind."""


class ConfigError(UserError):
    """An unknown or invalid config field, flag or model name."""


class CheckpointError(UserError):
    """A workdir without a usable checkpoint, or one of another model."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class DamagedRun(UserError):
    """A workdir whose own files are damaged (e.g. a garbled line of metrics.jsonl)."""

    exit_code = 3
