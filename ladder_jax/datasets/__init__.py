"""Image data sets for the Ladder network: a registry of loaders returning `Dataset`s.

    ds = datasets.load("fashion_mnist")           # its default source, cached on first use
    ds = datasets.load("mnist", source="idx", data_dir="/data/mnist")

Every loader returns uint8 images [N, H, W, C] and int32 labels [N]; `base.preprocess` turns a
batch into the model's float32 input (cifar10 comes with its fitted GCN + ZCA in
`Dataset.preprocessing`, the paper's Conv-Large setting; the others divide by 255).

Your own data, by description (the same Dataset; pixels / 255; checked before training, each
problem one DataError line naming the file or key and the fix):

    ds = datasets.load("tfds:kmnist")              # any TFDS image-classification builder
    ds = datasets.load("npz:/data/mine.npz")       # keys x_train, y_train, x_test, y_test
    ds = datasets.load("folder:/data/pets")        # /data/pets/{train,test}/<class>/*.png|jpg
    ds = datasets.from_arrays(x_train, y_train, x_test, y_test, class_names=..., name="mine")

Such a dataset carries its content hash (Dataset.sha256); ``bind(cfg, ds)`` puts its name and
hash into a config (data_sha256), which is part of the run's identity: a workdir never resumes
on other data. The built-in datasets keep data_sha256 None (their loaders pin them).

Adding a data set: one module in this package with SOURCES (its default first), IMAGE_SHAPE
(H, W, C), load(source, data_dir, cache_dir) -> Dataset and, if its loads set
Dataset.preprocessing, HAS_PREPROCESSING = True; plus one line in _MODULES. Adding a form of
user data: a function arg, *, data_dir, splits -> Dataset (using arrays.checked) and one line
in _FORMS.
"""

from __future__ import annotations

import importlib
import os
import re
from types import ModuleType
from typing import Any

from ladder_jax.datasets.arrays import from_arrays
from ladder_jax.datasets.base import (
    SPLITS,
    DataError,
    Dataset,
    Preprocessing,
    content_sha256,
    default_cache_dir,
    preprocess,
)

_MODULES = {  # name -> module, imported on first use
    "mnist": "ladder_jax.datasets.mnist",
    "fashion_mnist": "ladder_jax.datasets.fashion_mnist",
    "cifar10": "ladder_jax.datasets.cifar10",
}
NAMES = tuple(_MODULES)  # the built-in datasets
#: How reports and figures name the built-in datasets (others go by their own name).
TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
_FORMS = {  # prefix -> (module, function) of a form of user data, imported on first use
    "tfds": ("ladder_jax.datasets.tfds_by_name", "load"),
    "npz": ("ladder_jax.datasets.arrays", "load_npz"),
    "folder": ("ladder_jax.datasets.folder", "load"),
    "arrays": ("ladder_jax.datasets.arrays", "in_memory"),  # from_arrays: given, not loaded
}
#: How the user forms are written (the in-memory arrays:NAME comes from from_arrays).
FORMS = ("tfds:NAME", "npz:PATH", "folder:DIR")
VALID = ", ".join((*NAMES, *FORMS))


def _module(name: str) -> ModuleType:
    """Returns the loader module of built-in data set `name`; DataError if unknown."""
    if name not in _MODULES:
        raise DataError(f"unknown data set {name!r}; valid data sets are: {VALID}")
    return importlib.import_module(_MODULES[name])


def user_form(name: Any) -> tuple[str, str] | None:
    """(prefix, argument) of a user dataset's name ('npz:/x.npz' -> ('npz', '/x.npz')); None
    for a built-in name. DataError (one line) for a name that is neither."""
    if isinstance(name, str) and name in _MODULES:
        return None
    prefix, colon, arg = name.partition(":") if isinstance(name, str) else ("", "", "")
    if colon and prefix in _FORMS and arg.strip():
        return prefix, arg
    raise DataError(f"unknown data set {name!r}; valid data sets are: {VALID}")


def is_user(name: Any) -> bool:
    """Whether ``name`` names a user dataset (tfds:, npz:, folder:, arrays:); False also for
    a name that is not valid at all."""
    try:
        return user_form(name) is not None
    except DataError:
        return False


def check_options(name: str, source: str | None = None, data_dir: str | None = None,
                  tfds_splits: tuple[str, ...] | None = None) -> None:
    """DataError (one line) unless data set ``name`` exists and takes these options:
    ``source`` one of its sources (built-ins only), ``data_dir`` (built-ins and tfds:NAME,
    whose TFDS data_dir it is), ``tfds_splits`` two split names (tfds:NAME only)."""
    form = user_form(name)
    if form is None:
        if source is not None and source not in sources(name):
            raise DataError(f"data_source={source!r} is not a source of {name}; choose one of "
                            f"{', '.join(sources(name))}")
    elif source is not None:
        raise DataError(f"data_source applies to the built-in datasets ({', '.join(NAMES)}); "
                        f"{name} has no sources: drop data_source={source!r}")
    elif data_dir is not None and form[0] != "tfds":
        raise DataError(f"data_dir applies to the built-in datasets and tfds:NAME (its TFDS "
                        f"data_dir); {name} names its own path: drop data_dir={data_dir!r}")
    if tfds_splits is not None:
        if form is None or form[0] != "tfds":
            raise DataError(f"tfds_splits applies to tfds:NAME datasets only, not {name}: "
                            "drop it")
        if len(tfds_splits) != 2 or not all(isinstance(s, str) and s.strip() and
                                            not re.search(r"\s", s) for s in tfds_splits):
            raise DataError(f"tfds_splits={','.join(map(str, tfds_splits))} must name two "
                            "splits, training then test (e.g. train,test or train[:90%],test)")


def sources(name: str) -> tuple[str, ...]:
    """Returns the sources data set `name` can load from, its default first (none for a
    user dataset)."""
    return () if user_form(name) is not None else tuple(_module(name).SOURCES)


def image_shape(name: str, data_dir: str | None = None,
                tfds_splits: tuple[str, ...] | None = None) -> tuple[int, int, int]:
    """(H, W, C) of the images of dataset ``name`` (a built-in's without loading it; a user
    dataset is loaded, and kept for the next ``load`` of it)."""
    if user_form(name) is not None:
        return load(name, data_dir=data_dir, tfds_splits=tfds_splits).image_shape
    return tuple(_module(name).IMAGE_SHAPE)


def has_preprocessing(name: str) -> bool:
    """Returns whether data set `name` loads with a fitted Dataset.preprocessing (cifar10)."""
    if user_form(name) is not None:
        return False
    return bool(getattr(_module(name), "HAS_PREPROCESSING", False))


#: The last user dataset loaded: (key, fingerprint, Dataset). A runner loads the data when it
#: builds its config (for the hash) and again when it trains; the second load takes it from
#: here when its files are unchanged (same sizes and modification times).
_last_loaded: tuple[Any, Any, Dataset] | None = None


def _fingerprint(form: str, arg: str) -> Any:
    """What changes when the files of a file-based form change: (path, size, mtime) of each
    file (and, for a folder, of each directory: an entry added or removed)."""
    if form == "tfds":
        return None  # a prepared TFDS dataset does not change under its version
    root = os.path.expanduser(arg)
    paths = [root]
    if form == "folder":
        paths += [os.path.join(d, f) for d, dirs, files in os.walk(root) for f in dirs + files]
    stats = []
    for path in sorted(paths):
        try:
            st = os.stat(path)
            stats.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((path, None, None))
    return tuple(stats)


def forget_loaded() -> None:
    """Drops the user dataset kept from the last load (memory; or data that changed under
    the same name without changing its files, as tfds.testing.mock_data does)."""
    global _last_loaded
    _last_loaded = None


def load(
    name: str, source: str | None = None, data_dir: str | None = None,
    cache_dir: str | None = None, *, tfds_splits: tuple[str, ...] | None = None,
) -> Dataset:
    """Returns data set `name` from `source` (None: its default, sources(name)[0]).

    name: a built-in (NAMES) or a user dataset (tfds:NAME, npz:PATH, folder:DIR);
    data_dir: where a file-based source reads from (for tfds:NAME its TFDS data_dir);
    cache_dir: where downloads and caches live (default default_cache_dir()); tfds_splits:
    tfds:NAME's training and test splits (default train, test). Raises DataError (one line)
    for an unknown name or source and for any loading failure, saying how to fix it.
    """
    global _last_loaded
    check_options(name, source, data_dir, tfds_splits)
    form = user_form(name)
    if form is not None:
        splits = tuple(tfds_splits) if tfds_splits is not None else SPLITS
        key, fingerprint = (name, data_dir, splits), _fingerprint(*form)
        if _last_loaded is not None and _last_loaded[:2] == (key, fingerprint):
            return _last_loaded[2]
        module, function = _FORMS[form[0]]
        dataset = getattr(importlib.import_module(module), function)(
            form[1], data_dir=data_dir, splits=splits)
        _last_loaded = (key, fingerprint, dataset)
        return dataset
    module = _module(name)
    valid = tuple(module.SOURCES)
    source = valid[0] if source is None else source
    return module.load(source, data_dir=data_dir, cache_dir=cache_dir)


def bind(cfg: Any, dataset: Dataset) -> Any:
    """Returns the TrainConfig ``cfg`` as a run on ``dataset`` records it.

    A user dataset (Dataset.sha256 set): its name and content hash go into the config
    (``dataset``, ``data_sha256``; a config naming a built-in takes the user dataset's name,
    which is how a notebook passes from_arrays data). A built-in's config is returned as it
    is. DataError (one line) when the config names another user dataset, or records another
    content hash (the data changed after the config was made).
    """
    if dataset.sha256 is None:
        if is_user(cfg.dataset):
            raise DataError(f"the config names dataset {cfg.dataset} but the data given is "
                            f"{dataset.name}; pass the data the config names")
        if cfg.data_sha256 is not None and cfg.data_sha256 != content_sha256(dataset):
            raise DataError(f"{dataset.name}: the data given is not the data the config "
                            f"records (data_sha256 {cfg.data_sha256[:16]}...)")
        return cfg
    if is_user(cfg.dataset) and cfg.dataset != dataset.name:
        raise DataError(f"the config names dataset {cfg.dataset} but the data given is "
                        f"{dataset.name}; pass the data the config names (or "
                        f"cfg.replace(dataset={dataset.name!r}))")
    if cfg.data_sha256 is not None and cfg.data_sha256 != dataset.sha256:
        raise DataError(f"{dataset.name} changed: its content hash is {dataset.sha256[:16]}... "
                        f"but the config records data_sha256 {cfg.data_sha256[:16]}...; make "
                        "the config again from this data (run the command again, or bind)")
    changes: dict[str, Any] = {"dataset": dataset.name, "data_sha256": dataset.sha256}
    if not is_user(cfg.dataset):  # a built-in's source options do not apply to this data
        changes.update(data_source=None, data_dir=None, tfds_splits=None)
    return cfg.replace(**changes)


__all__ = [
    "FORMS",
    "NAMES",
    "DataError",
    "Dataset",
    "Preprocessing",
    "bind",
    "check_options",
    "content_sha256",
    "default_cache_dir",
    "forget_loaded",
    "from_arrays",
    "has_preprocessing",
    "image_shape",
    "is_user",
    "load",
    "preprocess",
    "sources",
    "user_form",
]
