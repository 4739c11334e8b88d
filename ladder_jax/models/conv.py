"""The convolutional ladder (the paper's Conv-Small, Conv-FC and Conv-Large), following the
authors' Theano code (CuriousAI/ladder, ladder.py and nn.py) where the paper is vague. The
layer spec (``cfg.conv_layers``, the authors' syntax) and the shapes it gives are
conv_spec.py's.

Encoder, per layer l = 1..L (shapes NHWC; vector layers [B, n]):
    zpre = conv / pool / matmul of h_(l-1)     (no bias)
    z    = batchnorm(zpre) + noise             per part, over batch AND positions per
                                               channel; noise after it, pooling included
    h    = act(z + beta)       conv and fc hidden layers (relu or leaky relu 0.1)
    h    = z                   hidden pooling layers: no beta, linear (the authors'
                               act_f = 'linear' for pools, and beta is only added when
                               the activation is not linear)
    h_L  = softmax(gamma * (z + beta))   top (fc or globalmeanpool); gamma only with top_c
Init: conv W ~ U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)), fan_in = C_in K K; fc W ~
N(0, 1) / sqrt(fan_in); beta 0 per channel / unit; gamma 1. The authors scale the global
mean by side * sqrt(3) before its batch norm; batch norm undoes any scale (up to eps), so
that factor is left out.

Decoder, top down on the unlabeled part, from L to cfg.lowest_decoded_layer:
    u_L = batchnorm(h~_L);   u_l = batchnorm(T_(l+1)(zhat_(l+1)))
    zhat_l = g(z~_l, u_l);   estimate = (zhat_l - mu_l) / sqrt(var_l + eps), l >= 1
T_(l+1), the transpose of layer l+1 as the authors' g_deconv builds it, with its own
weights V_(l+1) (initialised like the encoder's):
    convv  -> full convolution with V (K x K x C_(l+1) x C_l); convf -> valid convolution;
              stride S: zero-insertion upsampling by S first; the result is cropped to
              layer l's map (here by the convolution's own high padding)
    maxpool -> nearest-neighbour unpooling (each position takes the pooled value of the
              window it starts in, clipped at the last one; the authors' repeat-by-S and
              crop, which they only allow for S = K)
    globalmeanpool -> the vector broadcast over the map
    fc     -> zhat @ V, batch-normalised per unit, reshaped to layer l's shape
batchnorm(u) is per channel over batch and positions (per unit for vectors), one part.
The Gamma-model is this decoder run at the top alone.

Combinator parameters: by default one set per channel AND position (the unit width is
prod(shape_l), z flattened to [B, prod]), a choice of this library. The authors' code
shares them over positions (one set per channel) wherever the layer above is a conv or
pool; ``cfg.combinator_per_channel`` builds that, and decode follows the parameters.

bfloat16 (cfg.matmul_dtype): applies to the fc layers' matmuls (encoder and decoder); the
convolutions always run in float32.

Convolutions (cfg.conv_lowering): 'lax' computes them with lax.conv_general_dilated,
'matmul' as im2col matmuls (im2col.py: the same sums in another order of additions), and
'auto' picks matmuls where the program is lowered for the CPU (XLA:CPU does not run lax
weight gradients as matmuls), lax convolutions where it is lowered for an accelerator.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ladder_jax import combinators
from ladder_jax.errors import ConfigError
from ladder_jax.models import conv_spec, im2col, ops
from ladder_jax.models.conv_spec import Geometry, Layer, Shape
from ladder_jax.models.ops import BnStats, EncoderTrace, Params

if TYPE_CHECKING:
    from ladder_jax.config import ModelConfig

_DIMS = ("NHWC", "HWIO", "NHWC")


def _plan(cfg: ModelConfig) -> tuple[tuple[Layer, ...], tuple[Shape, ...]]:
    """conv_spec.plan of cfg: (layers, per-example shapes, input first)."""
    return conv_spec.plan(cfg.conv_layers, tuple(cfg.input_shape))


def validate(cfg: ModelConfig) -> dict[str, Any]:
    """Checks the settings a conv net needs.

    Args:
        cfg: the model being built (its family 'conv').

    Returns:
        {'input_shape': (H, W, C) as a tuple of ints}, for the config to keep.

    Raises:
        ConfigError: one line, for an input shape that is not three positive integers or a
            layer spec that does not parse or fit it (conv_spec.plan).
    """
    try:
        shape = tuple(operator.index(n) for n in cfg.input_shape)
        if any(isinstance(n, bool) for n in cfg.input_shape):
            raise TypeError
    except TypeError:
        raise ConfigError(f"input_shape={cfg.input_shape!r} must be integers H, W, C") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input_shape={shape} must be three positive integers H, W, C, "
                          "e.g. 28,28,1")
    conv_spec.plan(cfg.conv_layers, shape)
    return {"input_shape": shape}


def layer_shapes(cfg: ModelConfig) -> list[Shape]:
    """The per-example shape of every layer.

    Args:
        cfg: a validated conv config.

    Returns:
        The shape of z_l, l = 0..L: (H, W, C) for maps, (n,) for vectors.
    """
    return list(_plan(cfg)[1])


def _conv_init(key: jax.Array, kernel: int, c_in: int, c_out: int) -> jax.Array:
    """HWIO filters ~ U(+-sqrt(3 / fan_in)), fan_in = c_in K K (authors' rand_init_conv)."""
    bound = math.sqrt(3.0 / max(1, c_in * kernel * kernel))
    return jax.random.uniform(key, (kernel, kernel, c_in, c_out), minval=-bound, maxval=bound)


def _dense_init(key: jax.Array, fan_in: int, fan_out: int) -> jax.Array:
    """[fan_in, fan_out] ~ N(0, 1) / sqrt(fan_in) (authors' rand_init)."""
    return jax.random.normal(key, (fan_in, fan_out)) / jnp.sqrt(fan_in)


def _weight(key: jax.Array, layer: Layer, below: Shape, above: Shape, down: bool) -> jax.Array:
    """The weights of conv/fc ``layer`` mapping ``below`` -> ``above`` (down=False, the
    encoder's W) or ``above`` -> ``below`` (down=True, the decoder's V)."""
    if layer.kind == "fc":
        fan_in, fan_out = math.prod(below), math.prod(above)
        return _dense_init(key, fan_out, fan_in) if down else _dense_init(key, fan_in, fan_out)
    c_below, c_above = below[-1], above[-1]
    if down:
        return _conv_init(key, layer.kernel, c_above, c_below)
    return _conv_init(key, layer.kernel, c_below, c_above)


def _has_beta(layers: Sequence[Layer], layer: int) -> bool:
    """Hidden pooling layers are linear and have no beta; every other layer has one."""
    return layer == len(layers) or layers[layer - 1].kind in conv_spec.WEIGHTED


def _combinator_width(layers: Sequence[Layer], shapes: Sequence[Shape], layer: int,
                      per_channel: bool) -> int:
    shape = shapes[layer]
    above = layers[layer].kind if layer < len(layers) else None
    if per_channel and len(shape) == 3 and above not in (None, "fc"):
        return shape[-1]
    return math.prod(shape)


def init(key: jax.Array, cfg: ModelConfig) -> Params:
    """The initial parameters of the conv ladder ``cfg`` describes (module docstring).

    Args:
        key: the PRNG key every parameter is drawn from.
        cfg: a validated conv config.

    Returns:
        Parameters keyed by layer number (str): 'W': {l: HWIO [K, K, C_(l-1), C_l] (conv)
        or [prod(shape_(l-1)), n_l] (fc)}; 'beta': {l: [C_l]} for conv/fc layers and the
        top; 'gamma': [classes] (only with top_c); 'V': {l: the transpose's weights,
        [K, K, C_l, C_(l-1)] or [n_l, prod(shape_(l-1))]} for conv/fc layers l above the
        lowest decoded one; 'g': {l: combinator params of width prod(shape_l)}
        (cfg.combinator_per_channel: C_l where the layer above is conv/pool, as the
        authors).
    """
    layers, shapes = _plan(cfg)
    top = len(layers)
    enc_keys = jax.random.split(jax.random.fold_in(key, 0), top + 1)
    dec_keys = jax.random.split(jax.random.fold_in(key, 1), top + 1)
    comb_keys = jax.random.split(jax.random.fold_in(key, 2), top + 1)
    weighted = [i for i in range(1, top + 1) if layers[i - 1].kind in conv_spec.WEIGHTED]
    params: Params = {
        "W": {ops.layer_key(i): _weight(enc_keys[i], layers[i - 1], shapes[i - 1], shapes[i],
                                        False)
              for i in weighted},
        "beta": {ops.layer_key(i): jnp.zeros((shapes[i][-1],)) for i in range(1, top + 1)
                 if _has_beta(layers, i)},
        "V": {},
        "g": {},
    }
    if cfg.top_c:
        params["gamma"] = jnp.ones((shapes[top][-1],))
    lowest = cfg.lowest_decoded_layer
    if lowest is None:
        return params
    combinator = combinators.get(cfg.combinator, cfg.amlp_hidden)
    for layer in range(lowest, top + 1):
        width = _combinator_width(layers, shapes, layer, cfg.combinator_per_channel)
        params["g"][ops.layer_key(layer)] = combinator.init(comb_keys[layer], width)
        if layer > lowest and layer in weighted:
            params["V"][ops.layer_key(layer)] = _weight(dec_keys[layer], layers[layer - 1],
                                                        shapes[layer - 1], shapes[layer], True)
    return params


def _by_lowering(lowering: str, as_matmuls, as_convolutions, *args) -> jax.Array:
    """``as_matmuls(*args)`` or ``as_convolutions(*args)`` as cfg.conv_lowering says; 'auto'
    lets the platform the program is lowered for decide (lax.platform_dependent): matmuls
    on the CPU, convolutions elsewhere, also for a program exported from a CPU for an
    accelerator (jax.export)."""
    if lowering == "matmul":
        return as_matmuls(*args)
    if lowering == "lax":
        return as_convolutions(*args)
    return jax.lax.platform_dependent(*args, cpu=as_matmuls, default=as_convolutions)


def _convolve(x: jax.Array, w: jax.Array, geometry: Sequence[Geometry]) -> jax.Array:
    """NHWC input, HWIO filters, one Geometry per spatial axis; float32."""
    return jax.lax.conv_general_dilated(
        x, w, tuple(g.stride for g in geometry), tuple(g.pad for g in geometry),
        lhs_dilation=tuple(g.lhs_dilation for g in geometry), dimension_numbers=_DIMS,
        precision=ops.FLOAT32)


def _encoder_conv(x: jax.Array, w: jax.Array, layer: Layer, lowering: str) -> jax.Array:
    geometry = conv_spec.encoder_geometry(layer)
    return _by_lowering(
        lowering, lambda x, w: im2col.conv(x, w, geometry.stride, geometry.pad),
        lambda x, w: _convolve(x, w, (geometry,) * 2), x, w)


def _decoder_conv(zhat: jax.Array, v: jax.Array, layer: Layer, below: Shape,
                  lowering: str) -> jax.Array:
    """Layer's transpose T with weights v [K, K, C_above, C_below] (decoder_geometry).
    T is the transpose of the encoder's convolution with the filter v flipped in space
    and in/out channels swapped, which is how the matmul lowering computes it."""
    def as_matmuls(zhat, v):
        w = jnp.flip(v, (0, 1)).transpose(0, 1, 3, 2)
        geometry = conv_spec.encoder_geometry(layer)
        return im2col.conv_transpose(zhat, w, geometry.stride, geometry.pad, below)

    def as_convolutions(zhat, v):
        geometry = [conv_spec.decoder_geometry(layer, zhat.shape[1 + axis], below[axis])
                    for axis in (0, 1)]
        return _convolve(zhat, v, geometry)

    return _by_lowering(lowering, as_matmuls, as_convolutions, zhat, v)


def _maxpool(h: jax.Array, layer: Layer, out_shape: Shape) -> jax.Array:
    """Max over K x K windows with step S; windows past the border are partial (-inf pad)."""
    k, s = layer.kernel, layer.stride
    pads = [max(0, (out - 1) * s + k - n) for out, n in zip(out_shape[:2], h.shape[1:3])]
    return jax.lax.reduce_window(
        h, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1),
        ((0, 0), (0, pads[0]), (0, pads[1]), (0, 0)))


def _forward(params: Params, cfg: ModelConfig, layer: Layer, index: int, h: jax.Array,
             out_shape: Shape) -> jax.Array:
    """zpre of layer ``index``: [B, *out_shape]."""
    if layer.kind == "fc":
        return ops.matmul(h.reshape(h.shape[0], -1), params["W"][ops.layer_key(index)],
                          cfg.matmul_dtype)
    if layer.kind == "globalmeanpool":
        return jnp.mean(h, axis=(1, 2))
    if layer.kind == "maxpool":
        return _maxpool(h, layer, out_shape)
    return _encoder_conv(h, params["W"][ops.layer_key(index)], layer, cfg.conv_lowering)


def encode(params: Params, cfg: ModelConfig, x: jax.Array, *, part_sizes: Sequence[int],
           noisy: Sequence[bool], noise: Sequence[jax.Array | None],
           bn_stats: BnStats | None, start: int = 0) -> EncoderTrace:
    """One encoder pass (module docstring).

    Args:
        params, cfg: the model.
        x: [B, H, W, C] (or [B, H W C], reshaped), or h[start] [B, *shape_start].
        part_sizes, noisy, noise, bn_stats, start: as models.encode takes them, noise
            drawn (per layer, the noisy rows' corruption [noisy rows, *shape_l], or None).

    Returns:
        The EncoderTrace (ops.encoder_pass): z[l], h[l] of shape [B, *shape_l], stats per
        part [parts, C_l] (or the population ones given), logits [B, classes].
    """
    layers, shapes = _plan(cfg)
    num_layers = len(layers)

    def preactivation(index: int, h: jax.Array) -> jax.Array:
        return _forward(params, cfg, layers[index - 1], index, h, shapes[index])

    def hidden(index: int, z: jax.Array) -> jax.Array:
        if _has_beta(layers, index):
            return ops.activation(z + params["beta"][ops.layer_key(index)], cfg.activation)
        return z  # hidden pooling layer: linear, no beta (authors' act_f = 'linear')

    def top(z: jax.Array) -> jax.Array:
        logits = z + params["beta"][ops.layer_key(num_layers)]
        return params["gamma"] * logits if "gamma" in params else logits

    return ops.encoder_pass(x.reshape(x.shape[0], *shapes[start]), num_layers, start=start,
                            preactivation=preactivation, hidden=hidden, top=top,
                            part_sizes=part_sizes, noisy=noisy, noise=noise,
                            bn_stats=bn_stats, eps=cfg.bn_eps)


def _unpool_indices(n_below: int, stride: int, n_above: int) -> np.ndarray:
    """For each position of the map below a max pool, the window it starts in (clipped)."""
    return np.minimum(np.arange(n_below) // stride, n_above - 1)


def _transpose(params: Params, cfg: ModelConfig, layer: Layer, index: int, zhat: jax.Array,
               below: Shape) -> jax.Array:
    """u_(index-1) before its batch norm: layer ``index``'s transpose applied to its
    estimate zhat [Bu, *shape_index]; returns [Bu, *below] (fc: [Bu, prod(below)])."""
    rows = zhat.shape[0]
    if layer.kind == "fc":
        return ops.matmul(zhat, params["V"][ops.layer_key(index)], cfg.matmul_dtype)
    if layer.kind == "globalmeanpool":
        return jnp.broadcast_to(zhat[:, None, None, :], (rows, *below))
    if layer.kind == "maxpool":
        u = jnp.take(zhat, _unpool_indices(below[0], layer.stride, zhat.shape[1]), axis=1)
        return jnp.take(u, _unpool_indices(below[1], layer.stride, zhat.shape[2]), axis=2)
    return _decoder_conv(zhat, params["V"][ops.layer_key(index)], layer, below,
                         cfg.conv_lowering)


def _combine(combinator: combinators.Combinator, p: Params, z_noisy: jax.Array,
             u: jax.Array) -> jax.Array:
    """g(z~, u) elementwise, parameters of width w = prod(shape) (per channel and position:
    rows [B, prod]) or w = C (per channel: rows [B H W, C], C being the last axis)."""
    width = jax.tree_util.tree_leaves(p)[0].shape[-1]
    zhat = combinator.apply(p, z_noisy.reshape(-1, width), u.reshape(-1, width))
    return zhat.reshape(z_noisy.shape)


def decode(params: Params, cfg: ModelConfig, z_noisy: Sequence[jax.Array],
           h_top_noisy: jax.Array, clean_stats: BnStats) -> list[jax.Array | None]:
    """The denoising decoder, top down, on the unlabeled part (module docstring).

    Args:
        params, cfg: the model.
        z_noisy: z_noisy[l] [Bu, *shape_l], the corrupted z~_l of the unlabeled rows.
        h_top_noisy: [Bu, classes], h~_L.
        clean_stats: the clean pass's batch mean/var of zpre_l on the unlabeled rows ([C_l]).

    Returns:
        zhat_bn[l] [Bu, *shape_l] for l = lowest..L, normalised by the clean statistics
        (layer 0 is not); None for the layers the decoder does not reach.
    """
    layers, shapes = _plan(cfg)
    top, lowest = len(layers), cfg.lowest_decoded_layer
    estimates: list[jax.Array | None] = [None] * (top + 1)
    if lowest is None:
        return estimates
    combinator = combinators.get(cfg.combinator, cfg.amlp_hidden)
    zhat = h_top_noisy  # unused: the top layer's u is h~_L itself
    for layer in range(top, lowest - 1, -1):
        if layer == top:
            u = h_top_noisy
        else:  # layers[layer] is layer l + 1 (layers[0] is layer 1)
            u = _transpose(params, cfg, layers[layer], layer + 1, zhat, shapes[layer])
        # fc's u is normalised per unit before it takes layer l's shape (authors' g)
        u = ops.batch_normalize(u, (u.shape[0],), cfg.bn_eps)[0].reshape(-1, *shapes[layer])
        zhat = _combine(combinator, params["g"][ops.layer_key(layer)], z_noisy[layer], u)
        estimates[layer] = zhat if layer == 0 else ops.normalize(
            zhat, clean_stats.mean[layer], clean_stats.var[layer], cfg.bn_eps)
    return estimates
