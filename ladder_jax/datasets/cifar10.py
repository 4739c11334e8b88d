"""CIFAR-10 from the official python archive (default) or TFDS, with the Conv-Large
preprocessing fitted: uint8 images [n, 32, 32, 3] (HWC), `Dataset.preprocessing` set.

Source "archive" reads ``cifar-10-python.tar.gz`` from `data_dir` (default: the cache
directory) without extracting it: data_batch_1..5 and test_batch are pickled dicts whose
b'data' rows hold 3072 bytes in CHW order; batches.meta names the classes. The pickles are
read with a numpy-only unpickler (no code can run).

Archive checks: the whole gzip stream is decompressed first, so its CRC-32 and length catch a
damaged download (an error). The md5 is then compared with the official archive's; a mismatch
is only a warning, because a smaller archive in the same layout (tests, subsets) is legitimate,
but its results are not comparable with the paper's.

Preprocessing, as the authors' code (CuriousAI/ladder run.py + nn.py, the README's Conv-Large
commands ``--contrast-norm 55 --whiten-zca 3072``): pixels as float32 0..255 (not / 255), then
ContrastNorm(scale=55, epsilon=1e-8) per image, then ZCA(filter_bias=0.1) fitted on all
training images: cov = covariance (divided by n) + 0.1 * I, P = V diag(1/sqrt(eig)) V^T,
whitened = (x - mean) @ P, every component kept. The fit (minutes of float64 work for 50000
images) is cached as cifar10-gcn-zca-<data hash>.npz in the cache directory.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import tarfile
import zlib

import numpy as np
import scipy.linalg
from absl import logging

from ladder_jax.datasets import storage
from ladder_jax.datasets.base import (
    GCN_EPSILON,
    DataError,
    Dataset,
    Preprocessing,
    default_cache_dir,
    make_dataset,
    tfds_arrays,
)

NAME = "cifar10"
SOURCES = ("archive", "tfds")
ARCHIVE_FILE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_SHAPE = (32, 32, 3)
HAS_PREPROCESSING = True  # every load sets Dataset.preprocessing (GCN + ZCA)
GCN_SCALE = 55.0  # the authors' --contrast-norm 55
ZCA_BIAS = 0.1  # the authors' ZCA filter_bias, added to the covariance's diagonal

_BATCH_DIR = "cifar-10-batches-py/"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_META = "batches.meta"
_PREP_FIELDS = ("gcn_scale", "mean", "whitening")
_PREP_VERSION = 1  # part of the cache key: bump it when the fit changes
_GCN_CHUNK = 8192  # rows per chunk: bounds the float32 / float64 temporaries
_TFDS_HINT = f"--data_source=archive with {ARCHIVE_FILE} in --data_dir=DIR"


def load(source: str, data_dir: str | None = None, cache_dir: str | None = None) -> Dataset:
    """Returns CIFAR-10 (uint8 images [n, 32, 32, 3], int32 labels [n]) with preprocessing set.

    source: "archive" (ARCHIVE_FILE in `data_dir`, default the cache directory; `data_dir` may
    also name the file) or "tfds". The fitted GCN + ZCA is cached in `cache_dir` (default
    `default_cache_dir()`). Raises DataError with a one-line fix on any failure.
    """
    cache_dir = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
    data_dir = os.path.expanduser(data_dir) if data_dir else data_dir
    if source == "archive":
        path = _archive_path(data_dir, cache_dir)
        arrays, class_names = _read_archive(path)
        dataset = make_dataset(NAME, arrays, path, class_names, IMAGE_SHAPE)
    elif source == "tfds":
        arrays = tfds_arrays("cifar10", data_dir, _TFDS_HINT)
        dataset = make_dataset(
            NAME, arrays, "tensorflow_datasets cifar10", CLASS_NAMES, IMAGE_SHAPE
        )
    else:
        raise DataError(f"unknown data source {source!r}; valid sources are: {', '.join(SOURCES)}")
    prep = cached_preprocessing(dataset.train_images, cache_dir)
    return dataclasses.replace(dataset, preprocessing=prep)


# ----------------------------------------------------------------------------- archive


def _archive_path(data_dir: str | None, cache_dir: str) -> str:
    """Returns the archive's path: `data_dir` if it is a file, else ARCHIVE_FILE inside it."""
    if data_dir and os.path.isfile(data_dir):
        return data_dir
    path = os.path.join(data_dir or cache_dir, ARCHIVE_FILE)
    if not os.path.isfile(path):
        raise DataError(
            f"CIFAR-10 archive {path} not found; put the official {ARCHIVE_FILE} (md5 "
            f"{ARCHIVE_MD5}) in {data_dir or cache_dir} or pass --data_dir=DIR of the directory "
            "holding it, or use --data_source=tfds"
        )
    return path


def _read_members(path: str) -> dict[str, bytes]:
    """Returns {name: bytes} of the batches and meta file in the archive, read in memory."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        digest = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        tar_bytes = gzip.decompress(raw)  # the whole stream: checks CRC-32 and length
        del raw
        wanted = {_BATCH_DIR + n for n in (*_TRAIN_BATCHES, _TEST_BATCH, _META)}
        members = {}
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for info in tar:
                if info.name in wanted and info.isfile():
                    members[info.name.removeprefix(_BATCH_DIR)] = tar.extractfile(info).read()
    except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
        raise DataError(
            f"CIFAR-10 archive {path} is damaged ({type(e).__name__}: {e}); download it again"
        ) from None
    if digest != ARCHIVE_MD5:
        logging.warning(
            "%s has md5 %s, not the official %s: loading it anyway (its structure is checked), "
            "but results on it are not comparable with the paper's",
            path,
            digest,
            ARCHIVE_MD5,
        )
    missing = [n for n in (*_TRAIN_BATCHES, _TEST_BATCH, _META) if n not in members]
    if missing:
        raise DataError(f"CIFAR-10 archive {path} lacks {_BATCH_DIR}{missing[0]}")
    return members


def _batch(raw: bytes, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (uint8 images [n, 32, 32, 3], labels [n]) from one pickled batch."""
    obj = storage.unpickle_restricted(raw, origin, encoding="bytes")
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise DataError(f"{origin} is not a dict with b'data' and b'labels'")
    data, labels = obj[b"data"], np.asarray(obj[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{origin}: b'data' is not a uint8 [n, 3072] array")
    if data.shape[1] != 3 * 32 * 32 or labels.shape != data.shape[:1]:
        raise DataError(f"{origin}: b'data' is {data.shape} with {labels.shape} labels")
    # Each row is the red plane, then green, then blue (CHW): move channels last.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_archive(path: str) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Returns (the four FIELDS arrays, class names from batches.meta) of the archive."""
    members = _read_members(path)
    meta = storage.unpickle_restricted(members[_META], f"{_META} in {path}", encoding="bytes")
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
        raise DataError(f"{_META} in {path} has no b'label_names' list")
    train = [_batch(members[n], f"{n} in {path}") for n in _TRAIN_BATCHES]
    test_images, test_labels = _batch(members[_TEST_BATCH], f"{_TEST_BATCH} in {path}")
    arrays = {
        "train_images": np.concatenate([images for images, _ in train]),  # one HWC copy
        "train_labels": np.concatenate([labels for _, labels in train]),
        "test_images": np.ascontiguousarray(test_images),
        "test_labels": test_labels,
    }
    return arrays, tuple(n.decode("utf-8", "replace") for n in names)


# ----------------------------------------------------------------------------- GCN + ZCA


def _contrast_normalize(images: np.ndarray, scale: float) -> np.ndarray:
    """Returns float32 [N, D]: the authors' ContrastNorm.apply of uint8 images [N, ...]."""
    n = images.shape[0]
    out = np.empty((n, int(np.prod(images.shape[1:]))), np.float32)
    for start in range(0, n, _GCN_CHUNK):
        x = images[start : start + _GCN_CHUNK].reshape(-1, out.shape[1]).astype(np.float32)
        x -= x.mean(axis=1)[:, np.newaxis]
        norms = np.sqrt(np.sum(x**2, axis=1)) / np.float32(scale)
        norms[norms < GCN_EPSILON] = np.float32(1.0)  # a constant image stays all zeros
        x /= norms[:, np.newaxis]
        out[start : start + x.shape[0]] = x
    return out


def _covariance(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Returns float64 [D, D]: np.cov(x, rowvar=False, bias=True), accumulated in chunks."""
    cov = np.zeros((x.shape[1], x.shape[1]), np.float64)
    for start in range(0, x.shape[0], _GCN_CHUNK):
        centred = x[start : start + _GCN_CHUNK].astype(np.float64) - mean
        cov += centred.T @ centred
    return cov / x.shape[0]


def fit_preprocessing(train_images: np.ndarray) -> Preprocessing:
    """Returns GCN (scale 55) + ZCA (bias 0.1) fitted on uint8 images [N, H, W, C].

    Preprocessing.mean is float32 [D] and .whitening float32 [D, D], D = H * W * C in HWC
    order (the authors' CHW order gives the same values, permuted). Statistics are
    accumulated in float64 (the authors' mean was a float32 sum; the difference is rounding).
    """
    images = np.asarray(train_images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] < 2:
        raise DataError(f"fit_preprocessing needs uint8 [N>=2, H, W, C], got {images.shape}")
    x = _contrast_normalize(images, GCN_SCALE)
    mean = x.mean(axis=0, dtype=np.float64)
    cov = _covariance(x, mean)
    cov[np.diag_indices_from(cov)] += ZCA_BIAS
    eigs, eigv = scipy.linalg.eigh(cov)
    if not (np.isfinite(eigs).all() and np.isfinite(eigv).all() and eigs.min() > 0):
        raise DataError("ZCA fit failed: the covariance has non-finite or non-positive eigenvalues")
    whitening = (eigv * (1.0 / np.sqrt(eigs))) @ eigv.T
    return Preprocessing(float(GCN_SCALE), mean.astype(np.float32), whitening.astype(np.float32))


def _data_key(train_images: np.ndarray) -> str:
    """Returns the hex sha256 naming the fit: constants, shape and bytes of the images."""
    h = hashlib.sha256(
        f"gcn={GCN_SCALE} eps={GCN_EPSILON} zca_bias={ZCA_BIAS} v{_PREP_VERSION} "
        f"shape={tuple(train_images.shape)};".encode()
    )
    h.update(np.ascontiguousarray(train_images).data)
    return h.hexdigest()


def _prep_from_arrays(dim: int):
    """Returns the function that checks cached arrays and makes them a Preprocessing."""

    def build(arrays: dict[str, np.ndarray]) -> Preprocessing:
        mean, whitening = arrays["mean"], arrays["whitening"]
        if float(arrays["gcn_scale"]) != GCN_SCALE or mean.shape != (dim,):
            raise ValueError(f"it holds scale {arrays['gcn_scale']} and mean {mean.shape}")
        if whitening.shape != (dim, dim) or whitening.dtype != np.float32:
            raise ValueError(f"its whitening matrix is {whitening.dtype} {whitening.shape}")
        return Preprocessing(GCN_SCALE, mean, whitening)

    return build


def preprocessing_cache_path(train_images: np.ndarray, cache_dir: str) -> str:
    """Returns where the fit for these uint8 images [N, H, W, C] is cached."""
    return os.path.join(cache_dir, f"cifar10-gcn-zca-{_data_key(train_images)[:16]}.npz")


def cached_preprocessing(train_images: np.ndarray, cache_dir: str) -> Preprocessing:
    """Returns fit_preprocessing(train_images), read from `cache_dir` when fitted before."""
    path = preprocessing_cache_path(train_images, cache_dir)
    dim = int(np.prod(train_images.shape[1:]))
    what = "CIFAR-10 preprocessing cache"
    prep = storage.read_verified_npz(path, _PREP_FIELDS, _prep_from_arrays(dim), what)
    if prep is None:
        logging.info("fitting GCN + ZCA on %d images (cached as %s)", len(train_images), path)
        prep = fit_preprocessing(train_images)
        try:
            os.makedirs(cache_dir, exist_ok=True)
        except OSError:
            pass  # try_write_verified_npz then warns; the fit is still returned
        arrays = {
            "gcn_scale": np.float64(prep.gcn_scale),
            "mean": prep.mean,
            "whitening": prep.whitening,
        }
        storage.try_write_verified_npz(path, arrays, what)
    return prep
