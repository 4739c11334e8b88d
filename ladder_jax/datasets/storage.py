"""Shared file formats: IDX files, the checksummed npz cache and a numpy-only unpickler."""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
from absl import logging

from ladder_jax import files
from ladder_jax.datasets.base import DataError

T = TypeVar("T")

SHA_SUFFIX = ".sha256"

# The four files of MNIST and of Fashion-MNIST (the same names for both).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type byte -> big-endian numpy dtype (the format's spec lists exactly these).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}


class _CorruptCache(Exception):
    """A cached file failed its check; read_verified_npz deletes it so the caller rebuilds it."""


def sha256_file(path: str | os.PathLike) -> str:
    """Returns the hex sha256 of the file at `path`, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_quietly(path: str) -> None:
    """Deletes `path` if it exists."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def ensure_dir(directory: str, what: str) -> None:
    """Creates `directory`; raises DataError naming LADDER_JAX_DATA_DIR if that fails."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create the {what} cache directory {directory} ({e.strerror}); "
            "set LADDER_JAX_DATA_DIR to a writable directory"
        ) from None


# ----------------------------------------------------------------------------- IDX files


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes `array` to `path` in IDX format (gzipped if the path ends with .gz)."""
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(
            f"IDX cannot store dtype {array.dtype}; cast to one of uint8, int8, int16, int32, "
            "float32, float64"
        )
    if not 1 <= array.ndim <= 255:
        raise DataError(f"IDX needs 1 to 255 dimensions, got an array of shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header)
        f.write(body)


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Returns the array in the (decompressed) IDX bytes `raw`; `name` labels the errors.

    Raises DataError if `raw` is not IDX or its size mismatches the header.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{name} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"IDX file {name} is truncated inside its header; re-download it")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise DataError(
            f"IDX file {name} has {len(raw) - offset} data bytes but its header {shape} needs "
            f"{expected}; the file is truncated or corrupt, re-download it"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=offset)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Returns the array stored in IDX file `path` (gzip detected by its magic bytes).

    Raises DataError naming the file if it is truncated, not IDX, or its size mismatches the
    header.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"IDX file {name} does not exist") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {name} ({e}); re-download it") from None
    return parse_idx(raw, name)


def read_idx_dir(
    data_dir: str | None, what: str, hint: str, image_hw: tuple[int, int] = (28, 28)
) -> dict[str, np.ndarray]:
    """Returns the IDX_FILES arrays (images uint8 [n, *image_hw]) from `data_dir`.

    Each file may also be gzipped (name + .gz). `what` names the data set in errors and `hint`
    says how to pass the directory. Raises DataError (one line) on any problem.
    """
    if not data_dir:
        raise DataError(f"source 'idx' needs a directory of the four {what} IDX files: {hint}")
    if not os.path.isdir(data_dir):
        raise DataError(f"{what} IDX directory {data_dir} does not exist; {hint}")
    paths = {}
    for field, base in IDX_FILES.items():  # Check all four before the slow reads.
        candidates = [os.path.join(data_dir, base + ext) for ext in ("", ".gz")]
        found = [p for p in candidates if os.path.isfile(p)]
        if not found:
            raise DataError(f"missing {what} file {base} (or {base}.gz) in directory {data_dir}")
        paths[field] = found[0]
    arrays = {field: read_idx(path) for field, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[split + "_images"], arrays[split + "_labels"]
        img_path, lbl_path = paths[split + "_images"], paths[split + "_labels"]
        if images.ndim != 3 or images.shape[1:] != tuple(image_hw) or images.dtype != np.uint8:
            raise DataError(
                f"{img_path} holds {images.dtype} {images.shape}, not uint8 [n, "
                f"{image_hw[0]}, {image_hw[1]}] images"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{lbl_path} holds {labels.shape} labels for {images.shape[0]} images in {img_path}"
            )
    return arrays


# ----------------------------------------------------------------------------- npz cache


def write_verified_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes ``arrays`` to the npz file ``path`` and its sha256 sidecar, each atomically.

    The sidecar is renamed into place first: a kill between the two renames leaves a
    checksum that does not match, so the next read rebuilds the cache. Both files are
    0o644 (plain readable data).

    Args:
      path: the npz file to write (the sidecar is ``path`` + SHA_SUFFIX).
      arrays: the arrays by name, as np.savez takes them.
    """
    with files.replacing(path, binary=True, mode=0o644) as npz:
        np.savez(npz, **arrays)
        npz.flush()
        sidecar = f"{sha256_file(npz.name)}  {os.path.basename(path)}\n"
        files.write_text_atomic(path + SHA_SUFFIX, sidecar, mode=0o644)


def try_write_verified_npz(path: str, arrays: Mapping[str, np.ndarray], what: str) -> None:
    """write_verified_npz, but only logs a warning if it fails (the data is still usable)."""
    try:
        write_verified_npz(path, arrays)
    except OSError as e:  # A read-only cache still yields data; the next run rebuilds it.
        logging.warning("could not write the %s %s (%s)", what, path, e)


def _read_checked(path: str, names: tuple[str, ...], build: Callable[[dict], T]) -> T:
    """Returns build(arrays) for the verified npz at `path`; raises _CorruptCache on failure."""
    try:
        with open(path + SHA_SUFFIX) as f:
            expected = f.read().split()[0]
    except (OSError, IndexError):
        raise _CorruptCache(f"its checksum file {path + SHA_SUFFIX} is missing") from None
    actual = sha256_file(path)
    if actual != expected:
        raise _CorruptCache(f"sha256 {actual} does not match {expected}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in names}
        return build(arrays)  # DataError is a ValueError: failed checks also mean "rebuild".
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _CorruptCache(f"{type(e).__name__}: {e}") from None


def read_verified_npz(
    path: str, names: tuple[str, ...], build: Callable[[dict[str, np.ndarray]], T], what: str
) -> T | None:
    """Returns build({name: array}) from the npz cache at `path`, or None to say "rebuild it".

    None when the file is absent, or when it fails its sha256 sidecar, lacks an array or
    `build` raises ValueError/KeyError: then it and its sidecar are deleted with a warning
    naming `what` (e.g. "MNIST cache") and the path.
    """
    if not os.path.exists(path):
        return None
    try:
        return _read_checked(path, names, build)
    except _CorruptCache as e:
        logging.warning("%s %s is corrupt (%s); deleting it and rebuilding it", what, path, e)
        remove_quietly(path)
        remove_quietly(path + SHA_SUFFIX)
        return None


# ----------------------------------------------------------------------------- pickles


def _numpy_global(module: str, name: str) -> object | None:
    """Returns the numpy callable a pickle of an array or dtype may name, else None."""
    if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:  # numpy >= 2 (importing numpy.core there only warns and forwards)
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy 1.x
            from numpy.core.multiarray import _reconstruct
        return _reconstruct
    if name == "_frombuffer" and module in ("numpy.core.numeric", "numpy._core.numeric"):
        # Protocol 5 (Python 3.8+'s default) pickles arrays as buffer + dtype + shape.
        try:
            from numpy._core.numeric import _frombuffer
        except ImportError:
            from numpy.core.numeric import _frombuffer
        return _frombuffer
    if module == "numpy" and name == "ndarray":
        return np.ndarray
    if module == "numpy" and name == "dtype":
        return np.dtype
    return None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays, so a tampered pickle cannot run code.

    Plain containers and scalars (dict, list, tuple, int, bytes, str) need no find_class.
    """

    what = "the pickle"

    def find_class(self, module: str, name: str):
        found = _numpy_global(module, name)
        if found is None:
            raise DataError(
                f"refusing to unpickle {module}.{name}: {self.what} may only hold numpy arrays"
            )
        return found


def unpickle_restricted(raw: bytes, what: str = "the pickle", encoding: str = "latin1") -> object:
    """Returns the object in pickle `raw`, allowing only numpy arrays/dtypes as globals.

    encoding: how Python 2 strings load ("latin1": as str, the MNIST pickle; "bytes": as bytes,
    the CIFAR-10 batches with their b'data' keys). Raises DataError naming `what`.
    """
    unpickler = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding=encoding)
    unpickler.what = what
    try:
        return unpickler.load()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 -- a damaged pickle can fail in many ways.
        raise DataError(f"{what} is unreadable ({type(e).__name__}: {e})") from None


def kept_or_fetched(path: str, read: Callable[[str], T], fetch: Callable[[], str],
                    corrupt: type[Exception], what: str, hint: str) -> T:
    """``read`` of the download kept at ``path``, else of a fresh ``fetch()`` (which returns
    the new file's path). A kept file that fails ``read`` with ``corrupt`` is deleted with a
    warning and fetched again; a fresh one that fails is a DataError naming ``hint``."""
    if os.path.exists(path):
        try:
            return read(path)
        except corrupt as e:
            logging.warning("cached %s is corrupt (%s); deleting it and downloading it again",
                            what, e)
            remove_quietly(path)
    fresh = fetch()
    try:
        return read(fresh)
    except corrupt as e:
        raise DataError(f"the downloaded {what} failed verification ({e}); pass {hint}") from None


def cached_in_npz(path: str, names: Sequence[str], what: str,
                  from_arrays: Callable[[dict[str, np.ndarray]], T], build: Callable[[], T],
                  to_arrays: Callable[[T], dict[str, np.ndarray]]) -> T:
    """The value cached in the verified npz ``path``, else ``build()``, then cached there
    (a damaged cache is deleted and rebuilt; one that cannot be written only warns)."""
    value = read_verified_npz(path, names, from_arrays, what)
    if value is None:
        value = build()
        try_write_verified_npz(path, to_arrays(value), what)
    return value


def run_tool(cmd: list[str], timeout_s: float, cwd: str | None = None,
             env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """(succeeded, its stderr or else stdout, stripped) of running ``cmd``; a missing program
    or a timeout is a failure with the reason as the text."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=None if env is None else dict(env),
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:  # OSError: the program is missing
        return False, str(e)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


def keep_download(tmpdir: str, pattern: str, dest: str, ok: bool, error: str) -> str:
    """Moves the one file matching ``pattern`` in ``tmpdir`` (where a download tool saved
    it) to ``dest`` and returns ``dest``; DataError(``error``) when the tool failed or did
    not save exactly one such file."""
    found = glob.glob(os.path.join(tmpdir, pattern))
    if not ok or len(found) != 1:
        raise DataError(error)
    os.replace(found[0], dest)
    return dest
