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


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped a run (train.interrupt). A BaseException, like
    KeyboardInterrupt, so that code catching Exception (a sweep's per-cell handler) lets it
    through; runners print its message and exit with 128 + the signal number."""

    def __init__(self, signum: int, *, step: int | None = None, saved: bool = False,
                 immediate: bool = False):
        self.signum, self.step, self.saved, self.immediate = signum, step, saved, immediate
        if immediate:
            text = "stopped at once by a second signal; the last checkpoint is kept"
        elif step is None:
            text = "interrupted"
        elif saved:
            text = f"interrupted at step {step}; checkpoint saved"
        else:
            text = f"interrupted at step {step}; the last checkpoint is kept"
        super().__init__(f"{text}; the same command resumes")

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum
