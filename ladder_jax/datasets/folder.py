"""``folder:DIR``: a Dataset from image files, DIR/train/<class>/*.png|jpg and
DIR/test/<class>/*.png|jpg (Pillow: ``pip install 'ladder_jax[images]'``).

The classes are the sub-folders of DIR/train in sorted order (label 0 = the first); DIR/test
may lack a class but may not add one. Every image must have one size. Grey images (modes 1,
L, LA) give [N, H, W, 1]; if any image has colour, every image is read as RGB [N, H, W, 3]
(alpha is dropped). 16-bit and float images are refused. Files are read in sorted order
(class by class), so the rows, and the run, are the same on every machine; hidden files
(.DS_Store, ...) are skipped, anything else that is not an image is an error. The arrays
then pass the checks of ``arrays.checked`` (each class needs a training example).
"""

from __future__ import annotations

import os

import numpy as np

from ladder_jax.datasets.arrays import checked
from ladder_jax.datasets.base import FIELDS, SPLITS, DataError, Dataset, first_line

EXTENSIONS = (".png", ".jpg", ".jpeg")
_GREY = ("1", "L", "LA")
_COLOUR = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
_LAYOUT = "the layout is DIR/train/<class>/*.png|jpg and DIR/test/<class>/*.png|jpg"


def _visible(directory: str) -> list[str]:
    """Sorted names in ``directory`` less hidden ones; DataError if it cannot be listed."""
    try:
        return sorted(n for n in os.listdir(directory) if not n.startswith("."))
    except OSError as e:
        raise DataError(f"{directory} cannot be listed ({e.strerror}); {_LAYOUT}") from None


def _split_files(root: str, split: str, classes: list[str] | None
                 ) -> tuple[list[str], list[tuple[str, int]]]:
    """(the split's classes, [(file, label)]) of root/split; ``classes`` None: the split
    defines them (train), else its folders must be among them (test)."""
    directory = os.path.join(root, split)
    if not os.path.isdir(directory):
        raise DataError(f"folder:{root}: {directory} is not a directory; {_LAYOUT}")
    names = _visible(directory)
    for name in names:
        if not os.path.isdir(os.path.join(directory, name)):
            raise DataError(f"{os.path.join(directory, name)} is not in a class folder; move "
                            f"it into {directory}/<class>/")
    if classes is None:
        classes = names
        if not classes:
            raise DataError(f"{directory} has no class folders; put each class's images in "
                            f"{directory}/<class>/")
    files = []
    for name in names:
        if name not in classes:
            raise DataError(f"{os.path.join(directory, name)} is not a class of "
                            f"{os.path.join(root, 'train')} (its classes: "
                            f"{', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}); "
                            "rename or remove it")
        folder = os.path.join(directory, name)
        entries = _visible(folder)
        for entry in entries:
            path = os.path.join(folder, entry)
            if os.path.isdir(path) or not entry.lower().endswith(EXTENSIONS):
                raise DataError(f"{path} is not a {'/'.join(EXTENSIONS)} image; a class folder "
                                "holds images only: remove it")
            files.append((path, classes.index(name)))
        if not entries and split == "train":
            raise DataError(f"{folder} holds no {'/'.join(EXTENSIONS)} images; add some or "
                            "remove the folder")
    return classes, files


def _open(path: str, image_module, read):
    """``read(image)`` of the image file ``path``; DataError if Pillow cannot read it."""
    try:
        with image_module.open(path) as image:
            return read(image)
    except (OSError, ValueError, image_module.DecompressionBombError) as e:
        raise DataError(f"{path} cannot be read as an image ({first_line(e, 120)}); replace "
                        "or remove it") from None


def _read(files: list[tuple[str, int]], size: tuple[int, int], mode: str, image_module
          ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, C], labels [N]) of ``files``, each converted to ``mode``."""
    images = np.empty((len(files), size[1], size[0], 1 if mode == "L" else 3), np.uint8)
    for i, (path, _) in enumerate(files):
        pixels = _open(path, image_module, lambda image: np.asarray(image.convert(mode)))
        images[i] = pixels.reshape(images.shape[1:])
    return images, np.asarray([label for _, label in files], np.int64)


def load(arg: str, **_: object) -> Dataset:
    """``folder:DIR``: the checked Dataset of the image files under DIR (module docstring).
    Raises DataError (one line naming the file or folder and the fix)."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"folder:{arg} needs Pillow: pip install 'ladder_jax[images]'") from None
    root = os.path.expanduser(arg)
    if not os.path.isdir(root):
        raise DataError(f"folder:{arg}: {root} is not a directory; {_LAYOUT}")
    classes, train = _split_files(root, "train", None)
    _, test = _split_files(root, "test", classes)
    if not test:
        raise DataError(f"{os.path.join(root, 'test')} holds no images; {_LAYOUT}")
    size, colour, first = None, False, None
    for path, _ in train + test:
        this_size, mode = _open(path, Image, lambda image: (image.size, image.mode))
        if mode not in _GREY + _COLOUR:
            raise DataError(f"{path} is a {mode} image (16-bit or float); save the images as "
                            "8-bit grey or RGB")
        if size is None:
            size, first = this_size, path
        elif this_size != size:
            raise DataError(f"{path} is {this_size[0]}x{this_size[1]} but {first} is "
                            f"{size[0]}x{size[1]}; every image must have one size (resize them)")
        colour = colour or mode in _COLOUR
    mode = "RGB" if colour else "L"
    arrays = {}
    for split, files in zip(SPLITS, (train, test)):
        arrays[split + "_images"], arrays[split + "_labels"] = _read(files, size, mode, Image)
    keys = {f: f.split("_")[0] + "/" for f in FIELDS}  # 'train/', 'test/'
    return checked(f"folder:{arg}", arrays, f"folder:{arg}", keys, classes)
