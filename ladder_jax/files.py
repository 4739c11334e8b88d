"""Writing files so that a kill or a full disk at any moment leaves the old file whole: the
one atomic writer of the package (a leaf module: it imports nothing of ladder_jax).

Every writer fills a temporary file beside the target, syncs it and renames it over the
target (os.replace); on any failure the temporary file is removed and an OSError names the
target file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

#: The name prefix of the temporary files (beside their target until the rename).
TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def replacing(path: str, binary: bool = False, mode: int | None = None) -> Iterator[IO]:
    """A temporary file beside ``path`` that replaces ``path`` when the block ends.

    Args:
      path: the file to write.
      binary: open the temporary file in binary mode; text files are opened with
        newline='' (the writer's own line ends).
      mode: the file's permission bits; None: the usual ones for a new file (0o666 less
        the umask).

    Yields:
      The open temporary file; its ``name`` is its path, so what was written can be read
      back (after a flush) before the rename. When the block ends without an exception the
      file is flushed, synced and renamed to ``path``; otherwise it is removed, and an
      OSError of the block or of the writing is raised as one that names ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX,
                               suffix=os.path.splitext(path)[1])
    try:
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)  # mkstemp makes 0600
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""}),
                  opener=lambda *_: fd) as f:  # mkstemp's descriptor, named by the path
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        named = with_filename(e, path)
        if named is e:
            raise
        raise named from e


def write_file_atomic(path: str, write: Callable[[IO], Any], binary: bool = False, *,
                      mode: int | None = None) -> None:
    """Writes a file atomically (see ``replacing``).

    Args:
      path: the file to write.
      write: called with the open temporary file; writes the content.
      binary: whether ``write`` writes bytes (else text, with its own line ends).
      mode: the file's permission bits (None: 0o666 less the umask).
    """
    with replacing(path, binary=binary, mode=mode) as f:
        write(f)


def write_text_atomic(path: str, text: str, *, mode: int | None = None) -> None:
    """Writes ``text`` to ``path`` atomically (see ``replacing``).

    Args:
      path: the file to write.
      text: its whole content, written with the line ends it holds.
      mode: the file's permission bits (None: 0o666 less the umask).
    """
    write_file_atomic(path, lambda f: f.write(text), mode=mode)


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` to ``path`` atomically as JSON: indented by 2, keys sorted, a final
    newline.

    Args:
      path: the file to write.
      obj: anything json.dumps takes.
    """
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def with_filename(e: BaseException, path: str) -> BaseException:
    """An exception that names the file it is about.

    Args:
      e: an exception raised while writing ``path``.
      path: the file written.

    Returns:
      For an OSError of a file object (which names no file; 'No space left on device' alone
      does not say which disk) a new OSError with the same errno and message naming
      ``path``; ``e`` itself otherwise.
    """
    if isinstance(e, OSError) and e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror, path)
    return e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
