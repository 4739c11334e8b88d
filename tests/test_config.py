"""Tests for ladder_jax.config: validation at construction, the presets against
LADDER_SPEC.md's table, the dict round trip, a run's identity and reading old configs."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import pathlib

import jax
import numpy as np
import pytest

from ladder_jax import combinators, config, models, train
from ladder_jax.config import ConfigError, ModelConfig, TrainConfig

PAPER_WIDTHS = (784, 1000, 500, 250, 250, 250, 10)
REPO = pathlib.Path(__file__).resolve().parent.parent
# A config.json written before ModelConfig had family, conv_layers, input_shape, activation
# and top_c and before TrainConfig had dataset (a real run of the full_100 preset).
OLD_CONFIG_JSON = REPO / "docs" / "runs" / "full_100_seed0" / "config.json"


def one_line_error(make, *words: str) -> str:
    """Asserts make() raises ConfigError with a one-line message naming every word."""
    with pytest.raises(ConfigError) as err:
        make()
    message = str(err.value)
    assert message and "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


# ------------------------------------------------------------------------------ bad configs


@pytest.mark.parametrize("kwargs,words", [
    # one lambda / noise std per layer, input included
    ({"denoise_weights": (1000.0, 10.0)}, ("denoise_weights", "7")),
    ({"layer_sizes": (784, 100, 10)}, ("denoise_weights", "3")),  # default 7 lambdas
    ({"layer_sizes": (784, 100, 10), "denoise_weights": (1.0, 0.0, 0.0, 0.0)},
     ("denoise_weights",)),
    ({"layer_sizes": (784, 100, 10), "denoise_weights": 1.0, "noise_std": (0.3, 0.3)},
     ("noise_std",)),
    ({"combinator": "vanilla"}, ("vanilla", "gauss", "amlp", "linear")),
    ({"matmul_dtype": "float16"}, ("float16", "float32", "bfloat16")),
    ({"noise_std": -0.1}, ("noise_std",)),
    ({"noise_std": (0.3, 0.3, -0.3, 0.3, 0.3, 0.3, 0.3)}, ("noise_std",)),
    ({"denoise_weights": (1000.0, -10.0, 0.1, 0.1, 0.1, 0.1, 0.1)}, ("denoise_weights",)),
    ({"denoise_weights": -1.0}, ("denoise_weights",)),
    ({"layer_sizes": ()}, ("layer_sizes",)),
    ({"layer_sizes": (784,), "denoise_weights": 1.0, "noise_std": 0.3}, ("layer_sizes",)),
    ({"layer_sizes": (784, 0, 10), "denoise_weights": 1.0, "noise_std": 0.3},
     ("layer_sizes",)),
    ({"layer_sizes": (784, 100, -10), "denoise_weights": 1.0, "noise_std": 0.3},
     ("layer_sizes",)),
    ({"layer_sizes": (784, 1), "denoise_weights": 1.0, "noise_std": 0.3}, ("output",)),
    ({"amlp_hidden": 0}, ("amlp_hidden",)),
    ({"bn_eps": -1e-3}, ("bn_eps",)),
    ({"denoise_weights": float("nan")}, ("denoise_weights",)),
    ({"noise_std": float("nan")}, ("noise_std",)),
    ({"layer_sizes": (784, "a", 10), "denoise_weights": 1.0, "noise_std": 0.3},
     ("layer_sizes",)),
    ({"layer_sizes": (784, 2.5, 10), "denoise_weights": 1.0, "noise_std": 0.3},
     ("layer_sizes",)),
    ({"denoise_weights": ("x",) * 7}, ("denoise_weights",)),
    ({"family": "rnn"}, ("rnn", "mlp", "conv")),
    ({"activation": "tanh"}, ("tanh", "relu", "leakyrelu")),
])
def test_bad_model_config_fails_at_construction(kwargs, words):
    one_line_error(lambda: ModelConfig(**kwargs), *words)


@pytest.mark.parametrize("kwargs,words", [
    ({"num_labels": 0}, ("num_labels",)),
    ({"num_labels": -5}, ("num_labels",)),
    ({"num_labels": "0"}, ("num_labels",)),
    ({"num_labels": "lots"}, ("num_labels", "lots")),
    ({"num_labels": ""}, ("num_labels",)),
    ({"num_labels": "-5"}, ("num_labels",)),
    ({"num_labels": 15}, ("num_labels", "divisible")),
    ({"num_labels": True}, ("num_labels",)),
    ({"num_labels": None}, ("num_labels",)),
    ({"num_labels": 2.5}, ("num_labels",)),
    ({"num_labels": [100]}, ("num_labels",)),
    ({"epochs": 0}, ("epochs",)),
    ({"epochs": -3}, ("epochs",)),
    ({"lr": 0.0}, ("lr",)),
    ({"lr": -0.002}, ("lr",)),
    ({"lr": float("nan")}, ("lr",)),
    ({"decay_start": -0.1}, ("decay_start",)),
    ({"decay_start": 1.01}, ("decay_start",)),
    ({"batch_size": 0}, ("batch_size",)),
    ({"unlabeled_batch_size": 0}, ("unlabeled_batch_size",)),
    ({"steps_per_call": 0}, ("steps_per_call",)),
    ({"max_steps": -1}, ("max_steps",)),
])
def test_bad_train_config_fails_at_construction(kwargs, words):
    one_line_error(lambda: TrainConfig(**kwargs), *words)


def test_good_edge_values_are_accepted():
    assert TrainConfig(decay_start=0.0).decay_start == 0.0
    assert TrainConfig(decay_start=1.0).decay_start == 1.0
    assert TrainConfig(num_labels="all").num_labels == "all"
    assert TrainConfig(num_labels=-1).num_labels == "all"
    assert TrainConfig(num_labels=" ALL ").num_labels == "all"
    assert TrainConfig(num_labels="1000").num_labels == 1000
    model = ModelConfig(layer_sizes=[784, 100, 10], denoise_weights=1, noise_std=0)
    assert model.layer_sizes == (784, 100, 10)
    assert model.denoise_weights == (1.0, 1.0, 1.0)
    assert model.noise_std == (0.0, 0.0, 0.0)
    assert model.num_layers == 2
    assert model.num_classes == 10
    assert model.layer_shapes == [(784,), (100,), (10,)]
    assert ModelConfig(activation="leakyrelu").activation == "leakyrelu"
    assert TrainConfig().dataset == "mnist" and TrainConfig().data_source is None


def test_replace_validates_too():
    cfg = config.preset("full_100")
    one_line_error(lambda: cfg.replace(lr=-1.0), "lr")
    one_line_error(lambda: cfg.replace(model={"combinator": "nope"}), "nope")
    one_line_error(lambda: dataclasses.replace(cfg.model, layer_sizes=(784, 10)),
                   "denoise_weights")
    changed = cfg.replace(epochs=3, model={"combinator": "amlp"})
    assert (changed.epochs, changed.model.combinator) == (3, "amlp")
    assert changed.model.denoise_weights == cfg.model.denoise_weights


# ------------------------------------------------------------------------------ presets

# LADDER_SPEC.md, "Paper settings, permutation-invariant MNIST": lambdas layer 0 first,
# encoder noise, number of labels, combinator (the AMLP row of its results table runs the
# 100-label settings with Pezeshki et al.'s combinator). The encoder noise is the authors'
# --f-local-noise-std, layers 1..L; their input noise stays at --super-noise-std's 0.3.
SEMI_100 = (1000.0, 10.0, 0.1, 0.1, 0.1, 0.1, 0.1)
SEMI_1000 = (2000.0, 20.0, 0.1, 0.1, 0.1, 0.1, 0.1)
NO_LAMBDAS = (0.0,) * 7
SPEC_PRESETS = {
    "full_100": (SEMI_100, 0.3, 100, "gauss"),
    "full_1000": (SEMI_1000, 0.2, 1000, "gauss"),
    "full_50": (SEMI_1000, 0.3, 50, "gauss"),
    "full_all": ((1000.0, 1.0, 0.01, 0.01, 0.01, 0.01, 0.01), 0.3, "all", "gauss"),
    "bottom_100": ((5000.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 0.3, 100, "gauss"),
    "gamma_100": ((0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5), 0.3, 100, "gauss"),
    "baseline_100": (NO_LAMBDAS, 0.5, 100, "gauss"),
    "baseline_1000": (NO_LAMBDAS, 0.5, 1000, "gauss"),
    "baseline_all": (NO_LAMBDAS, 0.5, "all", "gauss"),
    "amlp_100": (SEMI_100, 0.3, 100, "amlp"),
}
NEW_PRESETS = ("baseline_1000", "baseline_all", "amlp_100")


def test_preset_names():
    """The dense (permutation-invariant MNIST) presets are exactly the spec table's rows;
    the convolutional presets are tests/test_conv.py's."""
    dense = {name for name, cfg in config.PRESETS.items() if cfg.model.family == "mlp"}
    assert dense == set(SPEC_PRESETS)


@pytest.mark.parametrize("name", sorted(SPEC_PRESETS))
def test_preset_matches_the_spec_table(name):
    weights, noise, labels, combinator = SPEC_PRESETS[name]
    cfg = config.preset(name)
    assert cfg.model.denoise_weights == weights
    assert cfg.model.noise_std == (0.3,) + (noise,) * 6
    assert cfg.num_labels == labels
    assert cfg.model.combinator == combinator
    # settings common to all of the paper's MNIST runs
    assert cfg.model.family == "mlp" and cfg.dataset == "mnist"
    assert cfg.model.layer_sizes == PAPER_WIDTHS
    assert cfg.model.activation == "relu"
    assert (cfg.batch_size, cfg.unlabeled_batch_size) == (100, 100)
    assert cfg.lr == 0.002
    assert cfg.epochs == 150
    assert cfg.decay_start == 0.67
    assert cfg.max_steps == 0  # the full schedule
    assert cfg.data_source is None  # the dataset's default source
    lowest = 0 if name.startswith(("full", "bottom", "amlp")) else {
        "gamma_100": 6}.get(name)
    assert cfg.model.lowest_decoded_layer == lowest
    assert cfg.uses_unlabeled == (lowest is not None)


@pytest.mark.parametrize("name", NEW_PRESETS)
def test_new_presets_build(name, mnist):
    """The presets added with the model families build: parameters of the expected size,
    a positive FLOP count, and a training job over real MNIST with their label count."""
    cfg = config.preset(name)
    params = jax.eval_shape(functools.partial(models.init, cfg=cfg.model), jax.random.key(0))
    counts = models.count_params(params)
    widths = PAPER_WIDTHS
    enc = sum(a * b for a, b in itertools.pairwise(widths))
    assert counts["encoder_W"] == enc
    hidden = cfg.model.amlp_hidden
    per_unit = {"gauss": 10, "amlp": 3 * hidden + hidden + hidden + 1}[cfg.model.combinator]
    if cfg.uses_unlabeled:  # amlp_100: the full decoder
        assert (counts["decoder_V"], counts["combinators"]) == (enc, per_unit * sum(widths))
        assert sorted(params["g"], key=int) == [str(layer) for layer in range(7)]
        assert set(params["g"]["0"]) == set(
            combinators.get(cfg.model.combinator).init(jax.random.key(0), 1))
    else:
        assert (counts["decoder_V"], counts["combinators"]) == (0, 0)
    unlabeled = cfg.unlabeled_batch_size if cfg.uses_unlabeled else 0
    assert models.step_flops(cfg.model, cfg.batch_size, unlabeled) > 0

    job = train.build_job([cfg], mnist)
    labeled = len(mnist.train_labels) if cfg.num_labels == "all" else cfg.num_labels
    assert job.rows[0].labeled.shape == (labeled,)
    per_class = np.bincount(mnist.train_labels[np.asarray(job.rows[0].labeled)], minlength=10)
    if cfg.num_labels != "all":
        assert per_class.tolist() == [labeled // 10] * 10  # class-balanced
    assert job.rows[0].unlabeled.shape == (len(mnist.train_labels),)
    assert job.schedule.total_steps == 150 * len(mnist.train_labels) // 100


def test_unknown_preset_lists_the_names():
    message = one_line_error(lambda: config.preset("nope"), "nope")
    for name in SPEC_PRESETS:
        assert name in message


@pytest.mark.parametrize("n, expected", [
    (7, (0.3, 0.5, 0.4, 0.4, 0.4, 0.4, 0.0)),  # same depth: unchanged
    (4, (0.3, 0.5, 0.4, 0.0)),  # shallower: the bottom values and the top one
    (9, (0.3, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.0)),  # deeper: the last hidden repeats
    (1, (0.0,)),  # only the top is left
])
def test_fit_layers_keeps_the_bottom_and_top_values(n, expected):
    assert config.fit_layers((0.3, 0.5, 0.4, 0.4, 0.4, 0.4, 0.0), n) == expected


# ------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("cfg", [
    config.preset("full_100"),
    config.preset("full_all"),
    config.preset("baseline_100"),
    TrainConfig(
        model=ModelConfig(layer_sizes=(784, 64, 32, 10), denoise_weights=(5.0, 1.0, 0.0, 0.5),
                          noise_std=(0.3, 0.2, 0.1, 0.0), combinator="amlp", amlp_hidden=6,
                          bn_eps=1e-6, activation="leakyrelu", matmul_dtype="bfloat16"),
        num_labels=1000, seed=7, epochs=3, lr=0.001, decay_start=0.5, max_steps=123,
        eval_every=2, checkpoint_every=0, steps_per_call=7, num_validation=1000,
        keep_checkpoints=5, dataset="fashion_mnist", data_source="idx",
        data_dir="/tmp/mnist"),
])
def test_to_dict_from_dict_round_trip(cfg):
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-ready
    assert isinstance(d["model"]["layer_sizes"], list)
    back = TrainConfig.from_dict(json.loads(json.dumps(d)))
    assert back == cfg
    assert back.to_dict() == d
    assert isinstance(back.model.layer_sizes, tuple)
    assert isinstance(back.model.denoise_weights, tuple)


def test_from_dict_validates():
    d = config.preset("full_100").to_dict()
    d["decay_start"] = 2.0
    one_line_error(lambda: TrainConfig.from_dict(d), "decay_start")
    d = config.preset("full_100").to_dict()
    d["model"]["denoise_weights"] = [1.0, 2.0]
    one_line_error(lambda: TrainConfig.from_dict(d), "denoise_weights")


# ------------------------------------------------------------------------------ identity

# What changes the numbers of a run's steps, one changed value per TrainConfig field that is
# not bookkeeping (a new field must be added here or to BOOKKEEPING below).
IDENTITY_CHANGES = {
    "model": {"combinator": "amlp"},
    "num_labels": 1000,
    "seed": 1,
    "epochs": 3,
    "batch_size": 50,
    "unlabeled_batch_size": 50,
    "lr": 0.001,
    "decay_start": 0.5,
    "num_validation": 1000,
    "dataset": "fashion_mnist",
    "data_sha256": "ab" * 32,  # a user dataset's content hash (None for the built-ins)
    "splits": "splits.json",  # a split manifest (tests/test_splits.py) and its sha256
    "splits_sha256": "cd" * 32,
}
# Identity fields that only a user dataset takes (tests/test_user_data.py checks them).
USER_DATA_IDENTITY = {"tfds_splits"}
BOOKKEEPING = {
    "max_steps": 10,
    "eval_every": 2,
    "checkpoint_every": 0,
    "steps_per_call": 7,
    "keep_checkpoints": 1,
    "data_source": "idx",
    "data_dir": "/data/mnist",
}


def test_every_field_is_either_identity_or_bookkeeping():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(config.BOOKKEEPING_FIELDS) == set(BOOKKEEPING)
    assert fields == set(IDENTITY_CHANGES) | USER_DATA_IDENTITY | set(BOOKKEEPING)
    assert not set(IDENTITY_CHANGES) & set(BOOKKEEPING)


@pytest.mark.parametrize("cfg", [config.preset("full_100"), config.preset("baseline_all")])
def test_identity_excludes_exactly_the_bookkeeping_fields(cfg):
    d, identity = cfg.to_dict(), cfg.identity()
    assert set(d) - set(identity) == set(config.BOOKKEEPING_FIELDS)
    assert set(identity) <= set(d)
    assert identity == {k: v for k, v in d.items() if k not in config.BOOKKEEPING_FIELDS}
    assert json.loads(json.dumps(identity)) == identity  # JSON-ready, as to_dict
    for name, value in BOOKKEEPING.items():
        changed = cfg.replace(**{name: value})
        assert changed.to_dict() != d, name
        assert changed.identity() == identity, name
    for name, value in IDENTITY_CHANGES.items():
        changed = cfg.replace(**{name: value})
        assert changed.identity() != identity, name
        assert changed.identity()[name] != identity.get(name), name
    # identity() reads the config; it changes nothing
    assert cfg.to_dict() == d


# ------------------------------------------------------------------------------ old configs


def old_config() -> dict:
    with open(OLD_CONFIG_JSON) as f:
        return json.load(f)


def test_from_dict_reads_a_config_written_before_the_new_fields():
    d = old_config()
    new_train, new_model = {"dataset"}, {"family", "conv_layers", "input_shape", "activation",
                                         "top_c"}
    assert not new_train & set(d) and not new_model & set(d["model"])  # really an old one
    cfg = TrainConfig.from_dict(d)
    # the missing fields take their defaults: the dense MNIST model it was trained as
    assert (cfg.dataset, cfg.model.family, cfg.model.activation) == ("mnist", "mlp", "relu")
    assert cfg.model.top_c is True and cfg.model.conv_layers == ""
    assert cfg.model.input_shape == (28, 28, 1)
    assert cfg == config.preset("full_100").replace(data_source="pypi")
    assert cfg.identity() == config.preset("full_100").identity()  # so it resumes as one
    written = cfg.to_dict()
    assert {k: v for k, v in written.items() if k != "model"} == (
        {k: v for k, v in d.items() if k != "model"} | {"dataset": "mnist"})
    assert {k: written["model"][k] for k in d["model"]} == d["model"]
    # the run directory's history of bookkeeping changes is not a config field
    assert TrainConfig.from_dict(d | {"bookkeeping_history": [{"max_steps": 5}]}) == cfg


@pytest.mark.parametrize("where,field", [
    ("top", "momentum"),
    ("model", "dropout"),
])
def test_from_dict_refuses_an_unknown_field(where, field):
    d = old_config()
    (d if where == "top" else d["model"])[field] = 0.5
    one_line_error(lambda: TrainConfig.from_dict(d), "unknown", field)


# ------------------------------------------------------------------------------ num_labels


@pytest.mark.parametrize("value,expected", [
    (100, 100),
    (10, 10),
    (15, 15),  # divisibility by the class count is TrainConfig's check
    ("100", 100),
    (" 1000 ", 1000),
    ("all", "all"),
    ("ALL", "all"),
    (" All ", "all"),
    (-1, "all"),
    ("-1", "all"),
])
def test_parse_num_labels(value, expected):
    parsed = config.parse_num_labels(value)
    assert parsed == expected and type(parsed) is type(expected)


@pytest.mark.parametrize("value", [0, -5, "0", "-5", "", "lots", "1e3", "+10", "10.0", True,
                                   False, None, 2.5, 100.0, [100]])
def test_parse_num_labels_refuses(value):
    one_line_error(lambda: config.parse_num_labels(value), "num_labels")
