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


class DamagedModel(CheckpointError):
    """A model whose output holds NaN or infinity: damaged weights."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3
