"""The runners' entry point: quiet library logs, the flagfiles and paths checked and the
platform set up before any work, and one error line (never a traceback) for bad input."""

from __future__ import annotations

import errno
import functools
import logging as std_logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import app, logging

from experiments import compile_cache, path_checks
from ladder_jax.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    Interrupted,
    TrainingDiverged,
)
from ladder_jax.train import interrupt

#: Set to 1 to see the traceback behind an error line.
TRACEBACK_ENV = "LADDER_JAX_TRACEBACK"
#: The errors of bad input or damaged state: each is reported in its one line.
USER_ERRORS = (ConfigError, DataError, TrainingDiverged, CheckpointError)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _QuietLibraries(std_logging.Filter):
    """Drops INFO chatter of orbax/jax internals so progress lines stay readable, and cuts
    orbax's errors to their first line (its background threads log whole tracebacks; a
    failed save reaches the runner as a CheckpointError). The traceback switch keeps all."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        noisy = "orbax" in record.pathname or "/jax/" in record.pathname
        if "orbax" in record.pathname and record.levelno >= std_logging.ERROR \
                and not _show_traceback():
            record.msg = (record.getMessage().splitlines() or [""])[0][:300]
            record.args, record.exc_info, record.exc_text = (), None, None
        return record.levelno >= std_logging.WARNING or not noisy


def quiet_library_logs() -> None:
    """Keeps warnings from every library but INFO lines from ladder_jax only."""
    logging.get_absl_handler().addFilter(_QuietLibraries())


def error_line(e: BaseException) -> str:
    """The one line a user sees for an error.

    Args:
      e: the error that ended the run.

    Returns:
      'error: ' and the first line of its message; for an OSError its reason, the file it
      names and what to do (free disk space and resume, for a full disk).
    """
    if isinstance(e, OSError) and not isinstance(e, USER_ERRORS):
        where = f" ({e.filename})" if e.filename else ""
        if e.errno in _DISK_FULL:
            return (f"error: {e.strerror}{where}; the checkpoints written so far are intact: "
                    "free disk space and run the same command to resume")
        return f"error: {e.strerror or e}{where}; check the path and its permissions"
    return f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def _show_traceback() -> bool:
    return os.environ.get(TRACEBACK_ENV) == "1" or logging.get_verbosity() >= 1


def entry_point(run: Callable[[list[str]], int], compilation_cache_dir: Callable[[], str | None]
                = lambda: None) -> Callable[[list[str]], int]:
    """Wraps a runner's main for app.run.

    Called at import time, it also checks the --flagfile arguments of a runner's command
    line before absl reads them (exit_on_bad_flagfile): absl would print a traceback for
    some.

    Args:
      run: the runner's main, called with the arguments absl leaves; returns the exit code.
      compilation_cache_dir: called after the flags are parsed; the compilation cache
        directory (None: $JAX_COMPILATION_CACHE_DIR, if set; see
        compile_cache.use_compilation_cache).

    Returns:
      The main to pass to app.run: quiet logs, the paths of path_checks.PATH_FLAGS
      checked and the platform set up first; a bad flag, path, file, dataset or checkpoint
      (and any OSError) becomes one 'error: ...' line and exit code 1. The traceback is
      printed too with --verbosity=1 or LADDER_JAX_TRACEBACK=1. SIGINT and SIGTERM stop a
      run with a checkpoint (train.interrupt) and one line, exit code 130 or 143.
    """
    if _is_runner_command(sys.argv):
        exit_on_bad_flagfile(sys.argv)

    @functools.wraps(run)
    def main(argv: list[str]) -> int:
        quiet_library_logs()
        try:
            path_checks.check_paths()
            compile_cache.use_compilation_cache(compilation_cache_dir()
                                                or os.environ.get("JAX_COMPILATION_CACHE_DIR"))
            with interrupt.handling():  # SIGINT/SIGTERM: a checkpoint, then Interrupted
                return run(argv)
        except Interrupted as e:
            print(str(e), file=sys.stderr)
            return e.exit_code
        except (*USER_ERRORS, OSError, app.UsageError) as e:
            if _show_traceback():
                traceback.print_exc()
            print(error_line(e), file=sys.stderr)
            if isinstance(e, CheckpointError | OSError) and _is_runner_command(sys.argv) \
                    and not _show_traceback():
                # After a failed save (or a write failing beside one), orbax's writer tasks
                # print the failure again while the interpreter shuts down (after this
                # line); the older checkpoints are final by now (the loop waited for the
                # save in flight), so leave without that.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            return 1

    return main


def _is_runner_command(argv: Sequence[str]) -> bool:
    """Whether this process runs a module of experiments/ (python -m experiments.X, or the
    file): only then does importing a runner look at the command line."""
    if not argv or not argv[0]:
        return False
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.abspath(argv[0]).startswith(here + os.sep)


def exit_on_bad_flagfile(argv: Sequence[str]) -> None:
    """Prints path_checks.flagfile_problem's line and exits with code 1 if there is one. With
    LADDER_JAX_TRACEBACK=1 absl reads the files unchecked (and shows its traceback).

    Args:
      argv: the command line, program name first.
    """
    if os.environ.get(TRACEBACK_ENV) == "1":
        return
    problem = path_checks.flagfile_problem(argv)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
