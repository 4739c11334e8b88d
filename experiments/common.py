"""What the absl entry points share."""

from __future__ import annotations

import logging as std_logging

from absl import logging


class _QuietLibraries(std_logging.Filter):
    """Drops INFO chatter of orbax/jax internals so progress lines stay readable."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        noisy = "orbax" in record.pathname or "/jax/" in record.pathname
        return record.levelno >= std_logging.WARNING or not noisy


def quiet_library_logs() -> None:
    """Keeps warnings from every library but INFO lines from ladder_jax only."""
    logging.get_absl_handler().addFilter(_QuietLibraries())
