"""Split manifests: the training rows a run labels and holds out, as a plain JSON file that
any tool can write and read, so that two methods (or two papers) train on the same split.

Every run writes its own as ``splits.json`` in its run directory; ``--splits=FILE`` (a
run's, or one made by hand) trains on exactly that split. The format:

    {"format": "ladder_jax.splits/1",
     "dataset": "mnist", "dataset_sha256": "<datasets.content_sha256 of the data>",
     "num_train": 60000,                 # rows of the training split the indices point into
     "seed": 0,                          # the seed that drew the split (information only)
     "labeled": [12, 97, ...],           # row indices into the training split
     "validation": [3, 41, ...],         # held out; may be empty
     "labeled_sha256": "...", "validation_sha256": "..."}

The two list hashes are sha256 over the decimal indices joined by commas, in the listed
order (``list_sha256``); a reader checks them when present. Every training row outside
``validation`` is unlabeled data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from ladder_jax.datasets.base import Dataset, content_sha256
from ladder_jax.errors import DataError

FORMAT = "ladder_jax.splits/1"
FILE = "splits.json"


class Split(NamedTuple):
    """The rows of a manifest: labeled and validation indices (int64, as listed) and the
    sha256 of the file they were read from (None for a split drawn by a seed)."""

    labeled: np.ndarray
    validation: np.ndarray
    file_sha256: str | None = None


def list_sha256(indices: Sequence[int]) -> str:
    """sha256 of the decimal indices joined by commas (the manifest's list hashes)."""
    return hashlib.sha256(",".join(str(int(i)) for i in indices).encode()).hexdigest()


def manifest(dataset: Dataset, labeled: Sequence[int], validation: Sequence[int],
             seed: int | None) -> dict[str, Any]:
    """The manifest of a split of ``dataset`` (see the module docstring)."""
    labeled, validation = [int(i) for i in labeled], [int(i) for i in validation]
    return {"format": FORMAT, "dataset": dataset.name,
            "dataset_sha256": dataset.sha256 or content_sha256(dataset),
            "num_train": len(dataset.train_labels), "seed": seed,
            "labeled": labeled, "validation": validation,
            "labeled_sha256": list_sha256(labeled),
            "validation_sha256": list_sha256(validation)}


def file_sha256(path: str) -> str:
    """sha256 of a manifest file's bytes (what a run records as its splits_sha256)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        raise DataError(f"--splits={path}: cannot be read ({e.strerror}); give the path of "
                        "a splits.json") from None


def read(path: str) -> dict[str, Any]:
    """A manifest file's content, its keys and types checked (DataError, one line)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise DataError(f"--splits={path}: cannot be read ({e.strerror}); give the path of a "
                        "splits.json") from None
    except ValueError as e:
        raise DataError(f"--splits={path} is not JSON ({e}); write it as README's 'Split "
                        "manifests' shows") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"--splits={path} is not a split manifest (its 'format' must be "
                        f"{FORMAT!r})")
    for key in ("dataset", "labeled", "validation"):
        if key not in data:
            raise DataError(f"--splits={path} has no {key!r}; a manifest lists 'dataset', "
                            "'labeled' and 'validation'")
    for key in ("labeled", "validation"):
        values = data[key]
        if not isinstance(values, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in values):
            raise DataError(f"--splits={path}: {key!r} must be a list of row indices (whole "
                            "numbers)")
        recorded = data.get(f"{key}_sha256")
        if recorded is not None and recorded != list_sha256(values):
            raise DataError(f"--splits={path}: {key!r} does not match its {key}_sha256 (the "
                            "file was edited or damaged); fix the list or drop the hash")
    if not data["labeled"]:
        raise DataError(f"--splits={path}: 'labeled' is empty; list at least one row")
    return data


def check(data: dict[str, Any], dataset: Dataset, path: str) -> Split:
    """The manifest's rows, checked against ``dataset``: the same dataset (name and, when
    recorded, content hash), indices in range, none repeated, labeled and validation
    disjoint (DataError, one line each). An unbalanced labeled set is taken as given, with
    one warning line."""
    if data["dataset"] != dataset.name:
        raise DataError(f"--splits={path} is a split of {data['dataset']!r}, not of "
                        f"{dataset.name!r}; use a manifest of this dataset")
    recorded = data.get("dataset_sha256")
    if recorded is not None and recorded != (dataset.sha256 or content_sha256(dataset)):
        raise DataError(f"--splits={path} was made for other data named {dataset.name!r} "
                        "(its dataset_sha256 differs); use a manifest of this data")
    n = len(dataset.train_labels)
    rows = {}
    for key in ("labeled", "validation"):
        values = np.asarray(data[key], np.int64)
        bad = values[(values < 0) | (values >= n)]
        if bad.size:
            raise DataError(f"--splits={path}: {key} row {int(bad[0])} is out of range; "
                            f"{dataset.name} has training rows 0..{n - 1}")
        unique, counts = np.unique(values, return_counts=True)
        if (counts > 1).any():
            raise DataError(f"--splits={path}: {key} lists row {int(unique[counts > 1][0])} "
                            "more than once; list each row once")
        rows[key] = values
    both = np.intersect1d(rows["labeled"], rows["validation"])
    if both.size:
        raise DataError(f"--splits={path}: row {int(both[0])} is both labeled and held out "
                        "for validation; a row may be in one list only")
    per_class = np.bincount(np.asarray(dataset.train_labels)[rows["labeled"]],
                            minlength=dataset.num_classes)
    if len(set(per_class.tolist())) > 1:
        logging.warning("--splits=%s: the labeled set is not class-balanced (%s per class); "
                        "it is used as given", path, ", ".join(map(str, per_class.tolist())))
    return Split(rows["labeled"], rows["validation"], file_sha256(path))


def config_changes(path: str) -> dict[str, Any]:
    """The TrainConfig changes that train on the manifest at ``path``: splits and the file's
    sha256, num_labels and num_validation its list lengths. Only the manifest's form is
    checked here; its rows are checked against the data when the job is built (``check``)."""
    data = read(path)
    return {"splits": path, "splits_sha256": file_sha256(path),
            "num_labels": len(data["labeled"]), "num_validation": len(data["validation"])}
