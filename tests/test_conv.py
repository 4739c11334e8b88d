"""The convolutional ladder family (ladder_jax/models/conv.py and its layer spec,
conv_spec.py), through ladder_jax.models, ladder_jax.losses and ladder_jax.config only.
Maths tests use a tiny net that has every layer type: a strided valid conv, a full conv, a
max pool with a partial border window, a strided full conv, a global mean pool and an fc
top."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys

import contractions  # tests/ is on sys.path under pytest
import gradient_check  # tests/ is on sys.path under pytest
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend import core as jax_core
from jax.flatten_util import ravel_pytree

from ladder_jax import config, losses, models
from ladder_jax.config import ConfigError, ModelConfig
from ladder_jax.datasets import base as datasets_base
from ladder_jax.models import conv, conv_spec
from ladder_jax.train import evaluate as eval_lib

# The authors' specs (CuriousAI/ladder README.md)
CONV_SMALL = ("convf:32:5:1:1-maxpool:2:2-convv:64:3:1:1-convf:64:3:1:1-maxpool:2:2-"
              "convv:128:3:1:1-convv:10:1:1:1-globalmeanpool:6:6-fc:10")
CONV_FC = ("convv:1000:26:1:1-convv:500:1:1:1-convv:250:1:1:1-convv:250:1:1:1-"
           "convv:250:1:1:1-convv:10:1:1:1-globalmeanpool:0")
CONV_LARGE = ("convv:96:3:1:1-convf:96:3:1:1-convf:96:3:1:1-maxpool:2:2-convv:192:3:1:1-"
              "convf:192:3:1:1-convv:192:3:1:1-maxpool:2:2-convv:192:3:1:1-convv:192:1:1:1-"
              "convv:10:1:1:1-globalmeanpool:0")

TINY = "convv:3:3:2:1-convf:4:2:1:1-maxpool:2:2-convf:3:2:2:1-globalmeanpool:0-fc:3"
TINY_INPUT = (9, 9, 2)
TINY_SHAPES = [(9, 9, 2), (4, 4, 3), (5, 5, 4), (3, 3, 4), (2, 2, 3), (3,), (3,)]
FULL = (1.0, 0.5, 0.3, 0.2, 0.2, 0.1, 0.1)
GAMMA = (0.0,) * 6 + (0.5,)
NONE = (0.0,) * 7


def tiny_cfg(weights=FULL, **changes) -> ModelConfig:
    return ModelConfig(family="conv", conv_layers=TINY, input_shape=TINY_INPUT,
                       denoise_weights=weights, noise_std=0.3, **changes)


def conv_cfg(spec, input_shape=(28, 28, 1), weights=0.0, **changes) -> ModelConfig:
    return ModelConfig(family="conv", conv_layers=spec, input_shape=input_shape,
                       denoise_weights=weights, noise_std=0.3, **changes)


def random_params(cfg, seed, scale=0.3, dtype=np.float32):
    """Parameters of init's structure filled from numpy (no compile): W, V ~ N(0, 1) /
    sqrt(fan_in); the rest N(init, scale), gamma, a2, a7 around 1 (the gauss init alone
    makes zhat = 0, where most gradients vanish)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(functools.partial(conv.init, cfg=cfg), jax.random.key(0))

    def fill(path, leaf):
        names = [getattr(k, "key", None) for k in path]
        value = rng.standard_normal(leaf.shape)
        if names[0] in ("W", "V"):
            value /= np.sqrt(np.prod(leaf.shape[:-1]))
        else:
            value = scale * value + (names[0] == "gamma" or names[-1] in ("a2", "a7"))
        return jnp.asarray(value, dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def numpy_noise(cfg, rows, seed, dtype=np.float32):
    """models.draw_noise's shapes and scale from numpy: the traced threefry draw costs
    more compile time than the whole conv ladder."""
    rng = np.random.default_rng(seed)
    return [None if std == 0 else (std * rng.standard_normal((rows, *shape))).astype(dtype)
            for std, shape in zip(cfg.noise_std, cfg.layer_shapes)]


def batch(cfg, seed, n_labeled=4, n_unlabeled=5):
    rng = np.random.default_rng(seed)
    shape = tuple(cfg.input_shape)
    xl = rng.standard_normal((n_labeled, *shape)).astype(np.float32)
    xu = rng.standard_normal((n_unlabeled, *shape)).astype(np.float32)
    return xl, rng.integers(0, cfg.num_classes, n_labeled), xu


# ------------------------------------------------------------------- spec and shapes


def test_conv_small_conv_fc_conv_large_shapes_are_the_authors():
    # by hand from the specs: convf grows by K-1, convv shrinks by K-1, maxpool 2:2 halves
    # (rounding up: Theano keeps the partial border window, 15 -> 8), globalmeanpool -> C
    small = [(28, 28, 1), (32, 32, 32), (16, 16, 32), (14, 14, 64), (16, 16, 64),
             (8, 8, 64), (6, 6, 128), (6, 6, 10), (10,), (10,)]
    fc = [(28, 28, 1), (3, 3, 1000), (3, 3, 500), (3, 3, 250), (3, 3, 250), (3, 3, 250),
          (3, 3, 10), (10,)]
    large = [(32, 32, 3), (30, 30, 96), (32, 32, 96), (34, 34, 96), (17, 17, 96),
             (15, 15, 192), (17, 17, 192), (15, 15, 192), (8, 8, 192), (6, 6, 192),
             (6, 6, 192), (6, 6, 10), (10,)]
    for spec, input_shape, expected in [(CONV_SMALL, (28, 28, 1), small),
                                        (CONV_FC, (28, 28, 1), fc),
                                        (CONV_LARGE, (32, 32, 3), large)]:
        cfg = conv_cfg(spec, input_shape, weights=0.0)
        assert cfg.layer_shapes == expected
        assert cfg.num_layers == len(expected) - 1 and cfg.num_classes == 10
        params = jax.eval_shape(functools.partial(models.init, cfg=cfg), jax.random.key(0))
        x = jax.ShapeDtypeStruct((3, *input_shape), jnp.float32)
        trace = jax.eval_shape(lambda p, x, cfg=cfg: models.encode(p, cfg, x), params, x)
        assert [z.shape for z in trace.z] == [(3, *s) for s in expected]
        assert [h.shape for h in trace.h] == [(3, *s) for s in expected]
        assert [m.shape for m in trace.stats.mean[1:]] == [(1, s[-1]) for s in expected[1:]]
        assert trace.logits.shape == (3, 10)


def test_conv_small_parameters_follow_the_authors_layers():
    cfg = conv_cfg(CONV_SMALL, weights=(0.0,) * 9 + (1.0,))
    params = jax.eval_shape(functools.partial(models.init, cfg=cfg), jax.random.key(0))
    shapes = {k: v.shape for k, v in params["W"].items()}
    assert shapes == {"1": (5, 5, 1, 32), "3": (3, 3, 32, 64), "4": (3, 3, 64, 64),
                      "6": (3, 3, 64, 128), "7": (1, 1, 128, 10), "9": (10, 10)}
    # pooling layers below the top are linear: no beta; gamma on the top (top_c)
    assert sorted(params["beta"], key=int) == ["1", "3", "4", "6", "7", "9"]
    assert params["gamma"].shape == (10,)
    assert list(params["g"]) == ["9"] and params["V"] == {}  # Gamma-model: top only
    enc = 25 * 32 + 9 * 32 * 64 + 9 * 64 * 64 + 9 * 64 * 128 + 128 * 10 + 100
    counts = models.count_params(params)
    assert counts["encoder_W"] == enc and counts["decoder_V"] == 0
    assert counts["combinators"] == 10 * 10
    assert counts["bn_affine"] == 32 + 64 + 64 + 128 + 10 + 10 + 10
    no_c = jax.eval_shape(functools.partial(models.init, cfg=dataclasses.replace(
        cfg, top_c=False)), jax.random.key(0))
    assert "gamma" not in no_c


def test_conv_init_is_the_authors():
    cfg = conv_cfg("convv:64:5:1:1-convv:8:1:1:1-globalmeanpool:0-fc:10", (12, 12, 3),
                   weights=(1.0, 1.0, 1.0, 1.0, 1.0))
    # jitted with the rbg generator: threefry's traced draws take seconds to compile
    params = jax.jit(functools.partial(models.init, cfg=cfg))(jax.random.key(3, impl="rbg"))
    w1 = np.asarray(params["W"]["1"])  # U(+-sqrt(3 / fan_in)), fan_in = 5 * 5 * 3
    bound = np.sqrt(3.0 / 75)
    assert w1.shape == (5, 5, 3, 64) and np.abs(w1).max() <= bound
    assert abs(w1.std() - bound / np.sqrt(3.0)) < 0.05 * bound
    # the decoder's transposes: their own weights, fan-in from the layer above
    v2 = np.asarray(params["V"]["2"])
    assert v2.shape == (1, 1, 8, 64) and np.abs(v2).max() <= np.sqrt(3.0 / 8)
    assert params["W"]["4"].shape == (8, 10) and params["V"]["4"].shape == (10, 8)
    assert not np.allclose(params["W"]["4"], params["V"]["4"].T)
    assert params["g"]["0"]["a1"].shape == (12 * 12 * 3,)  # per channel and position
    assert params["g"]["2"]["a7"].shape == (8 * 8 * 8,)
    assert sorted(params["V"], key=int) == ["1", "2", "4"]  # pools have no weights


def test_per_channel_combinators_follow_the_authors_sharing():
    params = jax.eval_shape(functools.partial(
        conv.init, cfg=tiny_cfg(FULL, combinator_per_channel=True)), jax.random.key(0))
    widths = {k: p["a1"].shape[0] for k, p in params["g"].items()}
    # layers under a conv/pool share over positions; under the fc top and the top: per unit
    assert widths == {"0": 2, "1": 3, "2": 4, "3": 4, "4": 3, "5": 3, "6": 3}
    # decoding with them is decoding with per-position parameters repeated over positions
    shapes = [(5, 5, 2), (3, 3, 3), (3,)]
    cfg = conv_cfg("convv:3:3:1:1-globalmeanpool:0", shapes[0], weights=(1.0, 1.0, 1.0),
                   combinator_per_channel=True)
    shared = random_params(cfg, 1)
    assert [shared["g"][str(i)]["a1"].shape for i in range(3)] == [(2,), (3,), (3,)]
    tiled = dict(shared, g={str(i): jax.tree.map(lambda a, n=n: jnp.tile(a, n),
                                                 shared["g"][str(i)])
                            for i, n in enumerate((25, 9, 1))})
    rng = np.random.default_rng(2)
    z_noisy = [rng.standard_normal((4, *s)).astype(np.float32) for s in shapes]
    h_top = jax.nn.softmax(rng.standard_normal((4, 3)).astype(np.float32))
    stats = models.BnStats([None] + [np.float32(rng.uniform(size=s[-1])) for s in shapes[1:]],
                           [None] + [np.float32(rng.uniform(1, 2, s[-1])) for s in shapes[1:]])
    for a, b in zip(*jax.jit(lambda p, q: [models.decode(r, cfg, z_noisy, h_top, stats)
                                           for r in (p, q)])(shared, tiled)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec,index,text,phrase", [
    ("convv:8:3:1:1-pool:2:2-globalmeanpool:0", 2, "pool:2:2", "unknown layer type"),
    ("convv:8:30:1:1-globalmeanpool:0", 1, "convv:8:30:1:1", "kernel 30 is larger"),
    ("convv:8:3:1:1-maxpool:2:40-globalmeanpool:0", 2, "maxpool:2:40", "does not fit"),
    ("convv:8:3:1:1-convv:4:1:1:1", 2, "convv:4:1:1:1", "class vector"),
    ("convv:8:3:1:1-globalmeanpool:0-fc:1", 3, "fc:1", ">= 2"),
    ("convv:8:3:1:1-globalmeanpool:7", 2, "globalmeanpool:7", "does not cover"),
    ("convv:8:3-globalmeanpool:0", 1, "convv:8:3", "3 or 4 numbers"),
    ("convv:8:3:a:1-globalmeanpool:0", 1, "convv:8:3:a:1", "integer"),
    ("fc:20-convv:8:3:1:1-globalmeanpool:0", 2, "convv:8:3:1:1", "vector"),
])
def test_bad_layer_spec_names_the_layer_in_one_line(spec, index, text, phrase):
    with pytest.raises(ConfigError) as err:
        conv_cfg(spec)
    message = str(err.value)
    assert "\n" not in message and phrase in message
    assert message.startswith(f"conv_layers layer {index} {text!r}:")


def test_empty_spec_and_bad_input_shape_fail_when_built():
    with pytest.raises(ConfigError, match="empty"):
        conv_cfg("")
    with pytest.raises(ConfigError, match="input_shape"):
        conv_cfg(CONV_FC, input_shape=(28, 28))


def test_conv_lowering_is_a_checked_field_that_old_configs_lack():
    assert conv_cfg(CONV_FC).conv_lowering == "auto"
    assert conv_cfg(CONV_FC, conv_lowering="lax").conv_lowering == "lax"
    with pytest.raises(ConfigError, match="conv_lowering='im2col' is not one of auto"):
        conv_cfg(CONV_FC, conv_lowering="im2col")
    old = config.preset("conv_fc_100").to_dict()
    del old["model"]["conv_lowering"]  # a config.json written before the field existed
    assert config.TrainConfig.from_dict(old) == config.preset("conv_fc_100")


def test_the_spec_module_parses_and_shapes_without_jax_or_numpy():
    """conv_spec.py, loaded alone (not through ladder_jax.models), imports neither."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('conv_spec', {conv_spec.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        f"print(module.plan({TINY!r}, {TINY_INPUT!r})[1])\n"
        "print(sorted({'jax', 'numpy'} & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == [str(tuple(TINY_SHAPES)), "[]"]


# ------------------------------------------------------------------- encoder maths


def np_conv(x, w, stride, pad):
    """Reference cross-correlation, NHWC x HWIO, symmetric zero padding."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = w.shape[0]
    out = (x.shape[1] - k) // stride + 1
    patches = np.stack([np.stack([x[:, i * stride:i * stride + k, j * stride:j * stride + k]
                                  for j in range(out)], 1) for i in range(out)], 1)
    return np.einsum("bijhwc,hwco->bijo", patches, w)


def np_clean_pass(cfg, params, x):
    """The TINY net's clean pass in float64 numpy, batch-normalised over the batch:
    (each layer's input to its batch norm, each layer's z, the logits)."""
    w = {k: np.asarray(v, np.float64) for k, v in params["W"].items()}
    beta = {k: np.asarray(v, np.float64) for k, v in params["beta"].items()}
    pre_norm = []

    def bn(z):
        pre_norm.append(z)
        axes = tuple(range(z.ndim - 1))
        return (z - z.mean(axes)) / np.sqrt(z.var(axes) + cfg.bn_eps)

    if cfg.activation == "relu":
        relu = functools.partial(np.maximum, 0.0)
    else:  # the authors' leaky relu, slope 0.1
        relu = lambda v: np.where(v > 0, v, 0.1 * v)
    n = x.shape[0]
    z1 = bn(np_conv(np.float64(x), w["1"], 2, 0))  # convv stride 2
    z2 = bn(np_conv(relu(z1 + beta["1"]), w["2"], 1, 1))  # convf: pad K - 1
    h2 = np.pad(relu(z2 + beta["2"]), ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
    z3 = bn(h2.reshape(n, 3, 2, 3, 2, 4).max(axis=(2, 4)))  # 5x5 -> 3x3, partial windows
    z4 = bn(np_conv(z3, w["4"], 2, 1))  # pool is linear, no beta; convf stride 2
    z5 = bn(relu(z4 + beta["4"]).mean(axis=(1, 2)))
    z6 = bn(z5 @ w["6"])
    logits = (np.asarray(params["gamma"]) if cfg.top_c else 1.0) * (z6 + beta["6"])
    return pre_norm, [z1, z2, z3, z4, z5, z6], logits


def test_clean_pass_matches_numpy_conv_pool_and_batch_norm():
    cfg = tiny_cfg(NONE)
    params = random_params(cfg, 1)
    x = batch(cfg, 2, 6, 1)[0]
    trace = jax.jit(lambda p, x: models.encode(p, cfg, x))(params, x)
    _, zs, logits = np_clean_pass(cfg, params, x)
    z3 = zs[2]
    for layer, ref in enumerate(zs, start=1):
        np.testing.assert_allclose(trace.z[layer], ref, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(trace.h[3], z3, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(trace.logits, logits, rtol=2e-4, atol=2e-4)


def test_batch_norm_is_per_part_over_batch_and_positions():
    cfg = tiny_cfg(FULL)
    params = random_params(cfg, 3)
    xl, _, xu = batch(cfg, 4, 3, 4)
    encode = jax.jit(lambda p, x: models.encode(p, cfg, x, part_sizes=(3, 4, 4)))
    trace = encode(params, np.concatenate([xl, xu, xu]))
    other_xl = batch(cfg, 5, 3, 1)[0]
    other = encode(params, np.concatenate([other_xl, xu, xu]))
    for layer in range(1, cfg.num_layers + 1):
        np.testing.assert_allclose(other.z[layer][3:], trace.z[layer][3:], rtol=1e-5,
                                   atol=1e-5)
        assert not np.allclose(other.z[layer][:3], trace.z[layer][:3], atol=1e-3)
        for part in (slice(0, 3), slice(3, 7)):  # each part: mean 0, var 1 per channel
            z = np.asarray(trace.z[layer][part], np.float64)
            axes = tuple(range(z.ndim - 1))
            np.testing.assert_allclose(z.mean(axes), 0.0, atol=1e-5)
            np.testing.assert_allclose(z.var(axes), 1.0, atol=1e-3)
        np.testing.assert_allclose(trace.stats.mean[layer][1], trace.stats.mean[layer][2],
                                   atol=1e-6)


def test_population_stats_equal_the_batch_statistics_of_the_whole_set():
    cfg = tiny_cfg(FULL)
    params = random_params(cfg, 5)
    x = batch(cfg, 6, 12, 1)[0]
    @jax.jit
    def run(p, x):
        pop = models.population_stats(p, cfg, x)
        return pop, models.encode(p, cfg, x), models.encode(p, cfg, x, bn_stats=pop)

    pop, whole, with_pop = run(params, x)
    pre_norm, _, _ = np_clean_pass(cfg, params, x)
    for layer in range(1, cfg.num_layers + 1):
        assert pop.mean[layer].shape == (TINY_SHAPES[layer][-1],)
        axes = tuple(range(pre_norm[layer - 1].ndim - 1))  # batch and positions
        np.testing.assert_allclose(pop.mean[layer], pre_norm[layer - 1].mean(axes),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(pop.var[layer], pre_norm[layer - 1].var(axes), rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(with_pop.z[layer], whole.z[layer], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(with_pop.logits, whole.logits, rtol=1e-4, atol=1e-4)


def test_cifar_settings_leaky_relu_no_top_gamma_and_whitening_in_evaluation():
    """Conv-Large's options on the TINY net: leaky relu, logits without gamma (top_c off)
    and the dataset's GCN + ZCA applied to the uint8 images by population statistics and
    prediction; against numpy in float64."""
    cfg = tiny_cfg(NONE, activation="leakyrelu", top_c=False)
    params = random_params(cfg, 7)
    assert "gamma" not in params
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, (16, *TINY_INPUT), dtype=np.uint8)
    dim = int(np.prod(TINY_INPUT))
    prep = datasets_base.Preprocessing(
        55.0, (0.1 * rng.standard_normal(dim)).astype(np.float32),
        (np.eye(dim) + 0.05 * rng.standard_normal((dim, dim))).astype(np.float32))
    f64 = functools.partial(np.asarray, dtype=np.float64)
    flat = images.reshape(16, dim).astype(np.float64)
    flat -= flat.mean(1, keepdims=True)
    flat *= 55.0 / np.sqrt(np.sum(flat * flat, 1, keepdims=True))
    x = ((flat - prep.mean) @ f64(prep.whitening)).reshape(images.shape)
    pre_norm, _, logits = np_clean_pass(cfg, params, x)

    pop = eval_lib.population_stats(params, cfg, jnp.asarray(images), jnp.arange(16), prep)
    for layer in range(1, cfg.num_layers + 1):
        axes = tuple(range(pre_norm[layer - 1].ndim - 1))
        np.testing.assert_allclose(pop.mean[layer], pre_norm[layer - 1].mean(axes),
                                   rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(pop.var[layer], pre_norm[layer - 1].var(axes), rtol=1e-3,
                                   atol=1e-4)
    # The population of these 16 rows is their batch: numpy's logits are the prediction's.
    predicted = eval_lib.predict(params, cfg, pop, images, prep)
    np.testing.assert_array_equal(predicted, np.argmax(logits, -1))
    assert len(set(predicted.tolist())) > 1
    # Without the whitening (images / 255) the same model predicts otherwise.
    assert not np.array_equal(eval_lib.predict(params, cfg, pop, images), predicted)


def test_encode_from_a_kept_layer_output_gives_the_full_passs_layers_above_it():
    cfg = tiny_cfg(FULL)
    params = random_params(cfg, 5)
    x = batch(cfg, 6, 12, 1)[0]
    whole = jax.jit(lambda p, x: models.encode(p, cfg, x))(params, x)
    pop = models.BnStats([None, *(m[0] for m in whole.stats.mean[1:])],
                         [None, *(v[0] for v in whole.stats.var[1:])])
    for start in (2, 3):
        above = models.encode(params, cfg, whole.h[start], bn_stats=pop, start=start)
        assert above.z[start] is None and above.stats.mean[start] is None
        for layer in range(start + 1, cfg.num_layers + 1):
            np.testing.assert_allclose(above.z[layer], whole.z[layer], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(above.logits, whole.logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="start 6"):
        models.encode(params, cfg, x, start=6)


@pytest.mark.parametrize("cache_layers", [0, 3, 99])
def test_chunked_population_stats_keeping_layer_outputs_equal_one_batch(monkeypatch,
                                                                        cache_layers):
    """Layer-by-layer statistics over chunks, with a budget that keeps no layer's outputs,
    only those of at most 30 floats per row, or every layer's: the statistics of one batch,
    and each pass starts from the newest layer kept."""
    from ladder_jax import train

    cfg = tiny_cfg(FULL)
    params = random_params(cfg, 7)
    rng = np.random.default_rng(8)
    images = jnp.asarray(rng.integers(0, 256, (90, *TINY_INPUT), dtype=np.uint8))
    rows = jnp.asarray(np.sort(rng.choice(90, 70, replace=False)).astype(np.int32))
    one_batch = train.population_stats(params, cfg, images, rows)

    per_example = 4 * sum(int(np.prod(shape)) for shape in TINY_SHAPES)
    monkeypatch.setattr(train.evaluate, "BATCH_BYTES", 16 * per_example)  # 5 chunks
    monkeypatch.setattr(train.evaluate, "CACHE_BYTES", 4 * 70 * 10 * cache_layers)
    starts = []
    moments = train.evaluate._batch_moments

    def recording(*args, **kwargs):
        starts.append((kwargs["layer"], kwargs["start"]))
        return moments(*args, **kwargs)

    monkeypatch.setattr(train.evaluate, "_batch_moments", recording)
    chunked = train.population_stats(params, cfg, images, rows)
    for layer in range(1, cfg.num_layers + 1):
        np.testing.assert_allclose(chunked.mean[layer], one_batch.mean[layer], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(chunked.var[layer], one_batch.var[layer], rtol=1e-5,
                                   atol=1e-6)
    first_start = {layer: start for layer, start in reversed(starts)}
    # per-row sizes of h[1..5]: 48, 100, 36, 12, 3 floats
    expected = {0: [0] * 6, 3: [0, 0, 0, 0, 0, 4], 99: [0, 0, 1, 2, 3, 4]}[cache_layers]
    assert [first_start[layer] for layer in range(1, 7)] == expected
    assert len(starts) == 6 * 5


def test_noise_is_added_after_the_norm_of_every_layer_pooling_included():
    cfg = tiny_cfg(FULL)
    params = random_params(cfg, 7)
    x = batch(cfg, 8, 5, 1)[0]
    drawn = jax.eval_shape(lambda k: models.draw_noise(k, cfg, 5), jax.random.key(9))
    assert [n.shape for n in drawn] == [(5, *s) for s in TINY_SHAPES]
    noise = numpy_noise(cfg, 5, 9)
    noisy = jax.jit(lambda p, x, n: models.encode(p, cfg, x, noisy=(True,), noise=n))(
        params, x, noise)
    # z~_l - noise_l is the batch norm of zpre~_l: mean 0, var 1 per channel
    for layer in range(1, cfg.num_layers + 1):
        z = np.asarray(noisy.z[layer] - noise[layer], np.float64)
        axes = tuple(range(z.ndim - 1))
        np.testing.assert_allclose(z.mean(axes), 0.0, atol=1e-5)
        np.testing.assert_allclose(z.var(axes), 1.0, atol=1e-3)
    np.testing.assert_allclose(noisy.z[0], x + noise[0], rtol=1e-6)


# ------------------------------------------------------------------- decoder


def test_conv_transposes_are_the_encoder_convs_gradients_when_v_is_w_flipped():
    """The decoder's map-to-map step for a conv layer is the transposed convolution: with
    V = W flipped in space and in/out swapped it is the forward conv's input gradient."""
    cfg = tiny_cfg(FULL)
    params = random_params(cfg, 11)
    layers, shapes = conv_spec.parse(TINY), cfg.layer_shapes
    rng = np.random.default_rng(12)
    for index in (1, 2, 4):  # convv stride 2, convf stride 1, convf stride 2
        h = rng.standard_normal((2, *shapes[index - 1])).astype(np.float32)
        cot = rng.standard_normal((2, *shapes[index])).astype(np.float32)
        w = params["W"][str(index)]
        _, vjp = jax.vjp(lambda h, w=w, i=index: conv._forward(
            params, cfg, layers[i - 1], i, h, shapes[i]), h)
        flipped = dict(params, V={str(index): jnp.swapaxes(w[::-1, ::-1], 2, 3)})
        u = conv._transpose(flipped, cfg, layers[index - 1], index, cot, shapes[index - 1])
        np.testing.assert_allclose(u, vjp(cot)[0], rtol=1e-4, atol=1e-4)


def test_matmul_lowering_gives_the_lax_convolutions_numbers(x64):
    """XLA:CPU computes convolutions (and the decoder's transposes) as im2col matmuls; the
    loss and every gradient equal lax.conv_general_dilated's in float64. The net has a
    strided valid and a strided full conv (patches per tap) and a conv with more taps than
    output positions (patches per position, as Conv-FC's 26 x 26), all decoded."""
    spec = "convv:3:3:2:1-convf:4:2:2:1-maxpool:2:2-convv:3:2:1:1-globalmeanpool:0-fc:3"
    cfg = conv_cfg(spec, input_shape=TINY_INPUT, weights=FULL)
    assert cfg.layer_shapes == [(9, 9, 2), (4, 4, 3), (3, 3, 4), (2, 2, 4), (1, 1, 3), (3,),
                                (3,)]
    params = random_params(cfg, 31, dtype=np.float64)
    xl, y, xu = batch(cfg, 32)
    xl, xu = np.float64(xl), np.float64(xu)
    noise = numpy_noise(cfg, len(xl) + len(xu), 33, np.float64)

    def primitives(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn.primitive.name
            for sub in jax_core.jaxprs_in_params(eqn.params):
                yield from primitives(sub)

    def loss_and_grad(lowering):
        lowered = dataclasses.replace(cfg, conv_lowering=lowering)

        def f(p):
            return losses.ladder_loss(p, lowered, xl, y, xu, None, noise=noise)[0]

        used = set(primitives(jax.make_jaxpr(f)(params).jaxpr))
        return jax.jit(jax.value_and_grad(f))(params), used

    (lax_loss, lax_grad), lax_ops = loss_and_grad("lax")
    (mm_loss, mm_grad), mm_ops = loss_and_grad("matmul")
    assert "conv_general_dilated" in lax_ops and "conv_general_dilated" not in mm_ops
    np.testing.assert_allclose(mm_loss, lax_loss, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(mm_grad), jax.tree.leaves(lax_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_unpooling_repeats_each_pooled_value_over_its_window():
    layers, shapes = conv_spec.parse(TINY), TINY_SHAPES
    zhat = jnp.arange(2 * 3 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 3, 4)
    u = conv._transpose({}, tiny_cfg(), layers[2], 3, zhat, shapes[2])
    expected = np.repeat(np.repeat(np.asarray(zhat), 2, axis=1), 2, axis=2)[:, :5, :5]
    np.testing.assert_array_equal(u, expected)
    vector = jnp.arange(6.0).reshape(2, 3)
    u = conv._transpose({}, tiny_cfg(), layers[4], 5, vector, shapes[4])
    np.testing.assert_array_equal(u, np.broadcast_to(vector[:, None, None, :], (2, 2, 2, 3)))


def test_loss_gradient_matches_finite_differences(x64):
    """The full decoder (every layer type's transpose, the top's Gamma step included)."""
    weights = FULL
    cfg = tiny_cfg(weights)
    params = random_params(cfg, 15, dtype=np.float64)
    assert sorted(params["g"], key=int) == [str(i) for i in range(cfg.lowest_decoded_layer, 7)]
    xl, y, xu = batch(cfg, 16, 5, 5)
    xl, xu = np.float64(xl), np.float64(xu)
    noise = numpy_noise(cfg, len(xl) + len(xu), 17, np.float64)  # the same in every call
    flat, unravel = ravel_pytree(params)
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda f: losses.ladder_loss(unravel(f), cfg, xl, y, xu, None, noise=noise),
        has_aux=True))
    (value, metrics), grad = value_and_grad(flat)
    assert value.dtype == jnp.float64
    decoded = [float(metrics[f"denoise_cost_{i}"]) > 0 for i in range(7)]
    assert decoded == [w > 0 for w in weights]
    gradient_check.assert_gradient_matches_finite_differences(
        lambda f: value_and_grad(f)[0][0], flat, grad)


def test_gamma_decoder_is_the_top_combinator_on_the_corrupted_softmax():
    cfg = tiny_cfg(GAMMA)
    params = random_params(cfg, 21)
    z_top = jax.random.normal(jax.random.key(1), (5, 3))
    h_top = jax.nn.softmax(jax.random.normal(jax.random.key(2), (5, 3)))
    mean, var = jnp.array([0.1, -0.2, 0.3]), jnp.array([2.0, 0.5, 1.0])
    stats = models.BnStats([None] + [mean] * 6, [None] + [var] * 6)
    estimates = models.decode(params, cfg, [None] * 6 + [z_top], h_top, stats)
    assert estimates[:6] == [None] * 6
    u = (h_top - h_top.mean(0)) / jnp.sqrt(h_top.var(0) + cfg.bn_eps)
    p = params["g"]["6"]
    m = p["a1"] * jax.nn.sigmoid(p["a2"] * u + p["a3"]) + p["a4"] * u + p["a5"]
    v = p["a6"] * jax.nn.sigmoid(p["a7"] * u + p["a8"]) + p["a9"] * u + p["a10"]
    zhat = (z_top - m) * v + m
    np.testing.assert_allclose(estimates[6], (zhat - mean) / jnp.sqrt(var + cfg.bn_eps),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- FLOPs


def traced_flops(cfg, n_labeled, n_unlabeled) -> tuple[int, int]:
    """(FLOPs, number of ops) of the conv_general_dilated and dot_general equations of the
    traced loss gradient, sub-jaxprs included."""
    params = jax.eval_shape(functools.partial(models.init, cfg=cfg), jax.random.key(0))
    shape = tuple(cfg.input_shape)
    xl = jax.ShapeDtypeStruct((n_labeled, *shape), jnp.float32)
    xu = (jax.ShapeDtypeStruct((n_unlabeled, *shape), jnp.float32)
          if cfg.lowest_decoded_layer is not None else None)
    y = jax.ShapeDtypeStruct((n_labeled,), jnp.int32)
    grad = jax.grad(lambda p, xl, y, xu: losses.ladder_loss(p, cfg, xl, y, xu,
                                                            jax.random.key(0))[0])
    jaxpr = jax.make_jaxpr(grad)(params, xl, y, xu).jaxpr

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                yield eqn
            for sub in jax_core.jaxprs_in_params(eqn.params):
                yield from walk(sub)

    eqns = list(walk(jaxpr))
    return sum(contractions.contraction_flops(e) for e in eqns), len(eqns)


@pytest.mark.parametrize("cfg,ops_count", [
    (tiny_cfg(FULL), 3 * 4 - 1 + 3 * 4),  # 4 encoder convs/dots, their 4 transposes (V)
    (tiny_cfg(GAMMA), 3 * 4 - 1),
    (tiny_cfg(NONE), 3 * 4 - 1),
    (conv_cfg(CONV_SMALL, weights=(0.0,) * 9 + (1.0,)), 3 * 6 - 1),
    (conv_cfg(CONV_FC, weights=(1000.0, 10.0) + (0.1,) * 6), 3 * 6 + 3 * 6 - 1),
])
def test_step_flops_counts_the_traced_steps_convolutions_and_matmuls(cfg, ops_count):
    # lax convolutions on every platform: their padding is explicit in the equations the
    # FLOPs are counted from (test_matmul_lowering_... checks both lowerings' numbers agree)
    cfg = dataclasses.replace(cfg, conv_lowering="lax")
    flops, count = traced_flops(cfg, 4, 6)
    assert models.step_flops(cfg, 4, 6) == flops
    assert count == ops_count


def test_bfloat16_applies_to_fc_matmuls_and_leaves_convolutions_float32():
    cfg = tiny_cfg(FULL, matmul_dtype="bfloat16", conv_lowering="lax")
    params = random_params(cfg, 23)
    xl, y, xu = batch(cfg, 24)
    grad = jax.grad(lambda p: losses.ladder_loss(p, cfg, xl, y, xu, jax.random.key(0))[0])
    eqns = jax.make_jaxpr(grad)(params).jaxpr.eqns

    def walk(eqns):
        for eqn in eqns:
            yield eqn
            for sub in jax_core.jaxprs_in_params(eqn.params):
                yield from walk(sub.eqns)

    dtypes = {name: {v.aval.dtype for e in walk(eqns) if e.primitive.name == name
                     for v in e.invars} for name in ("dot_general", "conv_general_dilated")}
    assert dtypes == {"dot_general": {jnp.dtype(jnp.bfloat16)},
                      "conv_general_dilated": {jnp.dtype(jnp.float32)}}


# ------------------------------------------------------------------- presets and training


@pytest.mark.parametrize("name,dataset,layers,decoded", [
    ("conv_small_gamma_100", "mnist", 9, [9]),
    ("conv_small_baseline_100", "mnist", 9, []),
    ("conv_fc_100", "mnist", 7, list(range(8))),
    ("conv_large_gamma_4000", "cifar10", 12, [12]),
    ("conv_large_baseline_4000", "cifar10", 12, []),
])
def test_conv_presets_build(name, dataset, layers, decoded):
    train_cfg = config.preset(name)
    cfg = train_cfg.model
    assert cfg.family == "conv" and train_cfg.dataset == dataset
    assert cfg.num_layers == layers and cfg.num_classes == 10
    assert len(cfg.denoise_weights) == len(cfg.noise_std) == layers + 1
    params = jax.eval_shape(functools.partial(models.init, cfg=cfg), jax.random.key(0))
    assert sorted(params["g"], key=int) == [str(i) for i in decoded]
    assert train_cfg.uses_unlabeled == bool(decoded)
    assert ("gamma" in params) == cfg.top_c
    assert models.step_flops(cfg, train_cfg.batch_size, train_cfg.unlabeled_batch_size) > 0


def test_conv_small_gamma_loss_decreases_over_a_few_adam_steps(mnist):
    images = mnist.train_images[:24].reshape(24, 28, 28, 1).astype(np.float32) / 255.0
    labels = mnist.train_labels[:8]
    cfg = conv_cfg(CONV_SMALL, weights=(0.0,) * 9 + (1.0,))
    params = random_params(cfg, 0, scale=0.0)  # init's values; W, V of the authors' variance
    optimizer = optax.adam(0.002)
    noise = numpy_noise(cfg, 24, 1)  # one corruption for every step

    @jax.jit
    def step(params, state, xl, y, xu, noise):
        (loss, _), grad = jax.value_and_grad(losses.ladder_loss, has_aux=True)(
            params, cfg, xl, y, xu, None, noise=noise)
        updates, state = optimizer.update(grad, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = optimizer.init(params)
    history = []
    for _ in range(6):
        params, state, loss = step(params, state, images[:8], labels, images[8:], noise)
        history.append(float(loss))
    assert np.all(np.isfinite(history))
    assert np.mean(history[-3:]) < 0.8 * np.mean(history[:2]), history
