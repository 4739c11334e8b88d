"""Fashion-MNIST from Debian's package (default), IDX files or TFDS: uint8 [n, 28, 28, 1].

The default source ("debian") needs no dataset host: ``apt-get download dataset-fashion-mnist``
(version 0.0~git20200523.55506a9-1; fetched, never installed) brings a .deb whose
usr/share/datasets/fashion-mnist/ holds the four official IDX .gz files (Debian rewrote the
gzip headers only). The .deb is unpacked in memory (ar archive, then its data.tar.*), each
file's decompressed bytes are checked against the official sha256, and the arrays are cached
as ``fashion_mnist.npz`` (+ sha256 sidecar) next to the kept .deb, which is what a damaged
cache is rebuilt from.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import tarfile
import tempfile
import zlib

import numpy as np
from absl import logging

from ladder_jax.datasets import base, storage
from ladder_jax.datasets.base import FIELDS, Dataset, make_grey_dataset

NAME = "fashion_mnist"
SOURCES = ("debian", "idx", "tfds")
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGE_SHAPE = (28, 28, 1)

_DEB_PACKAGE = "dataset-fashion-mnist"
_DEB_FILE = "dataset-fashion-mnist.deb"  # the kept download, under a fixed name
_DEB_DIR = "usr/share/datasets/fashion-mnist/"
_NPZ_FILE = "fashion_mnist.npz"
_APT_TIMEOUT_S = 900
_SPLIT_SIZES = {"train": 60_000, "test": 10_000}
_HINT = (
    "--data_source=idx --data_dir=DIR (a directory holding the four official Fashion-MNIST "
    "files, optionally .gz) or --data_source=tfds"
)
# sha256 of the decompressed official files (as published with Fashion-MNIST).
_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


class _CorruptDeb(Exception):
    """The .deb failed its checks; a kept one is deleted and downloaded again."""


def load(source: str, data_dir: str | None = None, cache_dir: str | None = None) -> Dataset:
    """Fashion-MNIST (uint8 images [n, 28, 28, 1], int32 labels [n]) from `source`:
    "debian" (Debian's package, cached in `cache_dir`, default `base.default_cache_dir()`), "idx"
    (the four official files, optionally .gz, in `data_dir`) or "tfds". Raises DataError
    with a one-line fix on any failure.
    """
    data_dir = os.path.expanduser(data_dir) if data_dir else data_dir
    cache_dir = os.path.expanduser(cache_dir) if cache_dir else base.default_cache_dir()
    return base.from_source(source, {
        "debian": lambda: _load_debian(cache_dir),
        "idx": lambda: _from_3d(storage.read_idx_dir(data_dir, "Fashion-MNIST", "--data_dir=DIR"),
                                f"IDX files in {data_dir}"),
        "tfds": lambda: base.make_dataset(
            NAME, base.tfds_arrays("fashion_mnist", data_dir, "--data_source=debian or idx"),
            "tensorflow_datasets fashion_mnist", CLASS_NAMES, IMAGE_SHAPE),
    })


def _from_3d(arrays: dict[str, np.ndarray], origin: str) -> Dataset:
    """The Dataset of arrays whose images are [n, 28, 28] (the channel axis added)."""
    return make_grey_dataset(NAME, arrays, origin, CLASS_NAMES, IMAGE_SHAPE)


# ----------------------------------------------------------------------------- Debian package


def _apt_get(args: list[str], cwd: str) -> tuple[bool, str]:
    """Returns (succeeded, its stderr or stdout) of `apt-get *args` run in `cwd`."""
    return storage.run_tool(["apt-get", *args], _APT_TIMEOUT_S, cwd=cwd)


def _last_error(detail: str) -> str:
    """Returns apt's last "E:" line (its warnings come first), else the last line."""
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    return (errors or lines or ["no .deb was saved"])[-1][:200]


def _apt_download(dest: str) -> str:
    """Returns the path of the .deb, fetched by apt-get download into directory `dest`."""
    with tempfile.TemporaryDirectory(dir=dest, prefix=".apt-download-") as tmpdir:
        ok, detail = _apt_get(["download", _DEB_PACKAGE], tmpdir)
        if not ok and "unable to locate package" in detail.lower():
            # A fresh system has empty package lists: refresh them once (needs root).
            logging.info("apt-get cannot locate %s; running apt-get update", _DEB_PACKAGE)
            ok, detail = _apt_get(["update"], tmpdir)
            if ok:
                ok, detail = _apt_get(["download", _DEB_PACKAGE], tmpdir)
        return storage.keep_download(
            tmpdir, f"{_DEB_PACKAGE}_*.deb", os.path.join(dest, _DEB_FILE), ok,
            f"could not fetch the Debian package {_DEB_PACKAGE} with apt-get "
            f"({_last_error(detail)}); get the files another way and pass {_HINT}")


def _ar_member(raw: bytes, prefix: str) -> bytes:
    """Returns the bytes of the first member of ar archive `raw` whose name starts so."""
    if raw[:8] != b"!<arch>\n":
        raise _CorruptDeb("it is not an ar archive")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii"))
        except ValueError:
            raise _CorruptDeb(f"bad ar header at byte {pos}") from None
        if header[58:60] != b"`\n" or pos + 60 + size > len(raw):
            raise _CorruptDeb(f"truncated or bad ar member {name!r}")
        if name.startswith(prefix):
            return raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are padded to an even offset
    raise _CorruptDeb(f"it has no {prefix}* member")


def _read_deb(deb: str) -> dict[str, np.ndarray]:
    """Returns the four IDX arrays (FIELDS keys) from the .deb, each file's sha256 checked."""
    try:
        with open(deb, "rb") as f:
            data_tar = _ar_member(f.read(), "data.tar")
        files = {}
        # "r:*" reads data.tar.xz / .gz / .bz2 / plain (Debian's package uses xz).
        with tarfile.open(fileobj=io.BytesIO(data_tar), mode="r:*") as tar:
            for info in tar:
                base = info.name.removeprefix("./")
                if base.startswith(_DEB_DIR) and base.endswith(".gz") and info.isfile():
                    files[base[len(_DEB_DIR) : -3]] = gzip.decompress(tar.extractfile(info).read())
    except (OSError, EOFError, zlib.error, tarfile.TarError, lzma.LZMAError) as e:
        raise _CorruptDeb(f"{deb} is unreadable ({type(e).__name__}: {e})") from None
    arrays = {}
    for field, base in storage.IDX_FILES.items():
        if base not in files:
            raise _CorruptDeb(f"{deb} lacks {_DEB_DIR}{base}.gz")
        digest = hashlib.sha256(files[base]).hexdigest()
        if digest != _SHA256[base]:
            raise _CorruptDeb(f"{base} in {deb} has sha256 {digest}, not {_SHA256[base]}")
        arrays[field] = storage.parse_idx(files[base], f"{base} in {deb}")
    return arrays


def _fetch_arrays(cache_dir: str) -> dict[str, np.ndarray]:
    """Returns the verified IDX arrays from the kept .deb, downloading it if needed."""
    return storage.kept_or_fetched(os.path.join(cache_dir, _DEB_FILE), _read_deb,
                                   lambda: _apt_download(cache_dir), _CorruptDeb,
                                   f"{_DEB_PACKAGE} .deb", _HINT)


def _from_cache(path: str):
    """Returns the function that turns the cached npz arrays of `path` into a full Dataset."""

    def build(arrays: dict[str, np.ndarray]) -> Dataset:
        dataset = base.make_dataset(NAME, arrays, path, CLASS_NAMES, IMAGE_SHAPE)
        base.check_sizes(dataset, _SPLIT_SIZES, path)
        return dataset

    return build


def _load_debian(cache_dir: str) -> Dataset:
    """Returns Fashion-MNIST from the npz cache, else from the (kept or downloaded) .deb."""
    storage.ensure_dir(cache_dir, "Fashion-MNIST")
    npz = os.path.join(cache_dir, _NPZ_FILE)
    origin = f"the {_DEB_PACKAGE} package"

    def build() -> Dataset:
        dataset = _from_3d(_fetch_arrays(cache_dir), origin)
        base.check_sizes(dataset, _SPLIT_SIZES, origin)
        return dataset

    # Stored with the channel axis: [n, 28, 28, 1], exactly the arrays load returns.
    return storage.cached_in_npz(npz, FIELDS, "Fashion-MNIST cache", _from_cache(npz), build,
                                 lambda d: {f: getattr(d, f) for f in FIELDS})
