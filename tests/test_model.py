"""Tests for the ladder network: encoder trace, per-part batch norm, combinators, decoder
normaliser, costs, gradients, population statistics, presets' decoders and parameter counts.

Reference values come from independent float64 numpy re-implementations of LADDER_SPEC.md,
never from hard-coded results. Everything but the `slow` test uses tiny networks.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time

import gradient_check  # tests/ is on sys.path under pytest
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core
from jax.flatten_util import ravel_pytree

from ladder_jax import combinators, config, datasets, losses, models, train
from ladder_jax.config import ModelConfig
from ladder_jax.models import mlp, ops
from ladder_jax.train import job as job_lib

SMALL = (20, 16, 12, 10)
NL, NU = 4, 6  # labeled and unlabeled rows of the tiny ladder batches
PARTS = (NL, NU, NU)

# Compiled once per (config, part layout): the tests below share shapes so that the whole
# file compiles only a couple of dozen small programs.
encode_jit = jax.jit(models.encode, static_argnames=("cfg", "part_sizes", "noisy"))
decode_jit = jax.jit(models.decode, static_argnames=("cfg",))
loss_jit = jax.jit(losses.ladder_loss, static_argnames=("cfg",))


# ------------------------------------------------------------------------------ helpers


def small_cfg(widths=SMALL, weights=None, noise=0.3, combinator="gauss", bn_eps=0.05,
              amlp_hidden=4) -> ModelConfig:
    """A tiny ladder. The large bn_eps makes sqrt(var + eps) and sqrt(var) distinguishable."""
    weights = (1.0, 0.5, 0.3, 0.2)[:len(widths)] if weights is None else weights
    return ModelConfig(layer_sizes=widths, denoise_weights=weights, noise_std=noise,
                       combinator=combinator, bn_eps=bn_eps, amlp_hidden=amlp_hidden)


CFG = small_cfg()


def random_params(cfg: ModelConfig, seed: int, scale: float = 0.5, dtype=jnp.float32):
    """Parameters with models.init's structure and shapes (via eval_shape, nothing compiled):
    W and V ~ N(0, 1) / sqrt(fan_in) as in the spec; beta, gamma - 1 and every combinator
    parameter ~ N(0, scale^2), so that no term of the model is trivially zero."""
    shapes = jax.eval_shape(functools.partial(models.init, cfg=cfg), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        names = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        if names[0] in ("W", "V"):
            value = rng.standard_normal(s.shape) / np.sqrt(s.shape[0])
        else:
            value = scale * rng.standard_normal(s.shape) + (1.0 if names[0] == "gamma" else 0.0)
        return jnp.asarray(value, dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def uniform(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    return rng.uniform(0.0, 1.0, (rows, cols)).astype(np.float32)


def f64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def np_bn(x: np.ndarray, eps: float):
    mean = x.mean(axis=0)
    var = np.square(x - mean).mean(axis=0)
    return (x - mean) / np.sqrt(var + eps), mean, var


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_log_softmax(a):
    a = a - a.max(axis=-1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=-1, keepdims=True))


def np_clean_encode(params, x, eps, pop_stats=None, leak=0.0) -> dict:
    """The spec's clean encoder in float64 numpy, one batch. With pop_stats=(means, vars)
    (lists indexed by layer) those replace the batch statistics; ``leak`` is the negative
    slope of the hidden layers' activation (0: ReLU)."""
    weights = [f64(w) for w in params["W"]]
    betas = [f64(b) for b in params["beta"]]
    gamma = f64(params["gamma"])
    num_layers = len(weights)
    h = f64(x)
    out = {"z": [h], "h": [h], "zpre": [None], "mean": [None], "var": [None]}
    for layer in range(1, num_layers + 1):
        zpre = h @ weights[layer - 1]
        if pop_stats is None:
            z, mean, var = np_bn(zpre, eps)
        else:
            mean, var = f64(pop_stats[0][layer]), f64(pop_stats[1][layer])
            z = (zpre - mean) / np.sqrt(var + eps)
        if layer < num_layers:
            a = z + betas[layer - 1]
            h = np.maximum(a, 0.0) + leak * np.minimum(a, 0.0)
        else:
            out["logits"] = gamma * (z + betas[layer - 1])
            h = np.exp(np_log_softmax(out["logits"]))
        for name, value in (("z", z), ("h", h), ("zpre", zpre), ("mean", mean), ("var", var)):
            out[name].append(value)
    return out


def np_gauss(p, z, u):
    a = {k: f64(v) for k, v in p.items()}
    m = a["a1"] * np_sigmoid(a["a2"] * u + a["a3"]) + a["a4"] * u + a["a5"]
    v = a["a6"] * np_sigmoid(a["a7"] * u + a["a8"]) + a["a9"] * u + a["a10"]
    return (z - m) * v + m


def np_amlp(p, z, u, leak):
    """Per-unit MLP, written unit by unit and example by example."""
    w1, b1, w2, b2 = (f64(p[k]) for k in ("w1", "b1", "w2", "b2"))
    hidden_units, width = b1.shape
    out = np.zeros(z.shape)
    for j in range(width):
        for b in range(z.shape[0]):
            zz, uu = z[b, j], u[b, j]
            total = b2[j]
            for k in range(hidden_units):
                pre = w1[0, k, j] * zz + w1[1, k, j] * uu + w1[2, k, j] * zz * uu + b1[k, j]
                total += w2[k, j] * (pre if pre > 0 else leak * pre)
            out[b, j] = total
    return out


def np_class_cost(logits, labels) -> float:
    lp = np_log_softmax(f64(logits))
    return float(-np.mean(lp[np.arange(len(labels)), np.asarray(labels)]))


def ladder_batch(cfg: ModelConfig, seed: int, n_labeled: int = NL, n_unlabeled: int = NU):
    rng = np.random.default_rng(seed)
    xl = uniform(rng, n_labeled, cfg.layer_sizes[0])
    xu = uniform(rng, n_unlabeled, cfg.layer_sizes[0])
    y = rng.integers(0, cfg.layer_sizes[-1], n_labeled).astype(np.int32)
    return xl, y, xu


def ladder_trace(params, cfg, xl, xu, key) -> models.EncoderTrace:
    """The encoder pass ladder_loss runs: [labeled | unlabeled | unlabeled], the first two
    corrupted, each part normalised with its own statistics."""
    x = jnp.concatenate([jnp.asarray(xl), jnp.asarray(xu), jnp.asarray(xu)], axis=0)
    parts = (len(xl), len(xu), len(xu))
    return encode_jit(params, cfg, x, part_sizes=parts, noisy=(True, True, False), key=key)


def clean_pass(params, cfg, x) -> models.EncoderTrace:
    return encode_jit(params, cfg, jnp.asarray(x), part_sizes=PARTS, noisy=(False,) * 3)


def max_diff(a, b) -> float:
    return float(np.max(np.abs(f64(a) - f64(b))))


# ------------------------------------------------------------------------------ encoder


def test_encode_trace_shapes_small_net():
    params = random_params(CFG, 0)
    xl, _, xu = ladder_batch(CFG, 0)
    rows = sum(PARTS)
    for trace in (ladder_trace(params, CFG, xl, xu, jax.random.key(1)),
                  clean_pass(params, CFG, np.concatenate([xl, xu, xu]))):
        assert len(trace.z) == len(trace.h) == len(SMALL)
        assert trace.stats.mean[0] is None and trace.stats.var[0] is None
        for layer, width in enumerate(SMALL):
            assert trace.z[layer].shape == (rows, width)
            assert trace.h[layer].shape == (rows, width)
            if layer:
                assert trace.stats.mean[layer].shape == (len(PARTS), width)
                assert trace.stats.var[layer].shape == (len(PARTS), width)
        assert trace.logits.shape == (rows, SMALL[-1])
        np.testing.assert_allclose(np.asarray(trace.h[-1]).sum(axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(trace.h[-1], jax.nn.softmax(trace.logits), rtol=1e-5,
                                   atol=1e-7)
    np.testing.assert_array_equal(trace.z[0], np.concatenate([xl, xu, xu]))
    np.testing.assert_array_equal(trace.h[0], trace.z[0])


def test_encode_trace_shapes_paper_widths():
    cfg = ModelConfig()  # 784-1000-500-250-250-250-10
    widths = cfg.layer_sizes
    params = jax.eval_shape(functools.partial(models.init, cfg=cfg), jax.random.key(0))
    parts = (100, 100, 100)

    def run(p, x, key):
        return models.encode(p, cfg, x, part_sizes=parts, noisy=(True, True, False), key=key)

    x = jax.ShapeDtypeStruct((300, widths[0]), jnp.float32)
    trace = jax.eval_shape(run, params, x, jax.random.key(1))
    assert [z.shape for z in trace.z] == [(300, n) for n in widths]
    assert [h.shape for h in trace.h] == [(300, n) for n in widths]
    assert trace.stats.mean[0] is None
    assert [m.shape for m in trace.stats.mean[1:]] == [(3, n) for n in widths[1:]]
    assert [v.shape for v in trace.stats.var[1:]] == [(3, n) for n in widths[1:]]
    assert trace.logits.shape == (300, widths[-1])
    assert all(z.dtype == jnp.float32 for z in trace.z)


def test_encode_rejects_bad_parts_and_missing_key():
    params = random_params(CFG, 0)
    x = jnp.zeros((10, SMALL[0]))
    with pytest.raises(ValueError, match="part_sizes"):
        models.encode(params, CFG, x, part_sizes=(4, 5))
    with pytest.raises(ValueError, match="part_sizes"):
        models.encode(params, CFG, x, part_sizes=(5, 5), noisy=(True,))
    with pytest.raises(ValueError, match="key"):
        models.encode(params, CFG, x, part_sizes=(5, 5), noisy=(True, False))


def test_family_registry_and_layer_shapes():
    assert models.family("mlp") is mlp and models.family(CFG.family) is mlp
    with pytest.raises(config.ConfigError, match="nope"):
        models.family("nope")
    assert CFG.layer_shapes == mlp.layer_shapes(CFG) == [(n,) for n in SMALL]
    assert (CFG.num_layers, CFG.num_classes) == (len(SMALL) - 1, SMALL[-1])
    assert [models.layer_size(CFG, layer) for layer in range(len(SMALL))] == list(SMALL)
    params = random_params(CFG, 0)
    assert models.count_params(params)["total"] == sum(
        a.size for a in jax.tree_util.tree_leaves(params))


def test_dense_encoder_flattens_image_batches():
    """Dataset batches arrive as [B, H, W, C]: the dense family flattens them in HWC order."""
    cfg = small_cfg(widths=(12, 8, 10), weights=(1.0, 0.5, 0.2))
    params = random_params(cfg, 0)
    x = uniform(np.random.default_rng(0), 5, 12)
    flat = encode_jit(params, cfg, jnp.asarray(x))
    images = encode_jit(params, cfg, jnp.asarray(x.reshape(5, 2, 3, 2)))
    np.testing.assert_array_equal(images.z[0], x)
    for a, b in zip(flat.z + flat.h + [flat.logits], images.z + images.h + [images.logits]):
        np.testing.assert_array_equal(a, b)


def test_leakyrelu_activation_matches_numpy():
    cfg = dataclasses.replace(CFG, activation="leakyrelu")
    params = random_params(cfg, 4)
    xl, _, xu = ladder_batch(cfg, 4)
    x = np.concatenate([xl, xu, xu])
    leaky, relu = clean_pass(params, cfg, x), clean_pass(params, CFG, x)
    for rows, part in ((slice(0, NL), xl), (slice(NL + NU, None), xu)):
        ref = np_clean_encode(params, part, cfg.bn_eps, leak=ops.LEAKY_SLOPE)
        for layer in range(1, len(SMALL)):
            np.testing.assert_allclose(leaky.z[layer][rows], ref["z"][layer], rtol=1e-4,
                                       atol=1e-5)
            np.testing.assert_allclose(leaky.h[layer][rows], ref["h"][layer], rtol=1e-4,
                                       atol=1e-5)
        np.testing.assert_allclose(leaky.logits[rows], ref["logits"], rtol=1e-4, atol=1e-5)
    assert ops.LEAKY_SLOPE == 0.1  # the authors' slope
    assert float(jnp.min(leaky.h[1])) < 0.0 <= float(jnp.min(relu.h[1]))
    assert max_diff(leaky.logits, relu.logits) > 1e-3


def test_zero_noise_corrupted_pass_equals_clean():
    params = random_params(CFG, 1)
    xl, _, xu = ladder_batch(CFG, 1)
    key = jax.random.key(3)
    clean = clean_pass(params, CFG, np.concatenate([xl, xu, xu]))

    def corrupted(noise):
        return ladder_trace(params, dataclasses.replace(CFG, noise_std=noise), xl, xu, key)

    quiet = corrupted(0.0)
    for layer in range(len(SMALL)):
        np.testing.assert_allclose(quiet.z[layer], clean.z[layer], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(quiet.h[layer], clean.h[layer], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(quiet.logits, clean.logits, rtol=1e-6, atol=1e-6)

    # The same comparison sees noise: with s = 0.3 the corrupted rows differ at every layer,
    noisy_rows = slice(0, NL + NU)
    noisy = corrupted(0.3)
    for layer in range(len(SMALL)):
        assert max_diff(noisy.z[layer][noisy_rows], clean.z[layer][noisy_rows]) > 1e-2
    # and noise on layer 2 alone leaves layers 0 and 1 clean and changes layers 2 and 3.
    only_2 = corrupted((0.0, 0.0, 0.3, 0.0))
    for layer in (0, 1):
        np.testing.assert_allclose(only_2.z[layer], clean.z[layer], rtol=1e-6, atol=1e-6)
    for layer in (2, 3):
        assert max_diff(only_2.z[layer][noisy_rows], clean.z[layer][noisy_rows]) > 1e-2


def test_drawn_noise_gives_the_same_numbers_as_the_key():
    """The trainer draws each step's noise ahead (models.draw_noise) instead of passing the key:
    the same draws, so the same loss (up to XLA's float rounding of the fused sums), for the
    ladder and for the baseline."""
    params = random_params(CFG, 2)
    xl, y, xu = ladder_batch(CFG, 2)
    key = jax.random.key(5)
    noise = models.draw_noise(key, CFG, NL + NU)
    assert [n.shape for n in noise] == [(NL + NU, w) for w in SMALL]
    np.testing.assert_allclose(loss_jit(params, CFG, xl, y, xu, None, noise=noise)[0],
                               loss_jit(params, CFG, xl, y, xu, key)[0], rtol=1e-6)
    base = models.draw_noise(key, CFG, NL)
    by_key = loss_jit(params, CFG, xl, y, None, key)[0]
    np.testing.assert_allclose(loss_jit(params, CFG, xl, y, None, None, noise=base)[0], by_key,
                               rtol=1e-6)
    # Layers without noise draw nothing; other noise changes the loss.
    assert models.draw_noise(key, dataclasses.replace(CFG, noise_std=(0.0, 0.3, 0.0, 0.3)),
                            NL)[0::2] == [None, None]
    other = models.draw_noise(jax.random.key(6), CFG, NL)
    assert abs(by_key - loss_jit(params, CFG, xl, y, None, None, noise=other)[0]) > 1e-3


def test_batch_statistics_are_per_part():
    params = random_params(CFG, 3)
    xl, _, xu = ladder_batch(CFG, 3)
    xu_changed = xu.copy()
    xu_changed[2] = uniform(np.random.default_rng(33), 1, SMALL[0])[0]
    key = jax.random.key(5)
    before = ladder_trace(params, CFG, xl, xu, key)
    after = ladder_trace(params, CFG, xl, xu_changed, key)
    lab, noisy_u, clean_u = slice(0, NL), slice(NL, NL + NU), slice(NL + NU, None)
    for layer in range(1, len(SMALL)):
        np.testing.assert_allclose(after.z[layer][lab], before.z[layer][lab],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after.stats.mean[layer][0], before.stats.mean[layer][0],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after.stats.var[layer][0], before.stats.var[layer][0],
                                   rtol=1e-5, atol=1e-6)
        for rows, part in ((noisy_u, 1), (clean_u, 2)):
            diff = np.abs(f64(after.z[layer][rows]) - f64(before.z[layer][rows]))
            assert diff.max() > 1e-3
            # the part's statistics moved, so its unchanged examples' z moved too
            assert np.delete(diff, 2, axis=0).max() > 1e-4
            assert max_diff(after.stats.mean[layer][part], before.stats.mean[layer][part]) \
                > 1e-4

    # By hand: each part of a clean pass is normalised with its own statistics at every
    # layer, and normalising the batch jointly would give other values.
    x = np.concatenate([xl, xu, xu])
    clean = clean_pass(params, CFG, x)
    own_l, own_u = np_clean_encode(params, xl, CFG.bn_eps), np_clean_encode(params, xu, CFG.bn_eps)
    joint = np_clean_encode(params, x, CFG.bn_eps)
    for layer in range(1, len(SMALL)):
        np.testing.assert_allclose(clean.z[layer][lab], own_l["z"][layer], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(clean.z[layer][clean_u], own_u["z"][layer], rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(before.z[layer][clean_u], own_u["z"][layer], rtol=1e-4,
                                   atol=1e-5)
        assert max_diff(joint["z"][layer][lab], own_l["z"][layer]) > 1e-2


def reference_batch_normalize(x, part_sizes, eps):
    """Per-part batch norm written plainly, differentiated by JAX's autodiff."""
    outs, means, variances, start = [], [], [], 0
    for size in part_sizes:
        part = x[start:start + size]
        start += size
        mean = jnp.mean(part, axis=0)
        var = jnp.mean(jnp.square(part - mean), axis=0)
        outs.append((part - mean) / jnp.sqrt(var + eps))
        means.append(mean)
        variances.append(var)
    return jnp.concatenate(outs), jnp.stack(means), jnp.stack(variances)


@pytest.mark.parametrize("part_sizes", [(7,), (5, 5, 5), (4, 6, 6)])
def test_batch_normalize_values_and_written_out_gradient_match_autodiff(x64, part_sizes):
    rng = np.random.default_rng(sum(part_sizes))
    x = jnp.asarray(rng.standard_normal((sum(part_sizes), 3)) * 2.0 + 0.5)
    eps = 1e-3
    out, vjp = jax.vjp(lambda v: ops.batch_normalize(v, part_sizes, eps), x)
    ref_out, ref_vjp = jax.vjp(lambda v: reference_batch_normalize(v, part_sizes, eps), x)
    for got, want in zip(out, ref_out):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # every output gets a cotangent: the decoder differentiates the clean mean and var too
    cotangents = tuple(jnp.asarray(rng.standard_normal(o.shape)) for o in out)
    (dx,), (ref_dx,) = vjp(cotangents), ref_vjp(cotangents)
    assert np.abs(ref_dx).max() > 0.1
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------ combinators


def test_gauss_combinator_matches_numpy_and_init_is_zero():
    rng = np.random.default_rng(4)
    width = 7
    z = rng.standard_normal((5, width)).astype(np.float32)
    u = rng.standard_normal((5, width)).astype(np.float32)
    comb = combinators.get("gauss")
    apply = jax.jit(comb.apply)
    p = {f"a{i}": jnp.asarray(rng.standard_normal(width), jnp.float32) for i in range(1, 11)}
    got = apply(p, z, u)
    assert got.shape == (5, width)
    np.testing.assert_allclose(got, np_gauss(p, f64(z), f64(u)), rtol=1e-5, atol=1e-5)

    init = comb.init(jax.random.key(0), width)
    assert sorted(init) == sorted(f"a{i}" for i in range(1, 11))
    for name, value in init.items():
        assert value.shape == (width,)
        np.testing.assert_array_equal(value, 1.0 if name in ("a2", "a7") else 0.0)
    np.testing.assert_array_equal(apply(init, z, u), 0.0)


def test_linear_combinator():
    rng = np.random.default_rng(5)
    width = 7
    z = rng.standard_normal((5, width)).astype(np.float32)
    u = rng.standard_normal((5, width)).astype(np.float32)
    comb = combinators.get("linear")
    apply = jax.jit(comb.apply)
    init = comb.init(jax.random.key(0), width)
    assert {k: v.shape for k, v in init.items()} == {"w_z": (width,), "w_u": (width,),
                                                    "b": (width,)}
    np.testing.assert_array_equal(apply(init, z, u), 0.0)
    p = {k: jnp.asarray(rng.standard_normal(width), jnp.float32) for k in init}
    got = apply(p, z, u)
    assert got.shape == (5, width)
    np.testing.assert_allclose(got, f64(p["w_z"]) * z + f64(p["w_u"]) * u + f64(p["b"]),
                               rtol=1e-5, atol=1e-5)


def test_amlp_combinator_matches_per_unit_numpy_mlp():
    rng = np.random.default_rng(6)
    width, hidden = 7, 3
    z = rng.standard_normal((5, width)).astype(np.float32)
    u = rng.standard_normal((5, width)).astype(np.float32)
    comb = combinators.get("amlp", amlp_hidden=hidden)
    apply = jax.jit(comb.apply)
    init = comb.init(jax.random.key(0), width)
    assert {k: v.shape for k, v in init.items()} == {
        "w1": (3, hidden, width), "b1": (hidden, width), "w2": (hidden, width), "b2": (width,)}
    assert float(jnp.std(init["w1"])) > 0.1  # random hidden weights, zero output weights
    zhat0 = apply(init, z, u)
    assert zhat0.shape == (5, width)
    np.testing.assert_array_equal(zhat0, 0.0)

    p = {k: jnp.asarray(rng.standard_normal(v.shape), jnp.float32) for k, v in init.items()}
    np.testing.assert_allclose(apply(p, z, u), np_amlp(p, f64(z), f64(u), 0.1),
                               rtol=1e-5, atol=1e-5)

    # the config's amlp_hidden reaches models.init
    cfg = small_cfg(combinator="amlp", amlp_hidden=hidden)
    shapes = jax.eval_shape(functools.partial(models.init, cfg=cfg), jax.random.key(0))
    for layer, n in enumerate(SMALL):
        assert shapes["g"][str(layer)]["w1"].shape == (3, hidden, n)


def test_unknown_combinator_name():
    with pytest.raises(ValueError, match="nope"):
        combinators.get("nope")


# ------------------------------------------------------------------------------ decoder


def np_decode(params, cfg, z_noisy, h_top_noisy, mean, var, divide):
    """The spec's decoder (gauss) in numpy; ``divide(zhat, mean, var)`` normalises."""
    num_layers = cfg.num_layers
    est, zhat = [None] * (num_layers + 1), None
    for layer in range(num_layers, cfg.lowest_decoded_layer - 1, -1):
        u = h_top_noisy if layer == num_layers else zhat @ f64(params["V"][str(layer + 1)])
        u, _, _ = np_bn(u, cfg.bn_eps)
        zhat = np_gauss(params["g"][str(layer)], z_noisy[layer], u)
        est[layer] = zhat if layer == 0 else divide(zhat, mean[layer], var[layer])
    return est


def test_decoder_normalises_with_sqrt_var_eps_of_clean_unlabeled_preactivations():
    params = random_params(CFG, 7)
    xl, y, xu = ladder_batch(CFG, 7)
    key = jax.random.key(11)
    trace = ladder_trace(params, CFG, xl, xu, key)
    noisy_u = slice(NL, NL + NU)

    ref = np_clean_encode(params, xu, CFG.bn_eps)  # the clean pass on the unlabeled rows
    for layer in range(1, CFG.num_layers + 1):
        np.testing.assert_allclose(trace.stats.mean[layer][2], ref["mean"][layer],
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(trace.stats.var[layer][2], ref["var"][layer],
                                   rtol=1e-4, atol=1e-5)
        assert np.min(np.abs(np.sqrt(ref["var"][layer] + CFG.bn_eps) - ref["var"][layer])) \
            > 1e-3  # the wrong normaliser below is really different

    clean_stats = models.BnStats(
        [None] + [jnp.asarray(m, jnp.float32) for m in ref["mean"][1:]],
        [None] + [jnp.asarray(v, jnp.float32) for v in ref["var"][1:]])
    z_noisy = [z[noisy_u] for z in trace.z]
    got = decode_jit(params, CFG, z_noisy, trace.h[-1][noisy_u], clean_stats)

    args = (params, CFG, [f64(z) for z in z_noisy], f64(trace.h[-1][noisy_u]), ref["mean"],
            ref["var"])
    right = np_decode(*args, divide=lambda zh, m, v: (zh - m) / np.sqrt(v + CFG.bn_eps))
    by_var = np_decode(*args, divide=lambda zh, m, v: (zh - m) / v)
    no_eps = np_decode(*args, divide=lambda zh, m, v: (zh - m) / np.sqrt(v))
    for layer in range(CFG.num_layers + 1):
        assert got[layer].shape == (NU, CFG.layer_sizes[layer])
        np.testing.assert_allclose(got[layer], right[layer], rtol=1e-4, atol=1e-4)
        if layer:
            assert max_diff(by_var[layer], got[layer]) > 1e-2
            assert max_diff(no_eps[layer], got[layer]) > 1e-3

    # ladder_loss: lambda_l * mean over unlabeled rows of ||z_l - zhat_bn_l||^2 / n_l
    _, metrics = loss_jit(params, CFG, xl, y, xu, key)
    expected_total = 0.0
    for layer, (weight, width) in enumerate(zip(CFG.denoise_weights, CFG.layer_sizes)):
        cost = weight * np.mean(np.sum(np.square(ref["z"][layer] - right[layer]), -1)) / width
        assert cost > 0
        expected_total += cost
        np.testing.assert_allclose(metrics[f"denoise_cost_{layer}"], cost, rtol=1e-4)
    np.testing.assert_allclose(metrics["denoise_cost"], expected_total, rtol=1e-4)
    np.testing.assert_allclose(metrics["loss"], metrics["class_cost"] + expected_total,
                               rtol=1e-4)


def test_gamma_model_denoises_the_top_only():
    cfg = dataclasses.replace(CFG, denoise_weights=(0.0, 0.0, 0.0, 0.5))
    params = random_params(cfg, 8)
    assert sorted(params["g"]) == ["3"] and params["V"] == {}
    xl, y, xu = ladder_batch(cfg, 8)
    _, metrics = loss_jit(params, cfg, xl, y, xu, jax.random.key(0))
    assert [float(metrics[f"denoise_cost_{layer}"]) for layer in range(3)] == [0.0, 0.0, 0.0]
    assert float(metrics["denoise_cost_3"]) > 0.0
    np.testing.assert_allclose(metrics["denoise_cost"], metrics["denoise_cost_3"])


# ------------------------------------------------------------------------------ costs


def test_class_cost_uses_corrupted_output_of_labeled_rows_only():
    params = random_params(CFG, 9)
    xl, y, xu = ladder_batch(CFG, 9)
    key = jax.random.key(13)
    _, metrics = loss_jit(params, CFG, xl, y, xu, key)
    trace = ladder_trace(params, CFG, xl, xu, key)
    corrupted = np_class_cost(trace.logits[:NL], y)
    clean = np_class_cost(np_clean_encode(params, xl, CFG.bn_eps)["logits"], y)
    np.testing.assert_allclose(metrics["class_cost"], corrupted, rtol=1e-5)
    assert abs(float(metrics["class_cost"]) - clean) > 1e-2
    err = np.mean(np.argmax(np.asarray(trace.logits[:NL]), -1) != y)
    np.testing.assert_allclose(metrics["train_error"], err)

    # other unlabeled data: the class cost does not move (labeled rows only, own statistics)
    _, other = loss_jit(params, CFG, xl, y, ladder_batch(CFG, 99)[2], key)
    np.testing.assert_allclose(other["class_cost"], metrics["class_cost"], rtol=1e-6)
    assert abs(float(other["denoise_cost"]) - float(metrics["denoise_cost"])) > 1e-4

    # without noise the same cost is the clean one (so the comparison above is meaningful)
    _, quiet = loss_jit(params, dataclasses.replace(CFG, noise_std=0.0), xl, y, xu, key)
    np.testing.assert_allclose(quiet["class_cost"], clean, rtol=1e-4)


def test_baseline_class_cost_uses_corrupted_output():
    cfg = dataclasses.replace(CFG, denoise_weights=0.0, noise_std=0.5)
    params = random_params(cfg, 10)
    assert params["g"] == {} and params["V"] == {}
    xl, y, _ = ladder_batch(cfg, 10)
    key = jax.random.key(14)
    total, metrics = loss_jit(params, cfg, xl, y, None, key)
    trace = encode_jit(params, cfg, jnp.asarray(xl), part_sizes=(NL,), noisy=(True,), key=key)
    np.testing.assert_allclose(total, np_class_cost(trace.logits, y), rtol=1e-5)
    clean = np_class_cost(np_clean_encode(params, xl, cfg.bn_eps)["logits"], y)
    assert abs(float(total) - clean) > 1e-2
    assert float(metrics["denoise_cost"]) == 0.0


# ------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("weights,combinator", [
    ((1.0, 0.5, 0.3, 0.2), "gauss"),
    pytest.param((1.0, 0.5, 0.3, 0.2), "amlp", marks=pytest.mark.slow),  # ~20 s to compile
    ((0.0, 0.0, 0.0, 0.0), "gauss"),  # supervised baseline: no unlabeled batch
])
def test_loss_gradient_matches_finite_differences(x64, weights, combinator):
    cfg = small_cfg(widths=(6, 5, 4, 3), weights=weights, combinator=combinator,
                    amlp_hidden=2, bn_eps=1e-10)
    params = random_params(cfg, 15, scale=0.3, dtype=jnp.float64)
    xl, y, xu = ladder_batch(cfg, 15, 5, 6)
    xl, xu = jnp.asarray(xl, jnp.float64), jnp.asarray(xu, jnp.float64)
    if cfg.lowest_decoded_layer is None:
        xu = None
    key = jax.random.key(17)  # the same noise in every evaluation
    flat, unravel = ravel_pytree(params)
    assert flat.dtype == jnp.float64

    # one compiled function serves both: its value for the differences, its gradient
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda f: losses.ladder_loss(unravel(f), cfg, xl, y, xu, key)[0]))
    value, grad = value_and_grad(flat)
    assert value.dtype == jnp.float64
    gradient_check.assert_gradient_matches_finite_differences(
        lambda f: value_and_grad(f)[0], flat, grad)


def test_bfloat16_matmuls_stay_close_to_float32_and_run_every_dot_in_bfloat16():
    cfg = small_cfg(widths=(20, 16, 12, 10), weights=(1.0, 0.5, 0.3, 0.2))
    bf16 = dataclasses.replace(cfg, matmul_dtype="bfloat16")
    params = random_params(cfg, 21)
    xl, y, xu = ladder_batch(cfg, 21)
    rng = np.random.default_rng(23)  # drawn noise: a traced threefry draw costs more compile
    noise = [(std * rng.standard_normal((len(xl) + len(xu), *shape))).astype(np.float32)
             for std, shape in zip(cfg.noise_std, cfg.layer_shapes)]

    def loss_and_grad(c):
        return jax.value_and_grad(
            lambda p: losses.ladder_loss(p, c, xl, y, xu, None, noise=noise)[0])

    (loss32, grad32), (loss16, grad16) = (jax.jit(loss_and_grad(c))(params) for c in (cfg, bf16))
    flat32, flat16 = ravel_pytree(grad32)[0], ravel_pytree(grad16)[0]
    # bfloat16 keeps 8 bits of mantissa: close to float32, but not the same numbers
    assert 0 < abs(float(loss16) - float(loss32)) < 0.02 * abs(float(loss32))
    assert 0 < float(jnp.linalg.norm(flat16 - flat32)) < 0.05 * float(jnp.linalg.norm(flat32))
    # forward and backward: every matmul of the training gradient takes bfloat16 operands
    def dot_generals(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                yield eqn
            for sub in jax_core.jaxprs_in_params(eqn.params):
                yield from dot_generals(sub)

    dots = list(dot_generals(jax.make_jaxpr(loss_and_grad(bf16))(params).jaxpr))
    operand_dtypes = {v.aval.dtype for e in dots for v in e.invars}
    num_layers = len(cfg.layer_sizes) - 1
    assert len(dots) >= 3 * num_layers and operand_dtypes == {jnp.dtype(jnp.bfloat16)}


# ------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("name,decoded", [
    ("full_100", range(7)),
    ("bottom_100", range(7)),
    ("gamma_100", range(6, 7)),
    ("baseline_100", range(0)),
    ("baseline_1000", range(0)),
    ("baseline_all", range(0)),
])
def test_preset_decoder_parameters(name, decoded):
    cfg = config.preset(name).model
    widths = cfg.layer_sizes
    params = jax.eval_shape(functools.partial(models.init, cfg=cfg), jax.random.key(0))
    assert sorted(params["g"], key=int) == [str(layer) for layer in decoded]
    assert sorted(params["V"], key=int) == [str(layer) for layer in decoded][1:]
    for layer in decoded:
        for value in params["g"][str(layer)].values():
            assert value.shape == (widths[layer],)
        if str(layer) in params["V"]:
            assert params["V"][str(layer)].shape == (widths[layer], widths[layer - 1])
    assert [w.shape for w in params["W"]] == list(itertools.pairwise(widths))
    assert [b.shape for b in params["beta"]] == [(n,) for n in widths[1:]]
    assert params["gamma"].shape == (widths[-1],)


def test_count_params_of_the_paper_ladder():
    def counts(cfg):
        return models.count_params(
            jax.eval_shape(functools.partial(models.init, cfg=cfg), jax.random.key(0)))

    widths = config.preset("full_100").model.layer_sizes
    enc = sum(a * b for a, b in itertools.pairwise(widths))
    bn = sum(widths[1:]) + widths[-1]  # beta on layers 1..L, gamma on the top
    full = counts(config.preset("full_100").model)
    expected = {"encoder_W": enc, "decoder_V": enc, "combinators": 10 * sum(widths),
                "bn_affine": bn}
    assert full == {**expected, "total": sum(expected.values())}

    gamma = counts(config.preset("gamma_100").model)
    assert (gamma["decoder_V"], gamma["combinators"]) == (0, 10 * widths[-1])
    baseline = counts(config.preset("baseline_100").model)
    assert baseline == {"encoder_W": enc, "decoder_V": 0, "combinators": 0, "bn_affine": bn,
                        "total": enc + bn}
    hidden = 4
    amlp = counts(ModelConfig(combinator="amlp", amlp_hidden=hidden))
    assert amlp["combinators"] == (3 * hidden + hidden + hidden + 1) * sum(widths)


# ------------------------------------------------------------------------------ population


def test_population_stats_match_layer_by_layer_numpy(monkeypatch):
    widths = (784, 24, 16, 10)
    cfg = small_cfg(widths=widths, weights=(0.0,) * 4, bn_eps=1e-3)
    params = random_params(cfg, 20)
    rng = np.random.default_rng(20)
    # uint8 [N, H, W, C] as a dataset holds them; the dense family flattens them (HWC order)
    images = rng.integers(0, 256, (800, 784), dtype=np.uint8).reshape(800, 28, 28, 1)
    rows = np.sort(rng.choice(800, 500, replace=False)).astype(np.int32)
    labels = rng.integers(0, 10, 500).astype(np.int32)
    x = f64(images[rows].reshape(500, 784)) / 255.0

    # by hand: layer l's stats on inputs normalised with the population stats of layer l-1
    weights = [f64(w) for w in params["W"]]
    h, means, variances = x, [None], [None]
    for layer in range(1, len(widths)):
        zpre = h @ weights[layer - 1]
        mean, var = zpre.mean(0), np.square(zpre - zpre.mean(0)).mean(0)
        means.append(mean)
        variances.append(var)
        h = np.maximum((zpre - mean) / np.sqrt(var + cfg.bn_eps)
                       + f64(params["beta"][layer - 1]), 0.0)

    pop_jit = jax.jit(models.population_stats, static_argnames=("cfg",))
    from_model = pop_jit(params, cfg, datasets.preprocess(jnp.asarray(images[rows]), None))
    from_train = train.population_stats(params, cfg, jnp.asarray(images), jnp.asarray(rows))
    # a set too big for one batch goes layer by layer over chunks of rows (here 7 chunks,
    # the last one short): the same statistics
    per_example = 4 * sum(widths)
    monkeypatch.setattr(train.evaluate, "BATCH_BYTES", 75 * per_example)
    assert train.evaluate.chunk_rows(cfg) == 75
    from_chunks = train.population_stats(params, cfg, jnp.asarray(images), jnp.asarray(rows))
    for stats in (from_model, from_train, from_chunks):
        assert stats.mean[0] is None and stats.var[0] is None
        for layer in range(1, len(widths)):
            assert stats.mean[layer].shape == (widths[layer],)
            np.testing.assert_allclose(stats.mean[layer], means[layer], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(stats.var[layer], variances[layer], rtol=1e-4,
                                       atol=1e-6)

    # prediction uses them (not the test batch's statistics)
    predict = jax.jit(models.predict_log_probs, static_argnames=("cfg",))
    ref = np_clean_encode(params, x, cfg.bn_eps, (means, variances))
    log_probs = predict(params, cfg, jnp.asarray(x, jnp.float32), from_train)
    np.testing.assert_allclose(log_probs, np_log_softmax(ref["logits"]), rtol=1e-4, atol=1e-4)
    x_other = x.copy()
    x_other[250:] = f64(rng.integers(0, 256, (250, 784))) / 255.0  # another test batch
    other = predict(params, cfg, jnp.asarray(x_other, jnp.float32), from_train)
    np.testing.assert_allclose(other[:250], log_probs[:250], rtol=1e-5, atol=1e-5)
    own_stats = np_log_softmax(np_clean_encode(params, x_other, cfg.bn_eps)["logits"])
    assert max_diff(own_stats[:250], other[:250]) > 1e-2
    error = train.error_rate(params, cfg, from_train, jnp.asarray(images[rows]),
                             jnp.asarray(labels))  # in chunks of 75 rows
    np.testing.assert_allclose(error, np.mean(np.argmax(ref["logits"], -1) != labels))
    predicted = train.predict(params, cfg, from_train, images[rows])
    np.testing.assert_array_equal(predicted, np.argmax(ref["logits"], -1))


# ------------------------------------------------------------------------------ real data

SLOW_STEPS = 400


@pytest.mark.slow
def test_full_ladder_beats_supervised_baseline_with_100_labels(mnist):
    errors, seconds = {}, {}
    for name in ("full_100", "baseline_100"):
        start = time.time()
        cfg = config.preset(name).replace(seed=0, epochs=2, steps_per_call=100)
        job = train.build_job([cfg], mnist)
        lr = train.learning_rate_schedule(cfg, job.schedule.total_steps)
        assert float(lr(SLOW_STEPS - 1)) == pytest.approx(cfg.lr)  # still constant
        state = job_lib.init_job_state(job)
        for _ in range(SLOW_STEPS // cfg.steps_per_call):
            state, step_losses = job_lib.run_steps(job, state, cfg.steps_per_call)
            assert step_losses.shape == (1, cfg.steps_per_call)
            assert np.all(np.isfinite(step_losses))
        assert int(state.step) == SLOW_STEPS
        _, result = job_lib.evaluate_model(job, 0, job_lib.split(job, state.params)[0])
        errors[name] = result["test_error"]
        seconds[name] = time.time() - start
        print(f"{name}: {SLOW_STEPS} steps, test error {100 * errors[name]:.2f}% "
              f"({seconds[name]:.0f} s)")
    assert errors["full_100"] <= errors["baseline_100"] - 0.03, errors
