"""The errors every layer raises: a leaf module that imports nothing of ladder_jax.

Each message is one line naming the problem and the fix; the runners print it as
``error: <message>`` and exit non-zero.
"""


class ConfigError(ValueError):
    """A configuration (a flag, a config field, a directory) that cannot work."""


class DataError(ValueError):
    """A dataset that cannot be read or used as asked."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the model."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (a full disk, a directory gone); the older ones
    are intact, so the same command resumes once the cause is fixed."""
