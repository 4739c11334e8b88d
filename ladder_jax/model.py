"""The ladder network as pure functions over a parameter pytree: init, encode, decode, predict.

Layers are numbered as in the paper: 0 is the input, L the softmax output. Lists indexed by
layer hold ``None`` where a layer has no such quantity (e.g. no batch mean at the input).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ladder_jax import combinators
from ladder_jax.config import ModelConfig

Params = dict[str, Any]


class BnStats(NamedTuple):
    """Per-layer statistics of the pre-activations zpre_l, l = 1..L (index 0 is None).

    mean[l], var[l]: [n_l] (population) or [num_parts, n_l] (batch statistics per part).
    """

    mean: list[jax.Array | None]
    var: list[jax.Array | None]


class EncoderTrace(NamedTuple):
    """What one encoder pass leaves behind, per layer l = 0..L.

    z[l]: [B, n_l] normalised (and, if corrupted, noisy) pre-activation; z[0] is the input.
    h[l]: [B, n_l] the layer's output; h[L] is the softmax, h[0] = z[0].
    stats: batch statistics of zpre per part ([num_parts, n_l]), or the population ones used.
    logits: [B, n_L] gamma * (z_L + beta_L), whose softmax is h[L].
    """

    z: list[jax.Array]
    h: list[jax.Array]
    stats: BnStats
    logits: jax.Array


def _layer_key(layer: int) -> str:
    return str(layer)


def init(key: jax.Array, cfg: ModelConfig) -> Params:
    """Parameters of the ladder described by ``cfg``.

    Returns {'W': [W_1..W_L] ([n_(l-1), n_l], N(0,1)/sqrt(fan_in)), 'beta': [n_l] zeros per
    layer, 'gamma': [n_L] ones, 'V': {'l': [n_l, n_(l-1)]}, 'g': {'l': combinator params}}.
    The decoder holds only the layers it needs: from L down to the lowest layer with a
    denoising cost (none for the supervised baseline; the top alone for the Gamma-model).
    """
    sizes = cfg.layer_sizes
    num_layers = cfg.num_layers
    enc_key, dec_key, comb_key = jax.random.split(key, 3)
    enc_keys = jax.random.split(enc_key, num_layers)
    params: Params = {
        "W": [
            jax.random.normal(enc_keys[i], (sizes[i], sizes[i + 1])) / jnp.sqrt(sizes[i])
            for i in range(num_layers)
        ],
        "beta": [jnp.zeros((sizes[i + 1],)) for i in range(num_layers)],
        "gamma": jnp.ones((sizes[-1],)),
        "V": {},
        "g": {},
    }
    lowest = cfg.lowest_decoded_layer
    if lowest is None:
        return params
    combinator = combinators.get(cfg.combinator, cfg.amlp_hidden)
    dec_keys = jax.random.split(dec_key, num_layers + 1)
    comb_keys = jax.random.split(comb_key, num_layers + 1)
    for layer in range(lowest, num_layers + 1):
        params["g"][_layer_key(layer)] = combinator.init(comb_keys[layer], sizes[layer])
        if layer > lowest:  # V_l maps the estimate of layer l down to layer l - 1
            fan_in = sizes[layer]
            params["V"][_layer_key(layer)] = (
                jax.random.normal(dec_keys[layer], (fan_in, sizes[layer - 1])) / jnp.sqrt(fan_in)
            )
    return params


def preprocess(images: jax.Array) -> jax.Array:
    """uint8 images [N, ...] -> float32 [N, prod(...)] in [0, 1] (the authors divide by 255)."""
    return images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0


def normalize(x: jax.Array, mean: jax.Array, var: jax.Array, eps: float) -> jax.Array:
    """(x - mean) / sqrt(var + eps), broadcasting over the batch axis."""
    return (x - mean) * jax.lax.rsqrt(var + eps)


def batch_normalize(
    x: jax.Array, part_sizes: Sequence[int], eps: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalises each part of the batch (consecutive rows) with its own statistics.

    Returns (normalised [B, n], mean [num_parts, n], var [num_parts, n]); var is biased.
    Equal parts (the training batch's three) go through as one [parts, rows, n] array.
    """
    num_parts, width = len(part_sizes), x.shape[1]
    if num_parts == 1:
        y, mean, var = _normalize_rows(x, eps)
        return y, mean[None], var[None]
    if len(set(part_sizes)) == 1:
        y, mean, var = _normalize_rows(x.reshape(num_parts, part_sizes[0], width), eps)
        return y.reshape(x.shape), mean, var
    outs, means, variances = [], [], []
    start = 0
    for size in part_sizes:
        y, mean, var = _normalize_rows(x[start:start + size], eps)
        start += size
        outs.append(y)
        means.append(mean)
        variances.append(var)
    return jnp.concatenate(outs, axis=0), jnp.stack(means), jnp.stack(variances)


def _row_statistics(x: jax.Array, eps: float):
    """(normalised x, mean, biased var, 1 / sqrt(var + eps)) over axis -2, keeping it."""
    mean = jnp.mean(x, axis=-2, keepdims=True)
    centred = x - mean
    var = jnp.mean(jnp.square(centred), axis=-2, keepdims=True)
    inv_std = jax.lax.rsqrt(var + eps)
    return centred * inv_std, mean, var, inv_std


# The backward pass is written out: the usual batch-norm gradient in two column reductions,
# where autodiff of the forward pass emits over twice as many operations (BUILD_NOTES.md,
# "Training step", has the measured effect). tests/test_model.py checks it against autodiff.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _normalize_rows(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [..., rows, n] normalised over its rows -> (normalised, mean [..., n], var [..., n])."""
    y, mean, var, _ = _row_statistics(x, eps)
    return y, mean[..., 0, :], var[..., 0, :]


def _normalize_rows_fwd(x, eps):
    y, mean, var, inv_std = _row_statistics(x, eps)
    return (y, mean[..., 0, :], var[..., 0, :]), (y, inv_std)


def _normalize_rows_bwd(eps, residuals, cotangents):
    del eps
    y, inv_std = residuals
    dy, dmean, dvar = cotangents
    rows = y.shape[-2]
    dx = inv_std * (dy - jnp.mean(dy, axis=-2, keepdims=True)
                    - y * jnp.mean(dy * y, axis=-2, keepdims=True))
    # d mean / dx = 1 / rows; d var / dx = 2 (x - mean) / rows, and x - mean = y / inv_std
    dx = dx + (dmean[..., None, :] + 2.0 * dvar[..., None, :] * y / inv_std) / rows
    return (dx,)


_normalize_rows.defvjp(_normalize_rows_fwd, _normalize_rows_bwd)


def matmul(x: jax.Array, w: jax.Array, dtype: str = "float32") -> jax.Array:
    """x @ w in float32; with dtype 'bfloat16' (ModelConfig.matmul_dtype), from bfloat16
    operands accumulated in float32, and so are the two matmuls of its gradient."""
    if dtype == "float32":
        return x @ w
    return _bf16_matmul(x, w)


def _bf16_dot(a: jax.Array, b: jax.Array, dims) -> jax.Array:
    return jax.lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), (dims, ((), ())),
                               preferred_element_type=jnp.float32)


# Written out because autodiff would multiply the float32 cotangent by the bfloat16 operand,
# a mixed-type matmul that runs in float32.
@jax.custom_vjp
def _bf16_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    return _bf16_dot(x, w, ((1,), (0,)))


def _bf16_matmul_fwd(x, w):
    return _bf16_matmul(x, w), (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))


def _bf16_matmul_bwd(residuals, dout):
    x, w = residuals
    return _bf16_dot(dout, w, ((1,), (1,))), _bf16_dot(x, dout, ((0,), (0,)))


_bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def draw_noise(key: jax.Array, cfg: ModelConfig, num_rows: int) -> list[jax.Array | None]:
    """The corruption of one encoder pass over ``num_rows`` noisy rows, per layer l = 0..L:
    noise_std[l] * N(0, 1) of shape [num_rows, n_l], drawn from split(key, L + 1)[l]; None
    where noise_std[l] is 0. Drawing it apart from the pass lets the trainer draw many steps'
    noise in one vectorised call (see train.train_steps)."""
    keys = jax.random.split(key, cfg.num_layers + 1)
    return [
        None if std == 0.0 else std * jax.random.normal(keys[layer], (num_rows, width))
        for layer, (std, width) in enumerate(zip(cfg.noise_std, cfg.layer_sizes))
    ]


def _place_noise(draws: jax.Array | None, num_rows: int, part_sizes: Sequence[int],
                 noisy: Sequence[bool]) -> jax.Array | float:
    """The noise rows ``draws`` [noisy rows, n] put on the noisy parts, zeros on clean ones."""
    if draws is None:
        return 0.0
    if draws.shape[0] == num_rows:
        return draws
    pieces, start = [], 0
    for size, is_noisy in zip(part_sizes, noisy):
        if is_noisy:
            pieces.append(draws[start:start + size])
            start += size
        else:
            pieces.append(jnp.zeros((size, draws.shape[1]), draws.dtype))
    return jnp.concatenate(pieces, axis=0)


def encode(
    params: Params,
    cfg: ModelConfig,
    x: jax.Array,
    *,
    part_sizes: Sequence[int] | None = None,
    noisy: Sequence[bool] | None = None,
    key: jax.Array | None = None,
    noise: Sequence[jax.Array | None] | None = None,
    bn_stats: BnStats | None = None,
) -> EncoderTrace:
    """One encoder pass over ``x`` [B, n_0] (floats in [0, 1]).

    part_sizes: consecutive row blocks batch-normalised separately (default: one part).
    noisy: per part, whether it is corrupted with ``cfg.noise_std`` (default: all clean).
        Clean and corrupted parts share each matmul: the weights are the same.
    key: draws the corruption (draw_noise(key, cfg, noisy rows)); or pass it drawn as ``noise``.
    bn_stats: population statistics; when given, they replace the batch statistics.
    """
    part_sizes = tuple(part_sizes) if part_sizes is not None else (x.shape[0],)
    noisy = tuple(noisy) if noisy is not None else (False,) * len(part_sizes)
    if sum(part_sizes) != x.shape[0] or len(noisy) != len(part_sizes):
        raise ValueError(f"part_sizes {part_sizes} / noisy {noisy} do not fit a batch of "
                         f"{x.shape[0]} rows")
    num_layers = cfg.num_layers
    if not any(noisy):
        noise = [None] * (num_layers + 1)
    elif noise is None:
        if key is None:
            raise ValueError("a corrupted pass needs a PRNG key or its drawn noise")
        noise = draw_noise(key, cfg, sum(s for s, n in zip(part_sizes, noisy) if n))

    def corrupt(layer: int, value: jax.Array) -> jax.Array:
        return value + _place_noise(noise[layer], value.shape[0], part_sizes, noisy)

    h = corrupt(0, x)
    zs, hs = [h], [h]
    means: list[jax.Array | None] = [None]
    variances: list[jax.Array | None] = [None]
    logits = h
    for layer in range(1, num_layers + 1):
        zpre = matmul(h, params["W"][layer - 1], cfg.matmul_dtype)
        if bn_stats is None:
            z, mean, var = batch_normalize(zpre, part_sizes, cfg.bn_eps)
        else:
            mean, var = bn_stats.mean[layer], bn_stats.var[layer]
            z = normalize(zpre, mean, var, cfg.bn_eps)
        z = corrupt(layer, z)
        beta = params["beta"][layer - 1]
        if layer < num_layers:
            h = jax.nn.relu(z + beta)
        else:
            logits = params["gamma"] * (z + beta)
            h = jax.nn.softmax(logits, axis=-1)
        zs.append(z)
        hs.append(h)
        means.append(mean)
        variances.append(var)
    return EncoderTrace(zs, hs, BnStats(means, variances), logits)


def decode(
    params: Params,
    cfg: ModelConfig,
    z_noisy: Sequence[jax.Array],
    h_top_noisy: jax.Array,
    clean_stats: BnStats,
) -> list[jax.Array | None]:
    """The denoising decoder, top down, on the unlabeled part.

    z_noisy[l]: [Bu, n_l] corrupted z~_l of the unlabeled rows; h_top_noisy: [Bu, n_L] h~_L.
    clean_stats: the clean pass's batch mean/var of zpre_l on the unlabeled rows ([n_l]).
    Returns zhat_bn[l] ([Bu, n_l]) for l = lowest..L, normalised by sqrt(var + eps) of the
    clean pass (layer 0 is not normalised), None for layers the decoder does not reach.
    """
    lowest = cfg.lowest_decoded_layer
    num_layers = cfg.num_layers
    combinator = combinators.get(cfg.combinator, cfg.amlp_hidden)
    estimates: list[jax.Array | None] = [None] * (num_layers + 1)
    if lowest is None:
        return estimates
    zhat = None
    for layer in range(num_layers, lowest - 1, -1):
        u = (h_top_noisy if layer == num_layers
             else matmul(zhat, params["V"][_layer_key(layer + 1)], cfg.matmul_dtype))
        u, _, _ = batch_normalize(u, (u.shape[0],), cfg.bn_eps)
        zhat = combinator.apply(params["g"][_layer_key(layer)], z_noisy[layer], u)
        if layer == 0:
            estimates[layer] = zhat
        else:
            estimates[layer] = normalize(
                zhat, clean_stats.mean[layer], clean_stats.var[layer], cfg.bn_eps
            )
    return estimates


def population_stats(params: Params, cfg: ModelConfig, x: jax.Array) -> BnStats:
    """Exact population statistics: a clean pass over all of ``x`` [N, n_0] as one batch.

    Layer by layer, each layer's input is normalised with the population statistics of the
    layer below, as at test time. Returns BnStats with mean[l], var[l] of shape [n_l].
    """
    trace = encode(params, cfg, x)
    squeeze = [None] + [m[0] for m in trace.stats.mean[1:]]
    squeeze_var = [None] + [v[0] for v in trace.stats.var[1:]]
    return BnStats(squeeze, squeeze_var)


def predict_log_probs(params: Params, cfg: ModelConfig, x: jax.Array,
                      bn_stats: BnStats) -> jax.Array:
    """log h_L [B, n_L] of the clean encoder with population batch-norm statistics."""
    return jax.nn.log_softmax(encode(params, cfg, x, bn_stats=bn_stats).logits, axis=-1)


def count_params(params: Params) -> dict[str, int]:
    """Parameter counts by role: encoder weights, decoder weights, combinators, BN affine."""
    size = lambda tree: sum(int(a.size) for a in jax.tree_util.tree_leaves(tree))
    counts = {
        "encoder_W": size(params["W"]),
        "decoder_V": size(params["V"]),
        "combinators": size(params["g"]),
        "bn_affine": size(params["beta"]) + size(params["gamma"]),
    }
    counts["total"] = sum(counts.values())
    return counts
