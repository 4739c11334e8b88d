"""Split manifests (datasets/splits.py): every run writes splits.json; a run given one
(--splits / config.splits) trains on exactly its rows; bad manifests are refused in one
line. Real MNIST rows, real training through the library's loop."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from ladder_jax import config, datasets, train
from ladder_jax.datasets import DataError, splits
from ladder_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"model": {"layer_sizes": (784, 32, 10), "denoise_weights": (1000.0, 10.0, 0.1),
                  "noise_std": 0.3},
        "num_labels": 100, "num_validation": 100, "batch_size": 50,
        "unlabeled_batch_size": 50, "epochs": 2, "max_steps": 20, "steps_per_call": 10,
        "checkpoint_every": 10}


@pytest.fixture(scope="module")
def small(mnist) -> datasets.Dataset:
    """Real MNIST: the first 60 training images of each class, 20 test images of each."""
    def rows(labels, n):
        return np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(10)]))

    tr, te = rows(mnist.train_labels, 60), rows(mnist.test_labels, 20)
    return datasets.from_arrays(mnist.train_images[tr], mnist.train_labels[tr],
                                mnist.test_images[te], mnist.test_labels[te], name="mnist600")


def tiny(dataset: datasets.Dataset, **changes) -> config.TrainConfig:
    cfg = config.preset("full_100").replace(**{**TINY, **changes})
    return datasets.bind(cfg, dataset)


def read_json(path) -> dict:
    return json.loads(pathlib.Path(path).read_text())


def leaves(result) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(result.state.params)]


@pytest.fixture(scope="module")
def drawn(small, tmp_path_factory):
    """A run whose split its seed drew; (its workdir, its result)."""
    work = str(tmp_path_factory.mktemp("drawn"))
    return work, train.train_and_evaluate(tiny(small), work, dataset=small)


def test_every_run_writes_its_split_manifest(small, drawn):
    work, _ = drawn
    manifest = read_json(os.path.join(work, splits.FILE))
    assert manifest["format"] == splits.FORMAT and manifest["dataset"] == "arrays:mnist600"
    assert manifest["dataset_sha256"] == datasets.content_sha256(small) == small.sha256
    assert manifest["num_train"] == 600 and manifest["seed"] == 0
    labeled, validation = np.array(manifest["labeled"]), np.array(manifest["validation"])
    assert len(labeled) == 100 and len(validation) == 100
    assert not set(labeled) & set(validation)
    assert np.bincount(small.train_labels[labeled], minlength=10).tolist() == [10] * 10
    assert manifest["labeled_sha256"] == splits.list_sha256(labeled.tolist())
    # What the run trained on: the rows the seed draws.
    want_labeled, _, want_val = datasets.rows.index_sets(small.train_labels, 100, 100, 0, 10)
    assert labeled.tolist() == want_labeled.tolist()
    assert validation.tolist() == want_val.tolist()


def test_a_run_given_the_manifest_trains_exactly_the_same(small, drawn, tmp_path):
    work, result = drawn
    path = os.path.join(work, splits.FILE)
    cfg = tiny(small).replace(**splits.config_changes(path))
    assert cfg.splits == path and cfg.splits_sha256 == splits.file_sha256(path)
    again = train.train_and_evaluate(cfg, str(tmp_path / "again"), dataset=small)
    for a, b in zip(leaves(again), leaves(result)):
        np.testing.assert_array_equal(a, b)
    assert again.results["final_test_error"] == result.results["final_test_error"]
    # Another seed on the same manifest: the same rows, other numbers.
    other = train.train_and_evaluate(cfg.replace(seed=1), str(tmp_path / "seed1"),
                                     dataset=small)
    mine = read_json(str(tmp_path / "seed1" / splits.FILE))
    theirs = read_json(path)
    assert (mine["labeled"], mine["validation"]) == (theirs["labeled"], theirs["validation"])
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(other), leaves(result)))


def write(path, **manifest) -> str:
    path.write_text(json.dumps(manifest))
    return str(path)


def test_bad_manifests_are_refused_in_one_line(small, drawn, tmp_path):
    good = read_json(os.path.join(drawn[0], splits.FILE))

    def refused(**changes):
        path = write(tmp_path / "m.json", **{**good, **changes})
        with pytest.raises((DataError, ConfigError)) as err:
            cfg = tiny(small).replace(**splits.config_changes(path))
            train.build_job([cfg], small)
        assert "\n" not in str(err.value) and "--splits=" in str(err.value)
        return str(err.value)

    assert "not of 'arrays:mnist600'" in refused(dataset="mnist")
    assert "other data" in refused(dataset_sha256="0" * 64)
    assert "out of range" in refused(labeled=good["labeled"][:-1] + [600],
                                     labeled_sha256=None)
    assert "more than once" in refused(labeled=good["labeled"][:-1] + good["labeled"][:1],
                                       labeled_sha256=None)
    assert "both labeled and held out" in refused(
        validation=good["validation"][:-1] + good["labeled"][:1], validation_sha256=None)
    assert "does not match its labeled_sha256" in refused(labeled=good["labeled"][1:])
    assert "not a split manifest" in refused(format="other/1")
    assert "list of row indices" in refused(labeled=["7"], labeled_sha256=None)
    with pytest.raises(DataError) as err:
        splits.config_changes(str(tmp_path / "missing.json"))
    assert "cannot be read" in str(err.value)


def test_a_manifest_that_changes_after_the_run_started_is_refused(small, drawn, tmp_path):
    path = tmp_path / "mine.json"
    path.write_bytes(pathlib.Path(drawn[0], splits.FILE).read_bytes())
    cfg = tiny(small).replace(**splits.config_changes(str(path)))
    work = str(tmp_path / "run")
    train.train_and_evaluate(cfg.replace(max_steps=10), work, dataset=small)
    manifest = json.loads(path.read_text())
    manifest["seed"] = 7  # any change of the file
    path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError) as err:
        train.train_and_evaluate(cfg, work, dataset=small)
    assert "changed since the run started" in str(err.value)


def test_an_unbalanced_manifest_from_the_cli_is_taken_as_given(small, tmp_path):
    npz = str(tmp_path / "small.npz")
    np.savez(npz, x_train=small.train_images, y_train=small.train_labels,
             x_test=small.test_images, y_test=small.test_labels)
    data = datasets.load(f"npz:{npz}")
    labeled = [int(i) for i in np.flatnonzero(small.train_labels == 3)[:5]] + \
              [int(i) for i in np.flatnonzero(small.train_labels != 3)[:12]]
    path = tmp_path / "unbalanced.json"
    path.write_text(json.dumps(splits.manifest(data, sorted(labeled), [], seed=None)))
    work = str(tmp_path / "cli")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--dataset=npz:{npz}",
         f"--splits={path}", "--layer_sizes=784,32,10", "--denoise_weights=1000,10,0.1",
         "--batch_size=50", "--epochs=2", "--max_steps=20", "--steps_per_call=10",
         f"--workdir={work}"], cwd=REPO, capture_output=True, text=True, timeout=600,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "not class-balanced" in line]
    assert len(warnings) == 1
    cfg = read_json(os.path.join(work, "config.json"))
    assert cfg["num_labels"] == 17 and cfg["splits"] == str(path)
    assert read_json(os.path.join(work, splits.FILE))["labeled"] == sorted(labeled)
