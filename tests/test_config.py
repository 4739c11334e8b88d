"""Tests for ladder_jax.config: validation at construction, the presets against
LADDER_SPEC.md's table, and the dict round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ladder_jax import config
from ladder_jax.config import ConfigError, ModelConfig, TrainConfig

PAPER_WIDTHS = (784, 1000, 500, 250, 250, 250, 10)


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
# encoder noise, number of labels.
SEMI_100 = (1000.0, 10.0, 0.1, 0.1, 0.1, 0.1, 0.1)
SEMI_1000 = (2000.0, 20.0, 0.1, 0.1, 0.1, 0.1, 0.1)
SPEC_PRESETS = {
    "full_100": (SEMI_100, 0.3, 100),
    "full_1000": (SEMI_1000, 0.2, 1000),
    "full_50": (SEMI_1000, 0.3, 50),
    "full_all": ((1000.0, 1.0, 0.01, 0.01, 0.01, 0.01, 0.01), 0.3, "all"),
    "bottom_100": ((5000.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 0.3, 100),
    "gamma_100": ((0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5), 0.3, 100),
    "baseline_100": ((0.0,) * 7, 0.5, 100),
}


def test_preset_names():
    assert set(config.PRESETS) == set(SPEC_PRESETS)


@pytest.mark.parametrize("name", sorted(SPEC_PRESETS))
def test_preset_matches_the_spec_table(name):
    weights, noise, labels = SPEC_PRESETS[name]
    cfg = config.preset(name)
    assert cfg.model.denoise_weights == weights
    assert cfg.model.noise_std == (noise,) * 7
    assert cfg.num_labels == labels
    # settings common to all of the paper's MNIST runs
    assert cfg.model.layer_sizes == PAPER_WIDTHS
    assert cfg.model.combinator == "gauss"
    assert (cfg.batch_size, cfg.unlabeled_batch_size) == (100, 100)
    assert cfg.lr == 0.002
    assert cfg.epochs == 150
    assert cfg.decay_start == 0.67
    assert cfg.max_steps == 0  # the full schedule
    lowest = {"bottom_100": 0, "gamma_100": 6, "baseline_100": None}.get(name, 0)
    assert cfg.model.lowest_decoded_layer == lowest
    assert cfg.uses_unlabeled == (lowest is not None)


def test_unknown_preset_lists_the_names():
    message = one_line_error(lambda: config.preset("nope"), "nope")
    for name in SPEC_PRESETS:
        assert name in message


# ------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("cfg", [
    config.preset("full_100"),
    config.preset("full_all"),
    config.preset("baseline_100"),
    TrainConfig(
        model=ModelConfig(layer_sizes=(784, 64, 32, 10), denoise_weights=(5.0, 1.0, 0.0, 0.5),
                          noise_std=(0.3, 0.2, 0.1, 0.0), combinator="amlp", amlp_hidden=6,
                          bn_eps=1e-6),
        num_labels=1000, seed=7, epochs=3, lr=0.001, decay_start=0.5, max_steps=123,
        eval_every=2, checkpoint_every=0, steps_per_call=7, num_validation=1000,
        data_source="idx", data_dir="/tmp/mnist"),
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
