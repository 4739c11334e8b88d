"""Convolutions written as matmuls (im2col): the conv family's 'matmul' lowering
(ModelConfig.conv_lowering; 'auto' picks it on XLA:CPU).

Written as patch extraction plus one matmul, every product of a training step is a plain
matmul: the forward pass (patches @ W), the weight gradient (patches^T @ cotangent) and the
input gradient (cotangent @ W^T, then the patches' transpose: pads and adds). Vmapped
replicas become batched matmuls instead of grouped convolutions.

Same sums as the lax convolution, in another order of additions; the patches also multiply
the padding's zeros (``flops.step_flops`` counts only the products that read an input).
Square kernels, the same stride and padding on both axes, NHWC maps, HWIO filters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ladder_jax.models.ops import FLOAT32


def output_side(n: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
    """A convolution's output length along an axis of length ``n`` padded by ``pad``."""
    return (n + pad[0] + pad[1] - kernel) // stride + 1


def patches(x: jax.Array, kernel: int, stride: int, pad: tuple[int, int]) -> jax.Array:
    """[B, H, W, C] -> [B, Ho, Wo, K K C]: the input window of every output position, in
    the HWIO filter's (row, column, channel) order."""
    rows, height, width, channels = x.shape
    xp = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
    ho, wo = (output_side(n, kernel, stride, pad) for n in (height, width))
    if kernel * kernel <= ho * wo:  # one strided slice per tap: [B, Ho, Wo, C] each
        taps = [jax.lax.slice(xp, (0, i, j, 0),
                              (rows, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1,
                               channels), (1, stride, stride, 1))
                for i in range(kernel) for j in range(kernel)]
        stacked = jnp.stack(taps, axis=3)
    else:  # big kernel, few outputs (Conv-FC's 26 x 26): one window per output position
        windows = [jax.lax.slice(xp, (0, p * stride, q * stride, 0),
                                 (rows, p * stride + kernel, q * stride + kernel, channels))
                   for p in range(ho) for q in range(wo)]
        stacked = jnp.stack(windows, axis=1)
    return stacked.reshape(rows, ho, wo, kernel * kernel * channels)


def conv(x: jax.Array, w: jax.Array, stride: int, pad: tuple[int, int]) -> jax.Array:
    """lax.conv_general_dilated(x, w, (stride,) * 2, (pad,) * 2) for NHWC x, HWIO w."""
    kernel, _, _, c_out = w.shape
    cols = patches(x, kernel, stride, pad)
    y = jnp.dot(cols.reshape(-1, cols.shape[-1]), w.reshape(-1, c_out), precision=FLOAT32)
    return y.reshape(*cols.shape[:3], c_out)


def conv_transpose(y: jax.Array, w: jax.Array, stride: int, pad: tuple[int, int],
                   in_shape: tuple[int, int, int]) -> jax.Array:
    """The transpose of x -> conv(x, w, stride, pad) for x of per-example shape
    ``in_shape`` (H, W, C_in), applied to y [B, Ho, Wo, C_out]: [B, H, W, C_in]."""
    kernel, _, _, c_out = w.shape
    cols = jnp.dot(y.reshape(-1, c_out), w.reshape(-1, c_out).T, precision=FLOAT32)
    cols = cols.reshape(*y.shape[:3], -1)
    to_patches = functools.partial(patches, kernel=kernel, stride=stride, pad=pad)
    x_spec = jax.ShapeDtypeStruct((y.shape[0], *in_shape), y.dtype)
    (x,) = jax.linear_transpose(to_patches, x_spec)(cols)
    return x
