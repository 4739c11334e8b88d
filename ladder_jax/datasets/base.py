"""The Dataset every loader returns, its checks, the shared TFDS reader and device preprocessing.

Images are uint8 [N, H, W, C] on the host; `preprocess` turns a batch of them into float32 on
the device, either by dividing by 255 (MNIST, Fashion-MNIST) or by the paper's CIFAR-10
Conv-Large preprocessing (global contrast normalisation, then ZCA whitening).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ladder_jax.errors import DataError

SPLITS = ("train", "test")
FIELDS = ("train_images", "train_labels", "test_images", "test_labels")

# The authors' ContrastNorm epsilon: a norm below it (a constant image) is replaced by 1.
GCN_EPSILON = 1e-8


class Preprocessing(NamedTuple):
    """Fitted GCN + ZCA parameters (numpy; D = H * W * C, pixels in HWC order)."""

    gcn_scale: float  # each image is scaled to L2 norm gcn_scale after removing its mean
    mean: np.ndarray  # float32 [D]: mean of the contrast-normalised training images
    whitening: np.ndarray  # float32 [D, D]: ZCA matrix P, whitened = (x - mean) @ P


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: comparing arrays has no single truth
class Dataset:
    """A labelled image data set as numpy arrays, plus how the model should preprocess it."""

    name: str
    train_images: np.ndarray  # uint8 [N, H, W, C]
    train_labels: np.ndarray  # int32 [N]
    test_images: np.ndarray  # uint8 [M, H, W, C]
    test_labels: np.ndarray  # int32 [M]
    num_classes: int
    class_names: tuple[str, ...]
    preprocessing: Preprocessing | None = None  # None: pixels / 255
    # A user dataset's content hash (``content_sha256``), which a run records as its config's
    # data_sha256; None for the built-in datasets, whose loaders pin their data by sha256.
    sha256: str | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(int(d) for d in self.train_images.shape[1:])


def default_cache_dir() -> str:
    """Returns $LADDER_JAX_DATA_DIR if set and non-empty, else ~/.cache/ladder_jax."""
    env = os.environ.get("LADDER_JAX_DATA_DIR")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "ladder_jax")


def make_dataset(
    name: str,
    arrays: Mapping[str, np.ndarray],
    origin: str,
    class_names: tuple[str, ...],
    image_shape: tuple[int, int, int] | None = None,
    preprocessing: Preprocessing | None = None,
) -> Dataset:
    """Returns a checked Dataset from the four FIELDS arrays (labels cast to int32).

    Raises DataError (one line, starting with `origin`) unless the images are uint8
    [n, H, W, C] with the same H, W, C in both splits (and equal to `image_shape` if given), the
    labels are integers [n] and every label lies in 0 .. len(class_names) - 1.
    """
    num_classes = len(class_names)
    out = {}
    expected = image_shape
    for split in SPLITS:
        images = np.asarray(arrays[split + "_images"])
        labels = np.asarray(arrays[split + "_labels"])
        if images.dtype != np.uint8 or images.ndim != 4 or 0 in images.shape[1:]:
            raise DataError(
                f"{origin}: {split} images are {images.dtype} {images.shape}, "
                "not uint8 [n, H, W, C]"
            )
        if expected is not None and images.shape[1:] != tuple(expected):
            raise DataError(
                f"{origin}: {split} images are {images.shape[1:]} (H, W, C), expected {expected}"
            )
        expected = images.shape[1:]  # The test split must match the training split.
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{origin}: {split} labels are {labels.dtype} {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > num_classes - 1):
            raise DataError(f"{origin}: {split} labels lie outside 0..{num_classes - 1}")
        out[split + "_images"] = images
        out[split + "_labels"] = labels.astype(np.int32, copy=False)
    return Dataset(
        name=name,
        num_classes=num_classes,
        class_names=tuple(class_names),
        preprocessing=preprocessing,
        **out,
    )


def make_grey_dataset(name: str, arrays: Mapping[str, np.ndarray], origin: str,
                      class_names: tuple[str, ...], image_shape: tuple[int, int, int]
                      ) -> Dataset:
    """``make_dataset`` for grey images stored as [n, H, W] (IDX files, caches): adds the
    channel axis as a view (the same bytes in the same order)."""
    arrays = dict(arrays)
    for split in SPLITS:
        images = np.asarray(arrays[split + "_images"])
        if images.ndim != 3:
            raise DataError(f"{origin}: {split} images are {images.dtype} {images.shape}")
        arrays[split + "_images"] = images[..., np.newaxis]
    return make_dataset(name, arrays, origin, class_names, image_shape)


def from_source(source: str, loaders: Mapping[str, Callable[[], Dataset]]) -> Dataset:
    """``loaders[source]()``, or DataError listing the valid sources."""
    if source not in loaders:
        raise DataError(f"unknown data source {source!r}; valid sources are: "
                        f"{', '.join(loaders)}")
    return loaders[source]()


def check_sizes(dataset: Dataset, sizes: Mapping[str, int], origin: str) -> None:
    """Raises DataError unless each split named in `sizes` has exactly that many examples."""
    for split, n in sizes.items():
        if getattr(dataset, split + "_images").shape[0] != n:
            raise DataError(f"{origin}: expected {n} {split} examples")


def content_sha256(dataset: Dataset) -> str:
    """Returns the hex sha256 of a dataset's content: its class count, then each FIELDS array's
    dtype, shape and bytes (C order). Equal exactly when the numbers a run sees are equal."""
    h = hashlib.sha256(f"ladder_jax dataset v1; classes={dataset.num_classes};".encode())
    for field in FIELDS:
        array = np.ascontiguousarray(getattr(dataset, field))
        h.update(f"{field} {array.dtype.str} {array.shape};".encode())
        h.update(array.data)
    return h.hexdigest()


_TFDS_BATCH = 4096  # examples per batch read from TFDS (a whole split at once needs its size)


def import_tfds(what: str = "source 'tfds'"):
    """Returns the tensorflow_datasets module; DataError with the install hint if missing."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"{what} needs tensorflow_datasets: pip install 'ladder_jax[tfds]'"
                        ) from None
    return tfds


def first_line(e: BaseException, limit: int = 200) -> str:
    """'<type>: <first line of the message>' of an exception from a library."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit] if text else ''}"


def tfds_arrays(tfds_name: str, data_dir: str | None, hint: str,
                splits: tuple[str, str] = SPLITS) -> dict[str, np.ndarray]:
    """Returns the FIELDS arrays of TFDS data set `tfds_name`: its `splits` (training, test)
    as stored (images [n, H, W, C]), read in order (no shuffling) in batches.

    Raises DataError with an install hint, or with `hint` (another source) if TFDS fails.
    """
    tfds = import_tfds()
    try:
        loaded = tfds.load(tfds_name, split=list(splits), batch_size=_TFDS_BATCH,
                           as_supervised=True, data_dir=data_dir)
        parts = []
        for split in loaded:
            batches = list(tfds.as_numpy(split))
            if not batches:
                raise ValueError("the split holds no examples")
            parts.append((np.concatenate([x for x, _ in batches]),
                          np.concatenate([y for _, y in batches])))
        (train_x, train_y), (test_x, test_y) = parts
    except Exception as e:  # noqa: BLE001 -- TFDS raises many types (download, checksum, TF).
        raise DataError(
            f"tensorflow_datasets could not load {tfds_name} ({first_line(e)}); use {hint}"
        ) from None
    return {"train_images": train_x, "train_labels": train_y,
            "test_images": test_x, "test_labels": test_y}


def preprocess(images: jax.Array, prep: Preprocessing | None) -> jax.Array:
    """uint8 images [B, H, W, C] -> float32 [B, H, W, C], traceable inside jit.

    prep None: images / 255 (bit-identical to the flat MNIST path, which divides the same
    float32 values). Otherwise the authors' ContrastNorm then ZCA.apply on raw 0..255 floats.
    """
    if prep is None:
        return images.astype(jnp.float32) / 255.0
    shape = images.shape
    x = images.reshape(shape[0], -1).astype(jnp.float32)
    x = x - jnp.mean(x, axis=1, keepdims=True)
    norms = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True)) / jnp.float32(prep.gcn_scale)
    norms = jnp.where(norms < GCN_EPSILON, jnp.float32(1.0), norms)
    x = x / norms
    # HIGHEST: GPUs would otherwise use TF32 (10-bit mantissa) for this float32 matmul.
    x = jnp.matmul(
        x - jnp.asarray(prep.mean, jnp.float32),
        jnp.asarray(prep.whitening, jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )
    return x.reshape(shape)
