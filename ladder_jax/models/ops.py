"""What the model families share: the encoder's trace and the loop that builds it, per-part
batch normalisation with a written-out backward pass, the optional bfloat16 matmul, placing
drawn noise on the corrupted parts of a batch, the hidden layers' nonlinearity and the keys
of per-layer parameters.

Layers are numbered as in the paper: 0 is the input, L the softmax output. Lists indexed by
layer hold ``None`` where a layer has no such quantity (e.g. no batch mean at the input).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, Any]
#: The leaky ReLU's slope for activation 'leakyrelu' (the authors' code).
LEAKY_SLOPE = 0.1
#: The precision of every float32 product of the models: float32 on every backend, as the
#: paper computed. JAX's default multiplies float32 in TF32 on recent GPUs and in bfloat16
#: passes on TPUs; the CPU computes float32 either way.
FLOAT32 = jax.lax.Precision.HIGHEST


class BnStats(NamedTuple):
    """Per-layer statistics of the pre-activations zpre_l, l = 1..L (index 0 is None).

    mean[l], var[l]: [c_l] (population) or [num_parts, c_l] (batch statistics per part), where
    c_l is the layer's width (dense) or channel count (convolutional).
    """

    mean: list[jax.Array | None]
    var: list[jax.Array | None]


class EncoderTrace(NamedTuple):
    """What one encoder pass leaves behind, per layer l = 0..L.

    z[l]: [B, *shape_l] normalised (and, if corrupted, noisy) pre-activation; z[0] is the
        input. shape_l is the family's per-example shape of layer l ([n_l] for dense layers,
        [H, W, C] for convolutional ones).
    h[l]: [B, *shape_l] the layer's output; h[L] is the softmax, h[0] = z[0].
    stats: batch statistics of zpre per part ([num_parts, channels_l]), or the population
        ones used.
    logits: [B, n_L] the top layer's pre-softmax output, whose softmax is h[L].
    """

    z: list[jax.Array]
    h: list[jax.Array]
    stats: BnStats
    logits: jax.Array


def layer_key(layer: int) -> str:
    """The key of layer ``layer``'s entry in a per-layer parameter dict ('V', 'g', ...)."""
    return str(layer)


def activation(x: jax.Array, name: str) -> jax.Array:
    """The hidden layers' nonlinearity: ``name`` 'relu', or 'leakyrelu' (slope LEAKY_SLOPE)."""
    return jax.nn.relu(x) if name == "relu" else jax.nn.leaky_relu(x, LEAKY_SLOPE)


def encoder_pass(
    h: jax.Array,
    num_layers: int,
    *,
    start: int,
    preactivation: Callable[[int, jax.Array], jax.Array],
    hidden: Callable[[int, jax.Array], jax.Array],
    top: Callable[[jax.Array], jax.Array],
    part_sizes: Sequence[int],
    noisy: Sequence[bool],
    noise: Sequence[jax.Array | None],
    bn_stats: BnStats | None,
    eps: float,
) -> EncoderTrace:
    """The encoder's loop, layer by layer above ``start``; the family supplies the layers.

    Per layer l: zpre = preactivation(l, h[l-1]); z = batch_normalize(zpre) per part (or
    normalised with bn_stats, where it has layer l) plus the noise of layer l; h[l] =
    hidden(l, z) below the top, softmax(top(z)) at the top, whose top(z) are the logits.

    Args:
        h: [B, *shape_start], the input (start 0, corrupted here with noise[0]) or the kept
            output h[start] of layer ``start``.
        num_layers: L.
        start: the layer ``h`` belongs to, 0 <= start < L.
        preactivation: (l, h[l-1]) -> zpre_l [B, *shape_l].
        hidden: (l, z_l) -> h[l], for 0 < l < L.
        top: z_L -> logits [B, classes].
        part_sizes, noisy: consecutive row blocks batch-normalised apart, and per block
            whether it is corrupted.
        noise: per layer, the drawn corruption of the noisy rows, or None.
        bn_stats: population statistics replacing the batch ones where given, or None.
        eps: added to the variance before the square root.

    Returns:
        The pass's EncoderTrace: z, h, batch (or given) statistics per layer, None below
        ``start`` (z[start] too, unless start is the input), and the logits.
    """
    rows = h.shape[0]

    def corrupt(layer: int, value: jax.Array) -> jax.Array:
        return value + place_noise(noise[layer], rows, part_sizes, noisy)

    if start == 0:
        h = corrupt(0, h)
    zs = [None] * start + [h if start == 0 else None]
    hs = [None] * start + [h]
    means, variances = [None] * (start + 1), [None] * (start + 1)
    logits = h
    for layer in range(start + 1, num_layers + 1):
        zpre = preactivation(layer, h)
        if bn_stats is None or bn_stats.mean[layer] is None:
            z, mean, var = batch_normalize(zpre, part_sizes, eps)
        else:
            mean, var = bn_stats.mean[layer], bn_stats.var[layer]
            z = normalize(zpre, mean, var, eps)
        z = corrupt(layer, z)
        if layer < num_layers:
            h = hidden(layer, z)
        else:
            logits = top(z)
            h = jax.nn.softmax(logits, axis=-1)
        zs.append(z)
        hs.append(h)
        means.append(mean)
        variances.append(var)
    return EncoderTrace(zs, hs, BnStats(means, variances), logits)


def normalize(x: jax.Array, mean: jax.Array, var: jax.Array, eps: float) -> jax.Array:
    """(x - mean) / sqrt(var + eps), broadcasting over the batch axis."""
    return (x - mean) * jax.lax.rsqrt(var + eps)


def batch_normalize(
    x: jax.Array, part_sizes: Sequence[int], eps: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalises each part of the batch (consecutive rows) with its own statistics.

    Args:
        x: [B, n] (normalised per unit) or a map [B, H, W, C] (per channel, over the part's
            rows and positions).
        part_sizes: the parts' row counts, summing to B.
        eps: added to the variance before the square root.

    Returns:
        (normalised, like x; mean [num_parts, c]; var [num_parts, c]), c = n or C; var is
        biased.
    """
    if x.ndim > 2:  # [B H W, C]: example b owns rows b H W .. (b + 1) H W - 1
        positions = math.prod(x.shape[1:-1])
        y, mean, var = _normalize_parts(x.reshape(-1, x.shape[-1]),
                                        [size * positions for size in part_sizes], eps)
        return y.reshape(x.shape), mean, var
    return _normalize_parts(x, part_sizes, eps)


def _normalize_parts(
    x: jax.Array, part_sizes: Sequence[int], eps: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """batch_normalize of x [B, n]. Equal parts (the training batch's three) go through as
    one [parts, rows, n] array."""
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
# fewer operations than autodiff of the forward pass emits. tests/test_model.py checks it
# against autodiff.
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
        return jnp.matmul(x, w, precision=FLOAT32)
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


def place_noise(draws: jax.Array | None, num_rows: int, part_sizes: Sequence[int],
                 noisy: Sequence[bool]) -> jax.Array | float:
    """The noise rows ``draws`` [noisy rows, ...] put on the noisy parts, zeros on clean ones."""
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
            pieces.append(jnp.zeros((size, *draws.shape[1:]), draws.dtype))
    return jnp.concatenate(pieces, axis=0)
