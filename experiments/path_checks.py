"""The paths a runner's flags name, checked before any work starts, and the --flagfile
arguments, checked before absl reads them: every problem is one ConfigError line (or, for a
flagfile, one problem string) naming the flag and the path."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

from absl import flags

from experiments.compile_cache import NO_CACHE
from ladder_jax.errors import ConfigError

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


def check_paths(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Checks the path of every flag of PATH_FLAGS that this runner defines and was given.

    Empty values and unset flags are skipped, and so is --compilation_cache_dir=none.

    Args:
      flag_values: the parsed flags.

    Raises:
      ConfigError: one line naming the flag and the path, for the first path that cannot
        serve: an output directory that is a file or not writable (or, missing, whose
        nearest existing parent is not a writable directory), a missing or unreadable
        input, an output file that is a directory or whose directory is missing or not
        writable.
    """
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
    """Checks that ``path``, given as --``flag``, can serve as ``kind``. Writability is
    tried (a directory made and removed at once), so the check also holds for root and on
    special file systems.

    Args:
      flag: the flag's name, for the message.
      path: the path given.
      kind: OUTPUT_DIR, INPUT or OUTPUT_FILE (see PATH_FLAGS).

    Raises:
      ConfigError: one line, when the path cannot serve.
      ValueError: for an unknown ``kind``.
    """
    given = f"--{flag}={path}"
    if "\0" in path:
        raise ConfigError(f"{given!r} holds a NUL character; give a path")
    full = os.path.abspath(path)
    if os.path.lexists(full) and not os.path.exists(full):
        raise ConfigError(f"{given} is a broken symbolic link")
    if kind == INPUT:
        _check_input(given, full)
    elif kind == OUTPUT_DIR:
        _check_output_dir(given, flag, full)
    elif kind == OUTPUT_FILE:
        _check_output_file(given, full)
    else:
        raise ValueError(f"unknown path kind {kind!r}")


def _check_input(given: str, full: str) -> None:
    """ConfigError unless ``full`` exists and can be read (listed, for a directory)."""
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


def _check_output_dir(given: str, flag: str, full: str) -> None:
    """ConfigError unless ``full`` is a writable directory or can be made."""
    if os.path.exists(full):
        if not os.path.isdir(full):
            raise ConfigError(f"{given} is a file, not a directory; choose another --{flag}")
        _check_writable_dir(given, full, full)
        return
    parent = _nearest_existing(full)
    if not os.path.isdir(parent):
        raise ConfigError(f"{given} cannot be created: {parent} is a file, not a directory")
    _check_writable_dir(given, parent, full)


def _check_output_file(given: str, full: str) -> None:
    """ConfigError unless ``full`` is a writable file or can be made in its directory."""
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
    """The problem with the first --flagfile that absl could not read. absl reports a
    missing file in one line but shows a traceback for a file that is not UTF-8 text; this
    names the flag and the path either way. Pipes and devices are not read ahead (that
    would consume them).

    Args:
      argv: the command line, program name first; nested flagfiles are followed as absl
        reads them (cycles and empty names skipped).

    Returns:
      One line naming the flag, the path and the problem (and the flagfile that named a
      nested one), or None when every flagfile can be read.
    """
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
