"""What the absl entry points share: quiet library logs, platform start-up, and one error line
(never a traceback) for bad input."""

from __future__ import annotations

import functools
import logging as std_logging
import os
import sys
import traceback
from collections.abc import Callable

from absl import logging

from ladder_jax import datasets, platform
from ladder_jax.config import ConfigError
from ladder_jax.train import TrainingDiverged

#: Set to 1 to see the traceback behind an error line.
TRACEBACK_ENV = "LADDER_JAX_TRACEBACK"
USER_ERRORS = (ConfigError, datasets.DataError, TrainingDiverged)


class _QuietLibraries(std_logging.Filter):
    """Drops INFO chatter of orbax/jax internals so progress lines stay readable."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        noisy = "orbax" in record.pathname or "/jax/" in record.pathname
        return record.levelno >= std_logging.WARNING or not noisy


def quiet_library_logs() -> None:
    """Keeps warnings from every library but INFO lines from ladder_jax only."""
    logging.get_absl_handler().addFilter(_QuietLibraries())


def error_line(e: BaseException) -> str:
    """The one line a user sees for ``e``."""
    if isinstance(e, OSError) and not isinstance(e, USER_ERRORS):
        where = f" ({e.filename})" if e.filename else ""
        return f"error: {e.strerror or e}{where}; check the path and its permissions"
    return f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def entry_point(run: Callable[[list[str]], int], compilation_cache_dir: Callable[[], str | None]
                = lambda: None) -> Callable[[list[str]], int]:
    """Wraps a runner's main: quiet logs and platform set-up first; a bad flag, file, dataset
    or checkpoint (and any OSError) becomes one 'error: ...' line and exit code 1. The
    traceback is printed too with --verbosity=1 or LADDER_JAX_TRACEBACK=1."""

    @functools.wraps(run)
    def main(argv: list[str]) -> int:
        quiet_library_logs()
        try:
            platform.setup(compilation_cache_dir() or os.environ.get("JAX_COMPILATION_CACHE_DIR"))
            return run(argv)
        except (*USER_ERRORS, OSError) as e:
            if os.environ.get(TRACEBACK_ENV) == "1" or logging.get_verbosity() >= 1:
                traceback.print_exc()
            print(error_line(e), file=sys.stderr)
            return 1

    return main


def cache_dir(flag_value: str | None, run_dir: str) -> str | None:
    """A sweep's compilation cache: the flag's directory, 'none' for no cache, or by default
    $JAX_COMPILATION_CACHE_DIR, else <run_dir>/jax_cache (cells of one shape and re-runs
    then load their compiled programs instead of compiling them again)."""
    if flag_value is not None:
        return None if flag_value.lower() == "none" else flag_value
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(run_dir, "jax_cache")


def print_sweep_outcome(outcome, num_cells: int) -> int:
    """The sweep's last lines (cells finished, where the results are, failures); the exit
    code: 1 if any cell failed."""
    failed = outcome.failed
    print(f"{num_cells - len(failed)}/{num_cells} cells finished in "
          f"{outcome.wall_time_s / 60:.1f} min; results in {outcome.outputs.get('csv')}")
    for r in failed:
        print(f"failed: {r.cell.name}: {r.error}", file=sys.stderr)
    return 1 if failed else 0
