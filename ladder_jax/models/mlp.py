"""The dense ladder (the paper's permutation-invariant MNIST model): layers of widths
n_0 .. n_L, one weight matrix W_l per layer (no bias), batch norm, beta shift, ReLU, and a
softmax with a learned per-class scale gamma on top. The decoder mirrors it with V_l.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from ladder_jax import combinators
from ladder_jax.models import ops
from ladder_jax.models.ops import BnStats, EncoderTrace, Params

if TYPE_CHECKING:
    from ladder_jax.config import ModelConfig

LEAKY_SLOPE = 0.1  # --activation=leakyrelu, as in the authors' code


def validate(cfg: ModelConfig) -> None:
    """Checks layer_sizes (whole, positive, >= 2 classes) and stores them as a tuple of ints."""
    from ladder_jax.config import ConfigError

    try:
        sizes = tuple(operator.index(s) for s in cfg.layer_sizes)
    except TypeError:
        raise ConfigError(
            f"layer_sizes={cfg.layer_sizes!r} must be whole numbers, e.g. 784,1000,10"
        ) from None
    if len(sizes) < 2:
        raise ConfigError(
            f"layer_sizes={sizes} needs at least an input and an output width, e.g. 784,1000,10")
    if any(s <= 0 for s in sizes):
        raise ConfigError(f"layer_sizes={sizes} has a non-positive width; widths must be >= 1")
    if sizes[-1] < 2:
        raise ConfigError(f"the output layer has {sizes[-1]} unit; a classifier needs >= 2")
    if cfg.combinator_per_channel:
        raise ConfigError("combinator_per_channel applies to conv nets (a dense layer has no "
                          "positions to share over); leave it off for an mlp")
    object.__setattr__(cfg, "layer_sizes", sizes)


def layer_shapes(cfg: ModelConfig) -> list[tuple[int, ...]]:
    """[(n_0,), (n_1,), ..., (n_L,)]."""
    return [(n,) for n in cfg.layer_sizes]


def _layer_key(layer: int) -> str:
    return str(layer)


def init(key: jax.Array, cfg: ModelConfig) -> Params:
    """Parameters of the dense ladder described by ``cfg``.

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


def activation(cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """The hidden layers' nonlinearity."""
    return jax.nn.relu(x) if cfg.activation == "relu" else jax.nn.leaky_relu(x, LEAKY_SLOPE)


def encode(params: Params, cfg: ModelConfig, x: jax.Array, *, part_sizes: Sequence[int],
           noisy: Sequence[bool], noise: Sequence[jax.Array | None],
           bn_stats: BnStats | None, start: int = 0) -> EncoderTrace:
    """One encoder pass over ``x`` [B, ...] (flattened to [B, n_0]); see models.encode.

    noise[l]: the drawn corruption of the noisy rows of layer l (or None). start > 0: ``x``
    is h[start] and the pass runs the layers above it (z, h and stats None below it).
    """
    def corrupt(layer: int, value: jax.Array) -> jax.Array:
        return value + ops.place_noise(noise[layer], value.shape[0], part_sizes, noisy)

    num_layers = cfg.num_layers
    h = x.reshape(x.shape[0], -1)
    if start == 0:
        h = corrupt(0, h)
    zs, hs, means, variances = ops.trace_lists(h, start)
    logits = h
    for layer in range(start + 1, num_layers + 1):
        zpre = ops.matmul(h, params["W"][layer - 1], cfg.matmul_dtype)
        if bn_stats is None or bn_stats.mean[layer] is None:
            z, mean, var = ops.batch_normalize(zpre, part_sizes, cfg.bn_eps)
        else:
            mean, var = bn_stats.mean[layer], bn_stats.var[layer]
            z = ops.normalize(zpre, mean, var, cfg.bn_eps)
        z = corrupt(layer, z)
        beta = params["beta"][layer - 1]
        if layer < num_layers:
            h = activation(cfg, z + beta)
        else:
            logits = params["gamma"] * (z + beta)
            h = jax.nn.softmax(logits, axis=-1)
        zs.append(z)
        hs.append(h)
        means.append(mean)
        variances.append(var)
    return EncoderTrace(zs, hs, BnStats(means, variances), logits)


def decode(params: Params, cfg: ModelConfig, z_noisy: Sequence[jax.Array],
           h_top_noisy: jax.Array, clean_stats: BnStats) -> list[jax.Array | None]:
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
             else ops.matmul(zhat, params["V"][_layer_key(layer + 1)], cfg.matmul_dtype))
        u, _, _ = ops.batch_normalize(u, (u.shape[0],), cfg.bn_eps)
        zhat = combinator.apply(params["g"][_layer_key(layer)], z_noisy[layer], u)
        if layer == 0:
            estimates[layer] = zhat
        else:
            estimates[layer] = ops.normalize(
                zhat, clean_stats.mean[layer], clean_stats.var[layer], cfg.bn_eps
            )
    return estimates


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


def step_flops(cfg: ModelConfig, labeled_rows: int, unlabeled_rows: int) -> int:
    """Matmul FLOPs of one training step (2 per multiply-add).

    Forward: the encoder runs R = Nl + 2 Nu rows (corrupted labeled, corrupted unlabeled,
    clean unlabeled; R = Nl without a decoder) through each W_l (n_(l-1) x n_l); the
    decoder runs Nu rows through each V_l it has (n_l x n_(l-1)).
        F = sum_l 2 R n_(l-1) n_l + sum_(decoded l) 2 Nu n_l n_(l-1)
    Backward: one weight-gradient matmul per forward matmul (F again) and one
    input-gradient matmul per forward matmul except the first encoder layer, whose input
    (the data) needs no gradient: F - 2 R n_0 n_1.   Total = 3F - 2 R n_0 n_1.
    """
    sizes = cfg.layer_sizes
    nl, nu = labeled_rows, unlabeled_rows
    lowest = cfg.lowest_decoded_layer
    rows = nl + 2 * nu if lowest is not None else nl
    forward = sum(2 * rows * sizes[i] * sizes[i + 1] for i in range(len(sizes) - 1))
    if lowest is not None:
        forward += sum(2 * nu * sizes[layer] * sizes[layer - 1]
                       for layer in range(lowest + 1, len(sizes)))
    return 3 * forward - 2 * rows * sizes[0] * sizes[1]
