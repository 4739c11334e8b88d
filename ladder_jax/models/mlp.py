"""The dense ladder (the paper's permutation-invariant MNIST model): layers of widths
n_0 .. n_L, one weight matrix W_l per layer (no bias), batch norm, beta shift, ReLU, and a
softmax with a learned per-class scale gamma on top. The decoder mirrors it with V_l.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from ladder_jax import combinators
from ladder_jax.errors import ConfigError
from ladder_jax.models import ops
from ladder_jax.models.ops import BnStats, EncoderTrace, Params

if TYPE_CHECKING:
    from ladder_jax.config import ModelConfig


def validate(cfg: ModelConfig) -> dict[str, Any]:
    """Checks the settings an mlp needs.

    Args:
        cfg: the model being built (its family 'mlp').

    Returns:
        {'layer_sizes': the widths as a tuple of ints}, for the config to keep.

    Raises:
        ConfigError: one line, for widths that are not whole and positive, fewer than two
            layers or classes, or combinator_per_channel (a conv net's setting).
    """
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
    return {"layer_sizes": sizes}


def layer_shapes(cfg: ModelConfig) -> list[tuple[int, ...]]:
    """The per-example shape of every layer.

    Args:
        cfg: a validated mlp config.

    Returns:
        [(n_0,), (n_1,), ..., (n_L,)].
    """
    return [(n,) for n in cfg.layer_sizes]


def init(key: jax.Array, cfg: ModelConfig) -> Params:
    """The initial parameters of the dense ladder ``cfg`` describes.

    The decoder holds only the layers it needs: from L down to the lowest layer with a
    denoising cost (none for the supervised baseline; the top alone for the Gamma-model).

    Args:
        key: the PRNG key every parameter is drawn from.
        cfg: a validated mlp config.

    Returns:
        {'W': [W_1..W_L] ([n_(l-1), n_l], N(0,1)/sqrt(fan_in)), 'beta': [n_l] zeros per
        layer, 'gamma': [n_L] ones, 'V': {'l': [n_l, n_(l-1)]}, 'g': {'l': combinator
        params}}.
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
        params["g"][ops.layer_key(layer)] = combinator.init(comb_keys[layer], sizes[layer])
        if layer > lowest:  # V_l maps the estimate of layer l down to layer l - 1
            fan_in = sizes[layer]
            params["V"][ops.layer_key(layer)] = (
                jax.random.normal(dec_keys[layer], (fan_in, sizes[layer - 1])) / jnp.sqrt(fan_in)
            )
    return params


def encode(params: Params, cfg: ModelConfig, x: jax.Array, *, part_sizes: Sequence[int],
           noisy: Sequence[bool], noise: Sequence[jax.Array | None],
           bn_stats: BnStats | None, start: int = 0) -> EncoderTrace:
    """One encoder pass: z_l = batchnorm(h_(l-1) @ W_l) + noise, h_l = act(z_l + beta_l),
    h_L = softmax(gamma (z_L + beta_L)).

    Args:
        params, cfg: the model.
        x: [B, ...] the input (flattened to [B, n_0]), or h[start] [B, n_start].
        part_sizes, noisy, noise, bn_stats, start: as models.encode takes them, noise
            drawn (per layer, the noisy rows' corruption, or None).

    Returns:
        The EncoderTrace (ops.encoder_pass), z[l] and h[l] of shape [B, n_l].
    """
    num_layers = cfg.num_layers

    def preactivation(layer: int, h: jax.Array) -> jax.Array:
        return ops.matmul(h, params["W"][layer - 1], cfg.matmul_dtype)

    def hidden(layer: int, z: jax.Array) -> jax.Array:
        return ops.activation(z + params["beta"][layer - 1], cfg.activation)

    def top(z: jax.Array) -> jax.Array:
        return params["gamma"] * (z + params["beta"][num_layers - 1])

    return ops.encoder_pass(x.reshape(x.shape[0], -1), num_layers, start=start,
                            preactivation=preactivation, hidden=hidden, top=top,
                            part_sizes=part_sizes, noisy=noisy, noise=noise,
                            bn_stats=bn_stats, eps=cfg.bn_eps)


def decode(params: Params, cfg: ModelConfig, z_noisy: Sequence[jax.Array],
           h_top_noisy: jax.Array, clean_stats: BnStats) -> list[jax.Array | None]:
    """The denoising decoder, top down, on the unlabeled part: u_L = batchnorm(h~_L),
    u_l = batchnorm(zhat_(l+1) @ V_(l+1)), zhat_l = g(z~_l, u_l).

    Args:
        params, cfg: the model.
        z_noisy: z_noisy[l] [Bu, n_l], the corrupted z~_l of the unlabeled rows.
        h_top_noisy: [Bu, n_L], h~_L.
        clean_stats: the clean pass's batch mean/var of zpre_l on the unlabeled rows ([n_l]).

    Returns:
        zhat_bn[l] ([Bu, n_l]) for l = lowest..L, normalised by the clean pass's mean and
        sqrt(var + eps) (layer 0 is not normalised); None for the layers the decoder does
        not reach.
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
             else ops.matmul(zhat, params["V"][ops.layer_key(layer + 1)], cfg.matmul_dtype))
        u, _, _ = ops.batch_normalize(u, (u.shape[0],), cfg.bn_eps)
        zhat = combinator.apply(params["g"][ops.layer_key(layer)], z_noisy[layer], u)
        if layer == 0:
            estimates[layer] = zhat
        else:
            estimates[layer] = ops.normalize(
                zhat, clean_stats.mean[layer], clean_stats.var[layer], cfg.bn_eps
            )
    return estimates
