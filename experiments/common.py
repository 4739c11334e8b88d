"""What the absl entry points share: quiet library logs, platform start-up, the paths the
user gives checked before any work, and one error line (never a traceback) for bad input."""

from __future__ import annotations

import errno
import functools
import json
import logging as std_logging
import os
import shlex
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence

import jax
from absl import app, flags, logging

from ladder_jax import datasets, platform, sweep
from ladder_jax.config import ConfigError
from ladder_jax.train import CheckpointError, TrainingDiverged, workdir

#: Set to 1 to see the traceback behind an error line.
TRACEBACK_ENV = "LADDER_JAX_TRACEBACK"
USER_ERRORS = (ConfigError, datasets.DataError, TrainingDiverged, CheckpointError)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

#: The kinds of path a flag may name (see check_paths):
#: OUTPUT_DIR  a directory the run writes in; created if missing, so then its nearest
#:             existing parent must be a writable directory.
#: INPUT       an existing directory (or file) the run reads.
#: OUTPUT_FILE a file the run writes: an existing writable file, or a new one in an existing
#:             writable directory (its parent is not created).
OUTPUT_DIR, INPUT, OUTPUT_FILE = "output directory", "input", "output file"
#: Which flag names which kind of path, for every runner that defines the flag. 'none' (any
#: case) is no path for --compilation_cache_dir; --data_dir with --data_source=tfds may be a
#: directory TFDS creates. --flagfile is checked before absl reads it (flagfile_problem).
PATH_FLAGS: dict[str, str] = {
    "workdir": OUTPUT_DIR,
    "sweep_dir": OUTPUT_DIR,
    "table_dir": OUTPUT_DIR,
    "compilation_cache_dir": OUTPUT_DIR,
    "data_dir": INPUT,
    "output": OUTPUT_FILE,
}
_PROBE_PREFIX = ".ladder_jax_write_check_"
#: --compilation_cache_dir's value for no cache (also when $JAX_COMPILATION_CACHE_DIR is set).
NO_CACHE = "none"


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
    """The one line a user sees for ``e``."""
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
    """Wraps a runner's main: quiet logs, the paths of PATH_FLAGS checked (check_paths) and
    platform set-up first; a bad flag, path, file, dataset or checkpoint (and any OSError)
    becomes one 'error: ...' line and exit code 1. The traceback is printed too with
    --verbosity=1 or LADDER_JAX_TRACEBACK=1.

    Called at import time, it also checks the --flagfile arguments of a runner's command line
    before absl reads them (flagfile_problem): absl would print a traceback for some."""
    if _is_runner_command(sys.argv):
        exit_on_bad_flagfile(sys.argv)

    @functools.wraps(run)
    def main(argv: list[str]) -> int:
        quiet_library_logs()
        try:
            check_paths()
            use_compilation_cache(compilation_cache_dir()
                                  or os.environ.get("JAX_COMPILATION_CACHE_DIR"))
            return run(argv)
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


def use_compilation_cache(directory: str | None) -> None:
    """platform.setup(), with JAX's persistent compilation cache in ``directory`` if given
    (not None, empty or 'none'). The directory is not made here: JAX makes it at the first
    compile, so a run refused for a bad flag leaves nothing behind (check_paths has checked
    that it can be made)."""
    platform.setup()
    if directory and directory.lower() != NO_CACHE:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))


def _is_runner_command(argv: Sequence[str]) -> bool:
    """Whether this process runs a module of experiments/ (python -m experiments.X, or the
    file): only then does importing a runner look at the command line."""
    if not argv or not argv[0]:
        return False
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.abspath(argv[0]).startswith(here + os.sep)


def check_paths(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """ConfigError (one line naming the flag and the path) for the first flag of PATH_FLAGS
    that this runner defines and that was given a path that cannot serve: an output directory
    that is a file or not writable (or, missing, whose nearest existing parent is not a
    writable directory), a missing or unreadable input, an output file that is a directory
    or whose directory is missing or not writable. Empty values and unset flags are skipped."""
    for name, kind in PATH_FLAGS.items():
        if name not in flag_values:
            continue
        path = flag_values[name].value
        if not isinstance(path, str) or not path:
            continue
        if name == "compilation_cache_dir" and path.lower() == NO_CACHE:
            continue
        if name == "data_dir":
            path = os.path.expanduser(path)
            source = flag_values["data_source"].value if "data_source" in flag_values else None
            if source == "tfds" and not os.path.exists(path):
                kind = OUTPUT_DIR  # TFDS downloads into it
        check_path(name, path, kind)


def check_path(flag: str, path: str, kind: str) -> None:
    """ConfigError (one line) unless ``path``, given as --``flag``, can serve as ``kind``
    (OUTPUT_DIR, INPUT or OUTPUT_FILE; see PATH_FLAGS). Writability is tried (a directory
    made and removed at once), so it also holds for root and on special file systems."""
    given = f"--{flag}={path}"
    if "\0" in path:
        raise ConfigError(f"{given!r} holds a NUL character; give a path")
    full = os.path.abspath(path)
    if os.path.lexists(full) and not os.path.exists(full):
        raise ConfigError(f"{given} is a broken symbolic link")
    if kind == INPUT:
        if not os.path.exists(full):
            raise ConfigError(f"{given} does not exist")
        try:
            if os.path.isdir(full):
                os.listdir(full)
            else:
                with open(full, "rb"):
                    pass
        except OSError as e:
            raise ConfigError(f"{given} cannot be read ({e.strerror})") from None
    elif kind == OUTPUT_DIR:
        if os.path.exists(full):
            if not os.path.isdir(full):
                raise ConfigError(f"{given} is a file, not a directory; choose another --{flag}")
            _check_writable_dir(given, full, full)
            return
        parent = _nearest_existing(full)
        if not os.path.isdir(parent):
            raise ConfigError(f"{given} cannot be created: {parent} is a file, not a directory")
        _check_writable_dir(given, parent, full)
    elif kind == OUTPUT_FILE:
        if os.path.isdir(full):
            raise ConfigError(f"{given} is a directory; give a file name")
        parent = os.path.dirname(full)
        if not os.path.isdir(parent):
            raise ConfigError(f"{given}: directory {parent} does not exist; create it first")
        if os.path.isfile(full):
            try:
                with open(full, "ab"):  # opened to write, nothing written
                    pass
            except OSError as e:
                raise ConfigError(f"{given} cannot be written ({e.strerror})") from None
        elif not os.path.exists(full):
            _check_writable_dir(given, parent, full)
    else:
        raise ValueError(f"unknown path kind {kind!r}")


def _nearest_existing(path: str) -> str:
    """``path`` or its nearest ancestor that exists (a broken link counts as existing)."""
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _check_writable_dir(given: str, directory: str, path: str) -> None:
    """ConfigError unless a directory can be made (and is removed at once) in ``directory``,
    the directory of ``path`` or its nearest existing parent."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=_PROBE_PREFIX, dir=directory))
    except OSError as e:
        if directory == path:
            raise ConfigError(f"{given} is not writable ({e.strerror})") from None
        raise ConfigError(f"{given} cannot be created: nothing can be made in {directory} "
                          f"({e.strerror})") from None


def flagfile_problem(argv: Sequence[str]) -> str | None:
    """The one-line problem with the first --flagfile of ``argv`` (nested ones included, as
    absl reads them) that absl could not read, or None. absl reports a missing file in one
    line but shows a traceback for a file that is not UTF-8 text; this names the flag and the
    path either way. Pipes and devices are not read ahead (that would consume them)."""
    stack: list[str] = []

    def check(path: str) -> str | None:
        if not path or path in stack:  # absl skips empty names and cycles as well
            return None
        given = f"--flagfile={path}"
        if not os.path.exists(path):
            return f"{given} does not exist"
        if os.path.isdir(path):
            return f"{given} is a directory, not a file of flags"
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                lines = f.readlines()
        except OSError as e:
            return f"{given} cannot be read ({e.strerror})"
        except UnicodeDecodeError as e:
            return f"{given} is not {e.encoding} text (byte {e.start}); give a text file of flags"
        stack.append(path)
        try:
            for nested in _flagfile_names(lines, nested=True):
                problem = check(nested)
                if problem is not None:
                    return problem if "(named in " in problem else f"{problem} (named in {path})"
            return None
        finally:
            stack.pop()

    return next(filter(None, (check(p) for p in _flagfile_names(argv[1:]))), None)


def _flagfile_names(args: Sequence[str], nested: bool = False) -> list[str]:
    """The --flagfile names in ``args`` (command-line arguments, or a flagfile's lines)."""
    names = []
    rest = [a.strip() for a in args] if nested else list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--" and not nested:
            break
        for prefix in ("--flagfile=", "-flagfile="):
            if arg.startswith(prefix):
                names.append(os.path.expanduser(arg[len(prefix):].strip()))
        if arg in ("--flagfile", "-flagfile") and rest and not nested:
            names.append(os.path.expanduser(rest.pop(0)))
    return names


def exit_on_bad_flagfile(argv: Sequence[str]) -> None:
    """Prints flagfile_problem's line and exits with code 1 if ``argv`` has one. With
    LADDER_JAX_TRACEBACK=1 absl reads the files unchecked (and shows its traceback)."""
    if os.environ.get(TRACEBACK_ENV) == "1":
        return
    problem = flagfile_problem(argv)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)


def cache_dir(flag_value: str | None, run_dir: str) -> str:
    """A sweep's compilation cache: the flag's directory (NO_CACHE, 'none': no cache, even
    with $JAX_COMPILATION_CACHE_DIR set), or by default $JAX_COMPILATION_CACHE_DIR, else
    <run_dir>/jax_cache (cells of one shape and re-runs then load their compiled programs
    instead of compiling them again)."""
    if flag_value is not None:
        return flag_value
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(run_dir, "jax_cache")


def without_flag(args: Sequence[str], name: str) -> list[str]:
    """``args`` less every form of the boolean flag ``name`` (--name, --noname, --name=...)."""
    def is_it(arg: str) -> bool:
        flag = arg.lstrip("-").split("=", 1)[0]
        return arg.startswith("-") and flag in (name, f"no{name}")
    return [a for a in args if not is_it(a)]


def run_sweep_or_report(module: str, cells: Sequence, sweep_dir: str, run_group,
                        write: Callable[[list, bool, str], dict]) -> int:
    """Trains the sweep's ``cells`` in ``sweep_dir`` or, with --report_only, only writes the
    outputs of what it holds now; ``write(results, final, command)`` writes them. Prints
    the last lines and returns the exit code (print_sweep_outcome)."""
    command = shlex.join(["python", "-m", module,
                          *without_flag(sys.argv[1:], "report_only")])
    report = lambda results, final: write(results, final, command)
    if flags.FLAGS.report_only:
        outcome = sweep.report_sweep(cells, sweep_dir, report)
    else:
        outcome = sweep.run_sweep(cells, sweep_dir, run_group=run_group, report=report)
    return print_sweep_outcome(outcome, len(cells))


def print_sweep_outcome(outcome, num_cells: int) -> int:
    """The sweep's last lines (cells finished and pending, where the results are, failures);
    the exit code: 1 if any cell failed."""
    failed = outcome.failed
    finished = sum(r.status == sweep.FINISHED for r in outcome.results)
    pending = num_cells - finished - len(failed)
    print(f"{finished}/{num_cells} cells finished" + (f", {pending} pending" if pending else "")
          + f" ({outcome.wall_time_s / 60:.1f} min); results in {outcome.outputs.get('csv')}")
    for r in failed:
        print(f"failed: {r.cell.name}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def write_json_output(path: str | None, figures: dict) -> None:
    """Writes a measuring tool's figures as JSON to ``path`` (--output), if given."""
    if path:
        workdir.write_text_atomic(path, json.dumps(figures, indent=2))
