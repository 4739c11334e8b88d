"""Your own arrays as a Dataset: ``from_arrays`` (a notebook), ``npz:PATH`` (the runners), and
the checks every user dataset passes (``checked``; the tfds: and folder: forms use them too).

What the images may be: uint8 0..255 as they are; integers of another dtype that lie in
0..255, or floats in [0, 1] (x * 255 rounded), are converted to uint8; anything else is
refused in one line (floats in [0, 255]: divide by 255 or cast to uint8 first; the loader
never guesses the scale). Shapes [N, H, W] (grey) or [N, H, W, C]; labels integers [N]
(or [N, 1]) in 0..K-1, K = len(class_names) or, without names, the largest label + 1.
Every class needs at least one training example.

A user dataset carries its content hash (``Dataset.sha256``, see ``base.content_sha256``); a
run records it as its config's data_sha256, so a workdir never resumes on other data.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np

from ladder_jax.datasets.base import FIELDS, SPLITS, DataError, Dataset, content_sha256

#: The keys of an npz file, by Dataset field.
NPZ_KEYS = {"train_images": "x_train", "train_labels": "y_train",
            "test_images": "x_test", "test_labels": "y_test"}
#: How from_arrays names its arguments in errors.
ARGUMENT_KEYS = {f: f for f in FIELDS}
PREFIX = "arrays:"  # the name of a dataset made in memory: arrays:<name>


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def as_uint8_images(x: object, where: str) -> np.ndarray:
    """Returns images ``x`` as uint8 [N, H, W, C] (see the module docstring for what is
    converted); DataError (one line, starting with ``where``) for anything else."""
    x = np.asarray(x)
    kind = x.dtype.kind
    if kind not in "uif":
        raise DataError(f"{where} is {x.dtype}, not numbers; give uint8 images 0..255 "
                        "(or floats in [0, 1])")
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise DataError(f"{where} has shape {x.shape}; images must be [N, H, W] or "
                        "[N, H, W, C] (reshape it, e.g. x.reshape(-1, 28, 28, 1))")
    if x.shape[0] == 0:
        raise DataError(f"{where} holds no images; every split needs at least one")
    if 0 in x.shape[1:]:
        raise DataError(f"{where} has shape {x.shape}; H, W and C must be at least 1")
    if x.dtype == np.uint8:
        return x
    low, high = x.min(), x.max()
    if kind in "ui":
        if low < 0 or high > 255:
            raise DataError(f"{where} holds integers in {low}..{high}, not 0..255; rescale "
                            "them to 0..255 (or to floats in [0, 1])")
        return x.astype(np.uint8)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise DataError(f"{where} holds NaN or infinite values; replace them")
    if low < 0 or high > 1:
        raise DataError(f"{where} holds floats in [{low:g}, {high:g}], not [0, 1]; divide "
                        "0..255 values by 255 (or cast them to uint8)")
    return np.rint(x.astype(np.float64) * 255).astype(np.uint8)


def as_labels(y: object, where: str, num_images: int, images_where: str) -> np.ndarray:
    """Returns labels ``y`` as int32 [N]; DataError (one line) unless they are integers, one
    per image ([N] or [N, 1])."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where} has shape {y.shape}; labels must be [N], one integer class "
                        "per image")
    if y.dtype.kind not in "ui":
        raise DataError(f"{where} is {y.dtype}; labels must be integers 0..K-1 "
                        "(y.astype(int) if they are whole numbers)")
    if y.shape[0] != num_images:
        raise DataError(f"{where} has {y.shape[0]} labels but {images_where} has {num_images} "
                        "images; give one label per image")
    if y.min() < 0:
        raise DataError(f"{where} holds label {y.min()}; labels must be 0..K-1")
    if y.max() > np.iinfo(np.int32).max:
        raise DataError(f"{where} holds label {y.max()}; labels must be 0..K-1")
    return y.astype(np.int32)


def _class_names(names: Sequence[str] | None, num_classes: int, origin: str
                 ) -> tuple[str, ...]:
    if names is None:
        return tuple(str(c) for c in range(num_classes))
    names = tuple(names) if not isinstance(names, str) else (names,)
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise DataError(f"{origin}: class_names must be distinct non-empty strings, one per "
                        f"class; got {list(names)[:5]}{' ...' if len(names) > 5 else ''}")
    return names


def checked(name: str, arrays: Mapping[str, object], origin: str,
            keys: Mapping[str, str], class_names: Sequence[str] | None = None) -> Dataset:
    """Returns the checked user Dataset ``name`` (with its content hash) from the four FIELDS
    arrays, converted as the module docstring says.

    origin: how errors name the whole (a file, 'from_arrays'); keys: how they name each
    array (npz keys, argument names). Raises DataError, one line naming the array and the
    fix, for images that are not one shape of 0..255 or [0, 1] values, labels that are not
    integers in 0..K-1 one per image, class names that are not one distinct string per
    class, fewer than 2 classes, or a class without training examples.
    """
    where = {f: f"{origin}: {keys[f]}" for f in FIELDS}
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        images = as_uint8_images(arrays[split + "_images"], where[split + "_images"])
        out[split + "_images"] = images
        out[split + "_labels"] = as_labels(arrays[split + "_labels"], where[split + "_labels"],
                                           images.shape[0], keys[split + "_images"])
    train_shape, test_shape = out["train_images"].shape[1:], out["test_images"].shape[1:]
    if train_shape != test_shape:
        raise DataError(f"{where['test_images']} images are {_shape(test_shape)} but "
                        f"{keys['train_images']} images are {_shape(train_shape)}; every image "
                        "must have one shape (resize them)")
    largest = max(int(out["train_labels"].max()), int(out["test_labels"].max()))
    if class_names is not None:
        names = _class_names(class_names, 0, origin)
        for split in SPLITS:
            top = int(out[split + "_labels"].max())
            if top >= len(names):
                raise DataError(f"{where[split + '_labels']} holds label {top} but class_names "
                                f"names {len(names)} classes (0..{len(names) - 1}); give one "
                                "name per class")
    else:
        names = _class_names(None, largest + 1, origin)
    if len(names) < 2:
        raise DataError(f"{where['train_labels']} holds only class 0; a classifier needs at "
                        "least 2 classes")
    counts = np.bincount(out["train_labels"], minlength=len(names))
    if counts.min() == 0:
        empty = int(np.argmin(counts))
        raise DataError(f"class {empty} ({names[empty]!r}) has no examples in "
                        f"{where['train_labels']}; relabel the classes 0..K-1 without gaps (or "
                        "drop its name from class_names)")
    dataset = Dataset(name=name, num_classes=len(names), class_names=names, **out)
    return dataclasses.replace(dataset, sha256=content_sha256(dataset))


def from_arrays(train_images: object, train_labels: object, test_images: object,
                test_labels: object, *, class_names: Sequence[str] | None = None,
                name: str = "arrays") -> Dataset:
    """Returns a Dataset of your own arrays, checked as the module docstring says.

    train_images, test_images: [N, H, W] or [N, H, W, C], uint8 0..255 (or integers in
    0..255, or floats in [0, 1]: converted to uint8); train_labels, test_labels: integers
    [N] in 0..K-1; class_names: K names (default '0'..'K-1', K = the largest label + 1);
    name: what the run's config.json records as its dataset: 'arrays:<name>'.

    Pass it as ``train.train_and_evaluate(cfg, workdir, dataset=ds)``: the run records the
    name and the content hash (``Dataset.sha256``), so the workdir resumes only on the same
    arrays. Raises DataError (one line naming the argument and the fix).
    """
    if not isinstance(name, str) or not name.removeprefix(PREFIX).strip():
        raise DataError(f"from_arrays: name={name!r} must be a non-empty string")
    full = name if name.startswith(PREFIX) else PREFIX + name
    arrays = dict(zip(FIELDS, (train_images, train_labels, test_images, test_labels)))
    return checked(full, arrays, "from_arrays", ARGUMENT_KEYS, class_names)


def in_memory(arg: str, **_: object) -> Dataset:
    """``datasets.load('arrays:<name>')``: always a DataError saying how such a dataset is
    given (it exists only in the memory of the process that made it)."""
    raise DataError(f"dataset {PREFIX}{arg} was made in memory by datasets.from_arrays and "
                    "cannot be loaded by name: pass it as train_and_evaluate(cfg, workdir, "
                    "dataset=ds), or save it with np.savez(PATH, x_train=..., y_train=..., "
                    "x_test=..., y_test=...) and use --dataset=npz:PATH")


def load_npz(arg: str, **_: object) -> Dataset:
    """``npz:PATH``: the Dataset of an .npz file with the arrays x_train, y_train, x_test,
    y_test (and optionally class_names, a 1-D array of strings), checked as ``checked``.
    No pickled objects are read. Raises DataError (one line naming the file or key)."""
    path = os.path.expanduser(arg)
    origin = f"npz:{arg}"
    if not os.path.isfile(path):
        raise DataError(f"{origin}: {path} is not a file; give --dataset=npz:PATH of an .npz "
                        "with x_train, y_train, x_test, y_test (np.savez)")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{origin}: {path} is not an .npz file (a zip of .npy arrays); save "
                        "it with np.savez(PATH, x_train=..., y_train=..., x_test=..., y_test=...)")
    key = None
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS.values() if k not in npz.files]
            if missing:
                raise DataError(f"{origin}: the file has no {', '.join(missing)} (it holds "
                                f"{', '.join(npz.files) or 'nothing'}); save it with "
                                "np.savez(PATH, x_train=..., y_train=..., x_test=..., y_test=...)")
            arrays = {}
            for field, key in NPZ_KEYS.items():
                arrays[field] = npz[key]
            key = "class_names"
            names = npz[key] if key in npz.files else None
    except DataError:  # a ValueError too: keep it as it is
        raise
    except ValueError as e:  # an object array (a pickle): refused by allow_pickle=False
        raise DataError(f"{origin}: {key} cannot be read ({str(e).splitlines()[0][:120]}); "
                        "save plain numeric arrays (no Python objects) with np.savez") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{origin}: {path} cannot be read as an .npz file ({type(e).__name__}: "
                        f"{str(e)[:200]}); save it again with np.savez") from None
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{origin}: class_names is {names.dtype} {names.shape}; give a "
                            "1-D array of strings, one per class")
        names = [str(n) for n in names.astype(str)]
    return checked(origin, arrays, origin, NPZ_KEYS, names)
