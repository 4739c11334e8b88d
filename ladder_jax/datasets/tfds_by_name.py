"""``tfds:NAME``: any TFDS image-classification builder as a Dataset (tfds:kmnist,
tfds:svhn_cropped, tfds:cifar100, ...; ``pip install 'ladder_jax[tfds]'``).

The builder's info says what the data is: its supervised keys (image, label), the image
feature's fixed shape (H, W, C) and uint8 dtype, the ClassLabel's class count and names. The
splits are read by name (default train, test; ``--tfds_splits=train[:90%],test`` takes TFDS's
split syntax) through the reader the built-in 'tfds' sources use (base.tfds_arrays), from
``--data_dir`` (a TFDS data_dir; default TFDS's own). The arrays then pass the checks of
``arrays.checked``. Preprocessing: pixels / 255, as MNIST.
"""

from __future__ import annotations

from ladder_jax.datasets.arrays import checked
from ladder_jax.datasets.base import (
    FIELDS,
    SPLITS,
    DataError,
    Dataset,
    first_line,
    import_tfds,
    tfds_arrays,
)


def _info(tfds, name: str, data_dir: str | None):
    """(image key, label key, (H, W, C), class names) from the builder's info."""
    spec = f"tfds:{name}"
    try:
        info = tfds.builder(name, data_dir=data_dir).info
    except Exception as e:  # noqa: BLE001 -- TFDS raises many types (unknown name, config).
        raise DataError(f"{spec}: TFDS cannot make the builder {name!r} ({first_line(e)}); "
                        "tfds.list_builders() names the datasets it has") from None
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2
            and all(isinstance(k, str) for k in keys)):
        raise DataError(f"{spec} is not an image-classification dataset (its supervised keys "
                        f"are {keys}); tfds:NAME needs (image, label) supervised keys")
    image_key, label_key = keys
    image, label = info.features[image_key], info.features[label_key]
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", None)
    names = getattr(label, "names", None)
    if not isinstance(image, tfds.features.Image) or not names:
        raise DataError(f"{spec} is not an image-classification dataset ({image_key}: "
                        f"{type(image).__name__}, {label_key}: {type(label).__name__}); "
                        "tfds:NAME needs an Image feature and a ClassLabel")
    if shape is None or len(shape) != 3 or None in shape:
        raise DataError(f"{spec} images have no fixed size ({shape}); only datasets of one "
                        "image size work: resize them and use --dataset=npz:PATH")
    if getattr(dtype, "name", str(dtype)) != "uint8":
        raise DataError(f"{spec} images are {dtype}; only uint8 images work")
    return tuple(int(d) for d in shape), tuple(str(n) for n in names)


def load(arg: str, *, data_dir: str | None = None, splits: tuple[str, str] = SPLITS,
         **_: object) -> Dataset:
    """``tfds:NAME``: the checked Dataset of TFDS builder NAME's ``splits`` (training, test),
    read from TFDS ``data_dir``. Raises DataError (one line) when TFDS is missing, the builder
    is not an image-classification one, a split cannot be read or the data fails a check."""
    tfds = import_tfds(f"--dataset=tfds:{arg}")
    shape, names = _info(tfds, arg, data_dir)
    hint = (f"--tfds_splits naming two of its splits (now {','.join(splits)}) and --data_dir "
            "of a TFDS data_dir that holds it prepared (where TFDS cannot download it)")
    arrays = tfds_arrays(arg, data_dir, hint, splits)
    origin = f"tfds:{arg}"
    for split, what in zip(SPLITS, splits):
        got = tuple(arrays[split + "_images"].shape[1:])
        if got != shape:
            raise DataError(f"{origin}: split {what} holds {got} images, not the {shape} its "
                            "info declares")
    keys = {f: f"split {splits[SPLITS.index(f.split('_')[0])]}" for f in FIELDS}
    return checked(origin, arrays, origin, keys, names)
