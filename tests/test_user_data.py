"""Your own data through the one Dataset type: from_arrays (notebooks), npz:PATH, folder:DIR
and tfds:NAME (the runners), on real MNIST rows, real PNG files, real .npz files and real TFDS
builders with TFDS's own generated examples (tfds.testing.mock_data); their checks (one line
each, naming the file or key and the fix), and the content hash in the run's identity."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ladder_jax import config, datasets, train
from ladder_jax.config import ConfigError, TrainConfig
from ladder_jax.datasets import DataError, base
from ladder_jax.train import job as job_lib
from ladder_jax.train import workdir as wd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = base.FIELDS
# A small ladder: 784-32-10 on 600 training images in batches of 50 (12 steps an epoch).
TINY = {"model": config.ModelConfig(layer_sizes=(784, 32, 10),
                                    denoise_weights=(1000.0, 10.0, 0.1), noise_std=0.3),
        "num_labels": 100, "batch_size": 50, "unlabeled_batch_size": 50, "epochs": 2,
        "max_steps": 20, "steps_per_call": 10, "checkpoint_every": 10}
TINY_FLAGS = ["--layer_sizes=784,32,10", "--denoise_weights=1000,10,0.1", "--num_labels=100",
              "--batch_size=50", "--epochs=2", "--max_steps=20", "--steps_per_call=10"]


@pytest.fixture(autouse=True)
def _fresh_loads():
    """Each test loads its data anew (mock_data serves other data under the same names)."""
    datasets.forget_loaded()
    yield
    datasets.forget_loaded()


def one_line(err: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def balanced_rows(labels: np.ndarray, per_class: int) -> np.ndarray:
    """The first ``per_class`` rows of each class, in row order."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))


@pytest.fixture(scope="module")
def small(mnist) -> dict[str, np.ndarray]:
    """Real MNIST rows: 60 training images of each class, 20 test images of each."""
    train_rows = balanced_rows(mnist.train_labels, 60)
    test_rows = balanced_rows(mnist.test_labels, 20)
    return {"train_images": mnist.train_images[train_rows, ..., 0],  # [n, 28, 28]
            "train_labels": mnist.train_labels[train_rows],
            "test_images": mnist.test_images[test_rows, ..., 0],
            "test_labels": mnist.test_labels[test_rows]}


def save_npz(path, arrays: dict[str, np.ndarray], **extra) -> str:
    np.savez(path, x_train=arrays["train_images"], y_train=arrays["train_labels"],
             x_test=arrays["test_images"], y_test=arrays["test_labels"], **extra)
    return str(path)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], check=False,
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(("error:", "FATAL"))]


# ----------------------------------------------------------------------------- from_arrays


def test_from_arrays_run_records_the_data_and_resumes_only_on_it(small, mnist, tmp_path):
    ds = datasets.from_arrays(*(small[f] for f in FIELDS), class_names=mnist.class_names,
                              name="mnist600")
    assert ds.name == "arrays:mnist600" and ds.image_shape == (28, 28, 1)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.train_images[..., 0], small["train_images"])
    assert ds.sha256 == datasets.content_sha256(ds)
    work = str(tmp_path / "nb")
    cfg = TrainConfig(**TINY)  # names the default dataset: the run records the one given
    result = train.train_and_evaluate(cfg, work, dataset=ds)
    assert int(result.state.step) == 20
    assert 0.0 <= result.results["final_test_error"] < 0.85  # 10 classes: chance is 0.9
    saved = wd.read_json(os.path.join(work, wd.CONFIG_FILE))
    assert saved["dataset"] == "arrays:mnist600" and saved["data_sha256"] == ds.sha256
    assert "tfds_splits" not in saved

    # The same pixels as floats in [0, 1] are the same data: the run resumes on them.
    as_floats = datasets.from_arrays(
        small["train_images"] / np.float32(255), small["train_labels"],
        small["test_images"] / 255.0, small["test_labels"], class_names=mnist.class_names,
        name="mnist600")
    assert as_floats.sha256 == ds.sha256
    resumed = train.train_and_evaluate(cfg.replace(max_steps=24), work, dataset=as_floats)
    assert int(resumed.state.step) == 24 and resumed.metrics[0]["step"] == 12
    predicted = train.predict_from_workdir(work, ds.test_images)
    assert np.mean(predicted != ds.test_labels) == pytest.approx(
        resumed.results["final_test_error"], abs=1e-6)

    # One pixel changed: other data, so the workdir refuses it (one line naming the hash).
    other = dict(small, train_images=small["train_images"].copy())
    other["train_images"][0, 0, 0] ^= 1
    changed = datasets.from_arrays(*(other[f] for f in FIELDS), name="mnist600")
    assert changed.sha256 != ds.sha256
    with pytest.raises(ConfigError) as err:
        train.train_and_evaluate(cfg.replace(max_steps=30), work, dataset=changed)
    one_line(err, "data_sha256", "--restart")
    assert wd.read_json(os.path.join(work, wd.CONFIG_FILE))["data_sha256"] == ds.sha256


def test_bind_refuses_other_data(small):
    ds = datasets.from_arrays(*(small[f] for f in FIELDS), name="a")
    bound = datasets.bind(TrainConfig(**TINY), ds)
    assert (bound.dataset, bound.data_sha256) == ("arrays:a", ds.sha256)
    assert datasets.bind(bound, ds) == bound
    with pytest.raises(DataError) as err:
        datasets.bind(bound.replace(dataset="npz:/data/x.npz"), ds)
    one_line(err, "npz:/data/x.npz", "arrays:a")
    with pytest.raises(DataError) as err:
        datasets.bind(bound.replace(data_sha256="0" * 64), ds)
    one_line(err, "changed", "data_sha256 0000")


# ----------------------------------------------------------------------------- npz:PATH


def test_npz_runner_trains_and_refuses_a_changed_file(small, mnist, tmp_path):
    path = save_npz(tmp_path / "mine.npz", small, class_names=np.array(mnist.class_names))
    work = str(tmp_path / "run")
    proc = run_cli(f"--dataset=npz:{path}", f"--workdir={work}", *TINY_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test error:" in proc.stdout
    saved = wd.read_json(os.path.join(work, wd.CONFIG_FILE))
    loaded = datasets.load(f"npz:{path}")
    assert saved["dataset"] == f"npz:{path}" and saved["data_sha256"] == loaded.sha256
    assert loaded.class_names == mnist.class_names
    assert wd.read_json(os.path.join(work, wd.RESULTS_FILE))["step"] == 20

    # The same file name with other labels: the workdir refuses it, in one line.
    save_npz(path, dict(small, train_labels=np.roll(small["train_labels"], 1)))
    proc = run_cli(f"--dataset=npz:{path}", f"--workdir={work}", *TINY_FLAGS, "--max_steps=24")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "data_sha256" in lines[0], proc.stderr[-2000:]


def test_conv_layers_too_deep_for_the_data_name_it(small, tmp_path):
    tiny = {f: v[:, 10:18, 10:18] if f.endswith("images") else v for f, v in small.items()}
    path = save_npz(tmp_path / "crops.npz", tiny)  # 8x8 crops of the digits
    proc = run_cli("--preset=conv_small_gamma_100", f"--dataset=npz:{path}",
                   f"--workdir={tmp_path / 'w'}", "--max_steps=1")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "conv_layers" in lines[0] and f"npz:{path} images are 8x8x1" in lines[0]
    assert not os.path.exists(tmp_path / "w" / wd.CONFIG_FILE)


# ----------------------------------------------------------------------------- checks

def _float_pixels(a):
    return dict(a, train_images=a["train_images"].astype(np.float32))  # 0..255 as floats


def _nan_pixel(a):
    x = a["test_images"] / np.float32(255)
    x[3, 4, 5] = np.nan
    return dict(a, test_images=x)


def _negative_ints(a):
    x = a["train_images"].astype(np.int16)
    x[0, 0, 0] = -1
    return dict(a, train_images=x)


def _relabel(split: str, change):
    def mutate(a):
        y = a[split + "_labels"].astype(np.int64).copy()
        return dict(a, **{split + "_labels": change(y)})
    return mutate


CHECKS = [  # (mutation, the key the line names, what else it says)
    (_float_pixels, "x_train", "holds floats in [0, 255], not [0, 1]; divide"),
    (_nan_pixel, "x_test", "NaN"),
    (_negative_ints, "x_train", "holds integers in -1..255, not 0..255"),
    (lambda a: dict(a, train_images=a["train_images"][:, None, None]), "x_train",
     "images must be [N, H, W] or [N, H, W, C]"),
    (lambda a: dict(a, test_images=a["test_images"][:, :27, :27]), "x_test",
     "27x27x1 but x_train images are 28x28x1; every image must have one shape"),
    (lambda a: dict(a, test_images=a["test_images"][:0], test_labels=a["test_labels"][:0]),
     "x_test", "holds no images"),
    (lambda a: dict(a, train_labels=a["train_labels"][1:]), "y_train",
     "has 599 labels but x_train has 600 images"),
    (lambda a: dict(a, test_labels=a["test_labels"].astype(np.float32)), "y_test",
     "labels must be integers"),
    (_relabel("train", lambda y: np.where(y == 0, -1, y)), "y_train", "holds label -1"),
    (_relabel("train", lambda y: np.where(y == 3, 4, y)), "y_train",
     "class 3 ('3') has no examples"),
]


@pytest.mark.parametrize("form", ["from_arrays", "npz"])
@pytest.mark.parametrize(("mutation", "key", "says"), CHECKS)
def test_each_check_is_one_line_naming_the_key(small, mnist, tmp_path, form, mutation, key,
                                               says):
    arrays = mutation(dict(small))
    with pytest.raises(DataError) as err:
        if form == "npz":
            path = save_npz(tmp_path / "bad.npz", arrays, class_names=np.array(mnist.class_names))
            datasets.load(f"npz:{path}")
        else:
            datasets.from_arrays(*(arrays[f] for f in FIELDS), class_names=mnist.class_names)
    names = {"x_train": "train_images", "y_train": "train_labels", "x_test": "test_images",
             "y_test": "test_labels"}
    one_line(err, key if form == "npz" else names[key],
             says if form == "npz" else says.replace("x_train", "train_images"))
    if form == "npz":
        assert f"npz:{path}" in str(err.value)


def test_integer_pixels_and_column_labels_are_converted(small):
    ds = datasets.from_arrays(small["train_images"].astype(np.int64),
                              small["train_labels"][:, None], small["test_images"],
                              small["test_labels"].astype(np.uint8))
    plain = datasets.from_arrays(*(small[f] for f in FIELDS))
    assert ds.sha256 == plain.sha256 and ds.class_names == tuple("0123456789")


def test_class_names_must_fit_the_labels(small):
    arrays = [small[f] for f in FIELDS]
    with pytest.raises(DataError) as err:
        datasets.from_arrays(arrays[0], arrays[1] * 0, arrays[2], arrays[3] * 0)
    one_line(err, "train_labels holds only class 0; a classifier needs at least 2 classes")
    with pytest.raises(DataError) as err:
        datasets.from_arrays(*arrays, class_names=[str(c) for c in range(9)])
    one_line(err, "train_labels holds label 9 but class_names names 9 classes")
    with pytest.raises(DataError) as err:
        datasets.from_arrays(*arrays, class_names=["a"] * 10)
    one_line(err, "class_names must be distinct")


@pytest.mark.parametrize(("write", "says"), [
    (lambda p, a: np.savez(p, x_train=a["train_images"], y_train=a["train_labels"]),
     "has no x_test, y_test"),
    (lambda p, a: pathlib.Path(p).write_text("x_train,y_train\n"), "is not an .npz file"),
    (lambda p, a: np.savez(p, **{k: np.array([{"x": 1}], dtype=object)
                                 for k in ("x_train", "y_train", "x_test", "y_test")}),
     "x_train cannot be read"),
    (None, "is not a file"),
])
def test_npz_file_problems(small, tmp_path, write, says):
    path = str(tmp_path / "d.npz")
    if write is not None:
        write(path, small)
    with pytest.raises(DataError) as err:
        datasets.load(f"npz:{path}")
    one_line(err, f"npz:{path}", says)


def test_model_that_does_not_fit_names_the_fix(small):
    # Real digits padded to 32x32 and coloured grey-on-grey: 3072 values an image.
    def colour(x):
        return np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=-1)
    rgb = datasets.from_arrays(colour(small["train_images"]), small["train_labels"],
                               colour(small["test_images"]), small["test_labels"], name="rgb")
    with pytest.raises(ConfigError) as err:
        job_lib.check_fits(config.preset("full_100"), rgb)
    one_line(err, "arrays:rgb: its images are 32x32x3 (3072 values)",
             "--layer_sizes=3072,1000,500,250,250,250,10")
    with pytest.raises(ConfigError) as err:
        job_lib.check_fits(config.preset("conv_small_gamma_100"), rgb)
    one_line(err, "set the model's input_shape to (32, 32, 3)")
    five = datasets.from_arrays(small["train_images"], small["train_labels"] % 5,
                                small["test_images"], small["test_labels"] % 5, name="five")
    with pytest.raises(ConfigError) as err:
        job_lib.check_fits(config.preset("full_100").replace(num_labels=50), five)
    one_line(err, "it has 5 classes but the model's top layer has 10 units",
             "--layer_sizes=784,1000,500,250,250,250,5")


def test_too_few_examples_of_a_class_for_the_labeled_set(small, mnist):
    ds = datasets.from_arrays(*(small[f] for f in FIELDS), class_names=mnist.class_names,
                              name="mnist600")
    with pytest.raises(ConfigError) as err:
        job_lib.check_fits(TrainConfig(**TINY).replace(num_labels=1000), ds)
    one_line(err, "num_labels=1000 takes 100 labeled examples of each class but arrays:mnist600 "
             "has 60 of class 0 ('0'); use --num_labels=600 or fewer")
    job_lib.check_fits(TrainConfig(**TINY).replace(num_labels=600), ds)  # exactly enough


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(("changes", "says"), [
    ({"dataset": "npz:/d.npz", "data_source": "pypi"}, "data_source applies to the built-in"),
    ({"dataset": "folder:/d", "data_dir": "/x"}, "data_dir applies to the built-in datasets"),
    ({"tfds_splits": ("train", "test")}, "tfds_splits applies to tfds:NAME datasets only"),
    ({"dataset": "tfds:kmnist", "tfds_splits": "train"}, "must name two splits"),
    ({"dataset": "kmnist"}, "is not one of mnist, fashion_mnist, cifar10, tfds:NAME"),
    ({"dataset": "npz:"}, "npz:PATH"),
    ({"data_sha256": "abc"}, "must be a sha256"),
])
def test_config_refuses_data_options_that_do_not_apply(changes, says):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**changes)
    one_line(err, says)


def test_user_dataset_names_pass_and_round_trip():
    for name in ("tfds:kmnist", "npz:/data/x.npz", "folder:~/pets", "arrays:mine"):
        assert TrainConfig(dataset=name).dataset == name
    cfg = TrainConfig(dataset="tfds:svhn_cropped", tfds_splits="train[:90%],test",
                      data_dir="/tfds", data_sha256="ab" * 32)
    assert cfg.tfds_splits == ("train[:90%]", "test")
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.identity() == cfg.identity()
    assert back.identity()["data_sha256"] == "ab" * 32
    assert cfg.replace(data_sha256="cd" * 32).identity() != cfg.identity()
    assert cfg.replace(tfds_splits=("train", "test")).identity() != cfg.identity()
    assert cfg.replace(data_dir="/other").identity() == cfg.identity()  # where from: bookkeeping


# The config.json of a run written before tfds_splits and data_sha256 existed: every other
# field of today's TrainConfig, by hand (the paper-table runs in progress have these).
OLD_CONFIG_JSON = """{
  "batch_size": 100, "checkpoint_every": 3000, "data_dir": null, "data_source": null,
  "dataset": "mnist", "decay_start": 0.67, "epochs": 150, "eval_every": 1,
  "keep_checkpoints": 3, "lr": 0.002, "max_steps": 0,
  "model": {"activation": "relu", "amlp_hidden": 4, "bn_eps": 1e-10, "combinator": "gauss",
            "combinator_per_channel": false, "conv_layers": "", "conv_lowering": "auto",
            "denoise_weights": [1000.0, 10.0, 0.1, 0.1, 0.1, 0.1, 0.1], "family": "mlp",
            "input_shape": [28, 28, 1], "layer_sizes": [784, 1000, 500, 250, 250, 250, 10],
            "matmul_dtype": "float32", "noise_std": [0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
            "top_c": true},
  "num_labels": 100, "num_validation": 0, "seed": 0, "steps_per_call": 100,
  "unlabeled_batch_size": 100,
  "bookkeeping_history": [{"changed": {"data_source": ["pypi", null]},
                           "time": "2026-11-27T11:12:55Z"}]
}"""


def test_old_config_json_resumes(tmp_path):
    old = json.loads(OLD_CONFIG_JSON)
    new_fields = {"tfds_splits", "data_sha256", "splits", "splits_sha256"}
    assert not new_fields & set(old)
    assert set(old) - {"bookkeeping_history"} | new_fields == {
        f.name for f in dataclasses.fields(TrainConfig)}  # only the new fields missing
    preset = config.preset("full_100")
    read = TrainConfig.from_dict(old)
    assert read == preset and read.identity() == preset.identity()
    assert read.to_dict() == {k: v for k, v in old.items() if k != "bookkeeping_history"}
    work = tmp_path / "run"
    work.mkdir()
    (work / wd.CONFIG_FILE).write_text(OLD_CONFIG_JSON)
    (work / wd.METRICS_FILE).write_text('{"step": 600, "epoch": 1.0}\n')  # some progress
    wd.prepare(str(work), preset, restart=False)  # resumes: no ConfigError
    assert json.loads((work / wd.CONFIG_FILE).read_text()) == old  # nothing new written
    with pytest.raises(ConfigError) as err:  # the same workdir on a user dataset: refused
        wd.prepare(str(work), preset.replace(dataset="npz:/x.npz", data_sha256="ab" * 32),
                   restart=False)
    one_line(err, "dataset: mnist -> npz:/x.npz")


# ----------------------------------------------------------------------------- folder:DIR


def write_folder(root, images: np.ndarray, labels: np.ndarray, split: str,
                 names=tuple("0123456789")) -> None:
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / split / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")


@pytest.fixture(scope="module")
def mnist_folder(tmp_path_factory, small):
    """The ``small`` MNIST rows as PNG files: 600 training (60 a class) and 200 test images,
    and the arrays in the order the folder lists them (class by class, by file name)."""
    pytest.importorskip("PIL")
    root = tmp_path_factory.mktemp("digits")
    expected = {}
    for split in ("train", "test"):
        images, labels = small[f"{split}_images"], small[f"{split}_labels"]
        write_folder(root, images, labels, split)
        order = np.argsort(labels, kind="stable")
        expected[split] = (images[order], labels[order])
    return root, expected


def test_folder_of_real_mnist_pngs_loads_and_trains(mnist_folder, small, tmp_path):
    root, expected = mnist_folder
    ds = datasets.load(f"folder:{root}")
    assert ds.name == f"folder:{root}" and ds.class_names == tuple("0123456789")
    assert ds.image_shape == (28, 28, 1) and ds.train_images.dtype == np.uint8
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(ds, f"{split}_images")[..., 0], expected[split][0])
        np.testing.assert_array_equal(getattr(ds, f"{split}_labels"), expected[split][1])
    assert ds.sha256 == datasets.content_sha256(ds)
    reordered = {f: v[np.argsort(small[f.split("_")[0] + "_labels"], kind="stable")]
                 for f, v in small.items()}
    assert ds.sha256 == datasets.from_arrays(*(reordered[f] for f in FIELDS)).sha256
    cfg = TrainConfig(**TINY).replace(dataset=f"folder:{root}")
    result = train.train_and_evaluate(cfg, str(tmp_path / "run"))  # loads it by name
    assert int(result.state.step) == 20
    saved = wd.read_json(str(tmp_path / "run" / wd.CONFIG_FILE))
    assert saved["dataset"] == f"folder:{root}" and saved["data_sha256"] == ds.sha256


def test_folder_with_colour_reads_every_image_as_rgb(mnist_folder, tmp_path):
    from PIL import Image

    root, expected = mnist_folder
    copy = tmp_path / "mixed"
    shutil.copytree(root, copy)
    # Class 1's training images in colour (each digit in red); the others stay grey.
    for path in sorted((copy / "train" / "1").iterdir()):
        grey = np.asarray(Image.open(path))
        Image.fromarray(np.stack([grey, grey * 0, grey * 0], axis=-1)).save(path)
    (copy / "train" / "1" / ".DS_Store").write_bytes(b"\0\1")  # hidden files are skipped
    ds = datasets.load(f"folder:{copy}")
    assert ds.image_shape == (28, 28, 3)
    images, labels = expected["train"]
    grey_rows, red_rows = labels != 1, labels == 1
    np.testing.assert_array_equal(ds.train_images[grey_rows],
                                  np.repeat(images[grey_rows][..., None], 3, axis=-1))
    np.testing.assert_array_equal(ds.train_images[red_rows][..., 0], images[red_rows])
    assert not ds.train_images[red_rows][..., 1:].any()


def _write(path, data: bytes):
    path.write_bytes(data)


def _first_png(root, split="train", cls="0"):
    return min((root / split / cls).iterdir())


def _resize_one(root):
    from PIL import Image

    path = _first_png(root)
    Image.open(path).resize((27, 28)).save(path)


def _sixteen_bit(root):
    from PIL import Image

    path = _first_png(root, "test", "1")
    Image.fromarray(np.asarray(Image.open(path)).astype(np.uint16) * 256).save(path)
    assert Image.open(path).mode.startswith("I")


FOLDER_DAMAGE = {  # name -> (damage(root), what the line says)
    "no_test": (lambda r: shutil.rmtree(r / "test"), "test is not a directory; the layout is"),
    "stray_file": (lambda r: _write(r / "train" / "notes.txt", b"x"),
                   "notes.txt is not in a class folder"),
    "not_an_image": (lambda r: _write(r / "train" / "0" / "labels.csv", b"x"),
                     "labels.csv is not a .png/.jpg/.jpeg image"),
    "extra_test_class": (lambda r: shutil.copytree(r / "test" / "1", r / "test" / "cat"),
                         "test/cat is not a class of"),
    "empty_class": (lambda r: (r / "train" / "5").mkdir(), "holds no .png/.jpg/.jpeg images"),
    "other_size": (_resize_one, "27x28; every image must have one size"),
    "unreadable": (lambda r: _write(_first_png(r), b"\x89PNG not really"),
                   "cannot be read as an image"),
    "truncated": (lambda r: _write(_first_png(r), _first_png(r).read_bytes()[:100]),
                  "cannot be read as an image"),
    "sixteen_bit": (_sixteen_bit, "16-bit or float"),
}


@pytest.mark.parametrize("damage", sorted(FOLDER_DAMAGE))
def test_folder_problems_are_one_line(mnist, tmp_path, damage):
    pytest.importorskip("PIL")
    root = tmp_path / "tiny"
    rows = np.concatenate([np.flatnonzero(mnist.train_labels == c)[:2] for c in (0, 1)])
    write_folder(root, mnist.train_images[rows, ..., 0], mnist.train_labels[rows], "train")
    write_folder(root, mnist.train_images[rows, ..., 0], mnist.train_labels[rows], "test")
    datasets.load(f"folder:{root}")  # intact, it loads
    apply, says = FOLDER_DAMAGE[damage]
    apply(root)
    with pytest.raises(DataError) as err:
        datasets.load(f"folder:{root}")
    one_line(err, str(root), says)


def test_folder_without_pillow_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes the import fail
    with pytest.raises(DataError) as err:
        datasets.load(f"folder:{tmp_path}")
    one_line(err, "needs Pillow: pip install 'ladder_jax[images]'")


# ----------------------------------------------------------------------------- tfds:NAME


@pytest.fixture(scope="module")
def tfds():
    return pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize(("name", "shape"), [("kmnist", (28, 28, 1)),
                                             ("svhn_cropped", (32, 32, 3))])
def test_tfds_builders_by_name(tfds, name, shape):
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = datasets.load(f"tfds:{name}")
    info = tfds.builder(name).info
    assert ds.name == f"tfds:{name}" and ds.image_shape == shape == info.features["image"].shape
    assert ds.class_names == tuple(info.features["label"].names) and ds.num_classes == 10
    for images, labels in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
        assert images.shape == (40, *shape) and images.dtype == np.uint8
        assert labels.dtype == np.int32 and 0 <= labels.min() and labels.max() <= 9
    assert ds.sha256 == datasets.content_sha256(ds) and ds.preprocessing is None
    if shape == (32, 32, 3):  # an MLP preset on it: the line names the widths that fit
        with pytest.raises(ConfigError) as err:
            job_lib.check_fits(config.preset("full_100"), ds)
        one_line(err, "--layer_sizes=3072,1000,500,250,250,250,10")


def test_tfds_kmnist_job_by_name(tfds):
    """What a runner builds for --dataset=tfds:kmnist: the job loads it by name and records
    its name and content hash (training itself is the same as for any Dataset)."""
    cfg = TrainConfig(**TINY).replace(dataset="tfds:kmnist", num_labels=50)
    with tfds.testing.mock_data(num_examples=200, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = datasets.load("tfds:kmnist")
        job = job_lib.build_job([cfg])
    assert job.dataset is ds and ds.class_names[:2] == ("o", "ki")
    assert job.cfgs[0].dataset == "tfds:kmnist" and job.cfgs[0].data_sha256 == ds.sha256
    assert job.schedule.steps_per_epoch == 200 // 50


def test_tfds_splits_by_name(tfds, tmp_path):
    # The builder's metadata on disk, declaring its splits, as a prepared dataset has it.
    builder = tfds.builder("kmnist", data_dir=str(tmp_path))
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name="train", shard_lengths=[30], num_bytes=0),
        tfds.core.SplitInfo(name="test", shard_lengths=[20], num_bytes=0)]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=str(tmp_path)):
        ds = datasets.load("tfds:kmnist", data_dir=str(tmp_path), tfds_splits=("test", "train"))
    assert ds.image_shape == (28, 28, 1) and len(ds.train_labels) == 30
    # TFDS itself (no mock) checks the split names against the metadata.
    with pytest.raises(DataError) as err:
        datasets.load("tfds:kmnist", data_dir=str(tmp_path), tfds_splits=("train", "validation"))
    one_line(err, "could not load kmnist", "Unknown split 'validation'",
             "--tfds_splits naming two of its splits (now train,validation)")


@pytest.mark.parametrize(("name", "says"), [
    ("no_such_builder", "TFDS cannot make the builder 'no_such_builder'"),
    ("imdb_reviews", "is not an image-classification dataset"),
    ("cats_vs_dogs", "images have no fixed size"),
])
def test_tfds_builders_that_do_not_fit(tfds, name, says):
    with pytest.raises(DataError) as err:
        datasets.load(f"tfds:{name}")
    one_line(err, f"tfds:{name}", says)


def test_tfds_form_without_tfds_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DataError) as err:
        datasets.load("tfds:kmnist")
    one_line(err, "tfds:kmnist", "pip install 'ladder_jax[tfds]'")
