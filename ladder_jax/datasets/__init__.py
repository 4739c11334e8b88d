"""Image data sets for the Ladder network: a registry of loaders returning `Dataset`s.

    ds = datasets.load("fashion_mnist")           # its default source, cached on first use
    ds = datasets.load("mnist", source="idx", data_dir="/data/mnist")

Every loader returns uint8 images [N, H, W, C] and int32 labels [N]; `base.preprocess` turns a
batch into the model's float32 input (cifar10 comes with its fitted GCN + ZCA in
`Dataset.preprocessing`, the paper's Conv-Large setting; the others divide by 255).

Adding a data set: one module in this package with SOURCES (its default first), IMAGE_SHAPE
(H, W, C), load(source, data_dir, cache_dir) -> Dataset and, if its loads set
Dataset.preprocessing, HAS_PREPROCESSING = True; plus one line in _MODULES.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ladder_jax.datasets.base import (
    DataError,
    Dataset,
    Preprocessing,
    default_cache_dir,
    preprocess,
)

_MODULES = {  # name -> module, imported on first use
    "mnist": "ladder_jax.datasets.mnist",
    "fashion_mnist": "ladder_jax.datasets.fashion_mnist",
    "cifar10": "ladder_jax.datasets.cifar10",
}
NAMES = tuple(_MODULES)


def _module(name: str) -> ModuleType:
    """Returns the loader module of data set `name`; DataError listing NAMES if unknown."""
    if name not in _MODULES:
        raise DataError(f"unknown data set {name!r}; valid data sets are: {', '.join(NAMES)}")
    return importlib.import_module(_MODULES[name])


def sources(name: str) -> tuple[str, ...]:
    """Returns the sources data set `name` can load from, its default first."""
    return tuple(_module(name).SOURCES)


def image_shape(name: str) -> tuple[int, int, int]:
    """(H, W, C) of the images of dataset ``name`` (without loading it)."""
    return tuple(_module(name).IMAGE_SHAPE)


def has_preprocessing(name: str) -> bool:
    """Returns whether data set `name` loads with a fitted Dataset.preprocessing (cifar10)."""
    return bool(getattr(_module(name), "HAS_PREPROCESSING", False))


def load(
    name: str, source: str | None = None, data_dir: str | None = None, cache_dir: str | None = None
) -> Dataset:
    """Returns data set `name` from `source` (None: its default, sources(name)[0]).

    data_dir: where a file-based source reads from; cache_dir: where downloads and caches live
    (default default_cache_dir()). Raises DataError (one line) for an unknown name or source
    and for any loading failure, saying how to fix it.
    """
    module = _module(name)
    valid = tuple(module.SOURCES)
    source = valid[0] if source is None else source
    if source not in valid:
        raise DataError(
            f"unknown data source {source!r} for {name}; valid sources are: {', '.join(valid)}"
        )
    return module.load(source, data_dir=data_dir, cache_dir=cache_dir)


__all__ = [
    "NAMES",
    "DataError",
    "Dataset",
    "Preprocessing",
    "default_cache_dir",
    "has_preprocessing",
    "image_shape",
    "load",
    "preprocess",
    "sources",
]
