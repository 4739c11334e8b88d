"""The convolutional ladder (the paper's Conv-Small, Conv-FC and Conv-Large), following the
authors' Theano code (CuriousAI/ladder, ladder.py and nn.py) where the paper is vague.

Layer spec, the authors' ``--encoder-layers`` syntax, layers joined by '-':

    convv:C:K:S[:1]   valid convolution, C output channels, K x K kernel, stride S; the
                      4th field is read by nothing in the authors' code (it must be 1 here)
    convf:C:K:S[:1]   full convolution (padding K - 1 on each side: the map grows by K - 1)
    maxpool:S:K       max pooling, STRIDE first, then window size (nn.maxpool_2d gets
                      poolsize=dims[1], poolstride=dims[0]); windows that run over the
                      bottom/right border are kept, partial (Theano's ignore_border=False:
                      out = (n - 1) // S + 1 for S >= K), which is why Conv-Large's second
                      pool gives 8 x 8 from 15 x 15 and its global pool sees 6 x 6
    globalmeanpool:K  mean over the whole map (the authors ignore K); K, or K:K, is 0 or
                      must be the map's side
    fc:N (or N)       dense layer of N units on the flattened input

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
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ladder_jax import combinators
from ladder_jax.models import im2col, ops
from ladder_jax.models.ops import BnStats, EncoderTrace, Params

if TYPE_CHECKING:
    from ladder_jax.config import ModelConfig

LEAKY_SLOPE = 0.1  # --act leakyrelu in the authors' code
KINDS = ("convv", "convf", "maxpool", "globalmeanpool", "fc")
_FIELDS = {"convv": (3, 4), "convf": (3, 4), "maxpool": (2,), "globalmeanpool": (1, 2),
           "fc": (1,)}
_DIMS = ("NHWC", "HWIO", "NHWC")
Shape = tuple[int, ...]


class Layer(NamedTuple):
    """One parsed layer. channels: conv output channels or fc units (0 for pools);
    kernel, stride: conv / maxpool window side and step; window: globalmeanpool's stated
    (height, width), 0 = whole map; text: the layer as written."""

    kind: str
    text: str
    channels: int = 0
    kernel: int = 0
    stride: int = 1
    window: tuple[int, int] = (0, 0)


def _error(index: int, text: str, why: str) -> Exception:
    from ladder_jax.config import ConfigError

    return ConfigError(f"conv_layers layer {index} {text!r}: {why}")


def parse(spec: str) -> tuple[Layer, ...]:
    """The layers of ``spec`` (authors' syntax, see the module docstring), bottom first.

    Raises ConfigError (one line naming the layer's index, 1 = above the input, and text)
    for an unknown type, a wrong number of fields, or fields that are not positive integers.
    """
    from ladder_jax.config import ConfigError

    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"conv_layers={spec!r} is empty; give a layer spec such as "
                          "'convv:32:3:1:1-maxpool:2:2-globalmeanpool:0'")
    return tuple(_parse_layer(i, text.strip()) for i, text in
                 enumerate(spec.strip().split("-"), start=1))


def _parse_layer(index: int, text: str) -> Layer:
    fields = text.split(":")
    # the authors' parse_layer: a lone number is an fc layer
    kind, raw = (fields[0], fields[1:]) if len(fields) >= 2 else ("fc", fields)
    if kind not in KINDS:
        raise _error(index, text, f"unknown layer type {kind!r}; choose one of "
                     f"{', '.join(KINDS)}")
    if len(raw) not in _FIELDS[kind]:
        wanted = " or ".join(str(n) for n in _FIELDS[kind])
        raise _error(index, text, f"{kind} takes {wanted} numbers after the type, "
                     f"not {len(raw)}")
    try:
        nums = [int(f) for f in raw]
    except ValueError:
        raise _error(index, text, "every field after the type must be an integer") from None
    lowest = 0 if kind == "globalmeanpool" else 1
    if any(n < lowest for n in nums):
        raise _error(index, text, f"fields must be >= {lowest}")
    if kind in ("convv", "convf"):
        if len(nums) == 4 and nums[3] != 1:
            raise _error(index, text, "the 4th field is unused by the authors' code; use 1")
        return Layer(kind, text, channels=nums[0], kernel=nums[1], stride=nums[2])
    if kind == "maxpool":
        return Layer(kind, text, kernel=nums[1], stride=nums[0])
    if kind == "globalmeanpool":
        return Layer(kind, text, window=(nums[0], nums[-1]))
    return Layer(kind, text, channels=nums[0])


def _pooled_size(n: int, kernel: int, stride: int) -> int:
    """Theano's max-pool output length with ignore_border=False (partial windows kept)."""
    if stride >= kernel:
        return (n - 1) // stride + 1
    return max(0, (n - 1 - kernel + stride) // stride) + 1


def _output_shape(index: int, layer: Layer, shape: Shape) -> Shape:
    """Per-example output shape of ``layer`` on an input of ``shape``; ConfigError if it
    does not fit."""
    if layer.kind == "fc":
        return (layer.channels,)
    if len(shape) != 3:
        raise _error(index, layer.text, f"{layer.kind} needs an H x W x C map but its input "
                     f"is a vector of {shape[0]}")
    height, width, channels = shape
    side = f"{height}x{width}"
    if layer.kind == "globalmeanpool":
        if any(w not in (0, n) for w, n in zip(layer.window, (height, width))):
            raise _error(index, layer.text, f"window {layer.window[0]}x{layer.window[1]} does "
                         f"not cover its {side} input; use 0 (whole map) or the map's side")
        return (channels,)
    k, s = layer.kernel, layer.stride
    if layer.kind == "maxpool":
        if k > min(height, width):
            raise _error(index, layer.text, f"pool window {k} does not fit its {side} input")
        return (_pooled_size(height, k, s), _pooled_size(width, k, s), channels)
    if layer.kind == "convv":
        if k > min(height, width):
            raise _error(index, layer.text, f"kernel {k} is larger than its {side} input")
        return ((height - k) // s + 1, (width - k) // s + 1, layer.channels)
    return ((height + k - 2) // s + 1, (width + k - 2) // s + 1, layer.channels)


@functools.lru_cache(maxsize=128)
def _plan(spec: str, input_shape: Shape) -> tuple[tuple[Layer, ...], tuple[Shape, ...]]:
    """(layers, shapes): the parsed spec and per-example shapes, input first; cached
    because ModelConfig.layer_shapes is asked often."""
    layers = parse(spec)
    shapes: list[Shape] = [tuple(input_shape)]
    for index, layer in enumerate(layers, start=1):
        shapes.append(_output_shape(index, layer, shapes[-1]))
    top = layers[-1]
    if top.kind not in ("fc", "globalmeanpool"):
        raise _error(len(layers), top.text, "the top layer must output the class vector "
                     "(globalmeanpool or fc), not a map; end with e.g. '-globalmeanpool:0'")
    if shapes[-1][0] < 2:
        raise _error(len(layers), top.text, f"outputs {shapes[-1][0]} class; a classifier "
                     "needs >= 2")
    return layers, tuple(shapes)


def validate(cfg: ModelConfig) -> None:
    """Checks input_shape (H, W, C positive integers; stored as a tuple) and conv_layers."""
    from ladder_jax.config import ConfigError

    try:
        shape = tuple(operator.index(n) for n in cfg.input_shape)
        if any(isinstance(n, bool) for n in cfg.input_shape):
            raise TypeError
    except TypeError:
        raise ConfigError(f"input_shape={cfg.input_shape!r} must be integers H, W, C") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input_shape={shape} must be three positive integers H, W, C, "
                          "e.g. 28,28,1")
    object.__setattr__(cfg, "input_shape", shape)
    _plan(cfg.conv_layers, shape)


def layer_shapes(cfg: ModelConfig) -> list[Shape]:
    """Per-example shape of z_l, l = 0..L: (H, W, C) for maps, (n,) for vectors."""
    return list(_plan(cfg.conv_layers, tuple(cfg.input_shape))[1])


def _key(layer: int) -> str:
    return str(layer)


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
    return layer == len(layers) or layers[layer - 1].kind in ("convv", "convf", "fc")


def _combinator_width(layers: Sequence[Layer], shapes: Sequence[Shape], layer: int,
                      per_channel: bool) -> int:
    shape = shapes[layer]
    above = layers[layer].kind if layer < len(layers) else None
    if per_channel and len(shape) == 3 and above not in (None, "fc"):
        return shape[-1]
    return math.prod(shape)


def init(key: jax.Array, cfg: ModelConfig) -> Params:
    """Parameters of the conv ladder ``cfg`` describes, keyed by layer number (str):

    'W': {l: HWIO [K, K, C_(l-1), C_l] (conv) or [prod(shape_(l-1)), n_l] (fc)},
    'beta': {l: [C_l]} for conv/fc layers and the top, 'gamma': [classes] (only with
    top_c), 'V': {l: the transpose's weights, [K, K, C_l, C_(l-1)] or [n_l, prod(shape_(l-1))]}
    for conv/fc layers l above the lowest decoded one, 'g': {l: combinator params of width
    prod(shape_l)} (cfg.combinator_per_channel: C_l where the layer above is conv/pool, as
    the authors).
    """
    layers, shapes = _plan(cfg.conv_layers, tuple(cfg.input_shape))
    top = len(layers)
    enc_keys = jax.random.split(jax.random.fold_in(key, 0), top + 1)
    dec_keys = jax.random.split(jax.random.fold_in(key, 1), top + 1)
    comb_keys = jax.random.split(jax.random.fold_in(key, 2), top + 1)
    weighted = [i for i in range(1, top + 1) if layers[i - 1].kind in ("convv", "convf", "fc")]
    params: Params = {
        "W": {_key(i): _weight(enc_keys[i], layers[i - 1], shapes[i - 1], shapes[i], False)
              for i in weighted},
        "beta": {_key(i): jnp.zeros((shapes[i][-1],)) for i in range(1, top + 1)
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
        params["g"][_key(layer)] = combinator.init(comb_keys[layer], width)
        if layer > lowest and layer in weighted:
            params["V"][_key(layer)] = _weight(dec_keys[layer], layers[layer - 1],
                                               shapes[layer - 1], shapes[layer], True)
    return params


def activation(cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """The hidden conv/fc layers' nonlinearity."""
    return jax.nn.relu(x) if cfg.activation == "relu" else jax.nn.leaky_relu(x, LEAKY_SLOPE)


class _Geometry(NamedTuple):
    """One spatial axis of a convolution as lax sees it."""

    pad: tuple[int, int]
    stride: int = 1
    lhs_dilation: int = 1


def _encoder_geometry(layer: Layer) -> _Geometry:
    pad = layer.kernel - 1 if layer.kind == "convf" else 0
    return _Geometry((pad, pad), layer.stride)


def _decoder_geometry(layer: Layer, n_above: int, n_below: int) -> _Geometry:
    """The transpose of conv ``layer`` along one axis: zero-insertion by the stride, then a
    full convolution (of a valid one) or a valid one (of a full one), its high padding set
    so the output is exactly n_below long (the authors crop it to that)."""
    low = layer.kernel - 1 if layer.kind == "convv" else 0
    dilated = (n_above - 1) * layer.stride + 1
    high = n_below + layer.kernel - 1 - dilated - low
    return _Geometry((low, high), 1, layer.stride)


#: How convolutions are computed: "matmul" (im2col.py), "lax" (lax.conv_general_dilated),
#: or "auto": matmuls on XLA:CPU, whose lax weight gradients are slow, lax elsewhere.
LOWERING = "auto"


def _as_matmuls() -> bool:
    return LOWERING == "matmul" or (LOWERING == "auto" and jax.default_backend() == "cpu")


def _convolve(x: jax.Array, w: jax.Array, geometry: Sequence[_Geometry]) -> jax.Array:
    """NHWC input, HWIO filters, one _Geometry per spatial axis; float32."""
    return jax.lax.conv_general_dilated(
        x, w, tuple(g.stride for g in geometry), tuple(g.pad for g in geometry),
        lhs_dilation=tuple(g.lhs_dilation for g in geometry), dimension_numbers=_DIMS)


def _encoder_conv(x: jax.Array, w: jax.Array, layer: Layer) -> jax.Array:
    geometry = _encoder_geometry(layer)
    if _as_matmuls():
        return im2col.conv(x, w, geometry.stride, geometry.pad)
    return _convolve(x, w, (geometry,) * 2)


def _decoder_conv(zhat: jax.Array, v: jax.Array, layer: Layer, below: Shape) -> jax.Array:
    """Layer's transpose T with weights v [K, K, C_above, C_below] (_decoder_geometry).
    T is the transpose of the encoder's convolution with the filter v flipped in space
    and in/out channels swapped, which is how the matmul lowering computes it."""
    if _as_matmuls():
        w = jnp.flip(v, (0, 1)).transpose(0, 1, 3, 2)
        geometry = _encoder_geometry(layer)
        return im2col.conv_transpose(zhat, w, geometry.stride, geometry.pad, below)
    geometry = [_decoder_geometry(layer, zhat.shape[1 + axis], below[axis]) for axis in (0, 1)]
    return _convolve(zhat, v, geometry)


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
        return ops.matmul(h.reshape(h.shape[0], -1), params["W"][_key(index)],
                          cfg.matmul_dtype)
    if layer.kind == "globalmeanpool":
        return jnp.mean(h, axis=(1, 2))
    if layer.kind == "maxpool":
        return _maxpool(h, layer, out_shape)
    return _encoder_conv(h, params["W"][_key(index)], layer)


def _batch_norm(x: jax.Array, part_sizes: Sequence[int],
                eps: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-part batch norm of [B, n] (per unit) or [B, H, W, C] (per channel over the
    part's rows and positions). Returns (normalised, mean [parts, c], var [parts, c]).

    A map is viewed as [B H W, C]: example b owns rows b H W .. (b + 1) H W - 1, so each
    part stays a consecutive block of part_size H W rows."""
    if x.ndim == 2:
        return ops.batch_normalize(x, part_sizes, eps)
    positions = x.shape[1] * x.shape[2]
    y, mean, var = ops.batch_normalize(x.reshape(-1, x.shape[-1]),
                                       [size * positions for size in part_sizes], eps)
    return y.reshape(x.shape), mean, var


def encode(params: Params, cfg: ModelConfig, x: jax.Array, *, part_sizes: Sequence[int],
           noisy: Sequence[bool], noise: Sequence[jax.Array | None],
           bn_stats: BnStats | None, start: int = 0) -> EncoderTrace:
    """One encoder pass over ``x`` [B, H, W, C] (or [B, H W C], reshaped); see models.encode.

    noise[l]: the drawn corruption of the noisy rows of layer l, [noisy rows, *shape_l], or
    None. start > 0: ``x`` is h[start] and the pass runs the layers above it. Returns
    EncoderTrace with z[l], h[l] of shape [B, *shape_l] (None below ``start``), stats per
    part [parts, C_l] (or the population ones given), logits [B, classes].
    """
    layers, shapes = _plan(cfg.conv_layers, tuple(cfg.input_shape))
    rows, top = x.shape[0], len(layers)

    def corrupt(layer: int, value: jax.Array) -> jax.Array:
        return value + ops.place_noise(noise[layer], rows, part_sizes, noisy)

    h = x.reshape(rows, *shapes[start])
    if start == 0:
        h = corrupt(0, h)
    zs, hs, means, variances = ops.trace_lists(h, start)
    logits = h
    for index, layer in enumerate(layers[start:], start=start + 1):
        zpre = _forward(params, cfg, layer, index, h, shapes[index])
        if bn_stats is None or bn_stats.mean[index] is None:
            z, mean, var = _batch_norm(zpre, part_sizes, cfg.bn_eps)
        else:
            mean, var = bn_stats.mean[index], bn_stats.var[index]
            z = ops.normalize(zpre, mean, var, cfg.bn_eps)
        z = corrupt(index, z)
        if index == top:
            logits = z + params["beta"][_key(index)]
            if "gamma" in params:
                logits = params["gamma"] * logits
            h = jax.nn.softmax(logits, axis=-1)
        elif _has_beta(layers, index):
            h = activation(cfg, z + params["beta"][_key(index)])
        else:
            h = z  # hidden pooling layer: linear, no beta (authors' act_f = 'linear')
        zs.append(z)
        hs.append(h)
        means.append(mean)
        variances.append(var)
    return EncoderTrace(zs, hs, BnStats(means, variances), logits)


def _unpool_indices(n_below: int, stride: int, n_above: int) -> np.ndarray:
    """For each position of the map below a max pool, the window it starts in (clipped)."""
    return np.minimum(np.arange(n_below) // stride, n_above - 1)


def _transpose(params: Params, cfg: ModelConfig, layer: Layer, index: int, zhat: jax.Array,
               below: Shape) -> jax.Array:
    """u_(index-1) before its batch norm: layer ``index``'s transpose applied to its
    estimate zhat [Bu, *shape_index]; returns [Bu, *below] (fc: [Bu, prod(below)])."""
    rows = zhat.shape[0]
    if layer.kind == "fc":
        return ops.matmul(zhat, params["V"][_key(index)], cfg.matmul_dtype)
    if layer.kind == "globalmeanpool":
        return jnp.broadcast_to(zhat[:, None, None, :], (rows, *below))
    if layer.kind == "maxpool":
        u = jnp.take(zhat, _unpool_indices(below[0], layer.stride, zhat.shape[1]), axis=1)
        return jnp.take(u, _unpool_indices(below[1], layer.stride, zhat.shape[2]), axis=2)
    return _decoder_conv(zhat, params["V"][_key(index)], layer, below)


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

    z_noisy[l]: [Bu, *shape_l] corrupted z~_l; h_top_noisy: [Bu, classes] h~_L; clean_stats:
    the clean pass's batch mean/var of zpre_l on the unlabeled rows ([C_l]). Returns
    zhat_bn[l] [Bu, *shape_l] for l = lowest..L, normalised by the clean statistics (layer
    0 is not), None for the layers the decoder does not reach.
    """
    layers, shapes = _plan(cfg.conv_layers, tuple(cfg.input_shape))
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
        u = _batch_norm(u, (u.shape[0],), cfg.bn_eps)[0].reshape(-1, *shapes[layer])
        zhat = _combine(combinator, params["g"][_key(layer)], z_noisy[layer], u)
        estimates[layer] = zhat if layer == 0 else ops.normalize(
            zhat, clean_stats.mean[layer], clean_stats.var[layer], cfg.bn_eps)
    return estimates


def count_params(params: Params) -> dict[str, int]:
    """Parameter counts by role: encoder weights, decoder weights, combinators, BN affine."""
    def size(tree) -> int:
        return sum(int(a.size) for a in jax.tree_util.tree_leaves(tree))

    counts = {
        "encoder_W": size(params["W"]),
        "decoder_V": size(params["V"]),
        "combinators": size(params["g"]),
        "bn_affine": size(params["beta"]) + size(params.get("gamma")),
    }
    counts["total"] = sum(counts.values())
    return counts


def window_pairs(n_in: int, kernel: int, n_out: int, geometry: _Geometry) -> int:
    """Along one axis: the (output position, kernel tap) pairs of a convolution that land
    on an input element, not on padding or an inserted zero (multiply-adds per channel
    pair). valid stride 1: n_out K; full stride 1: n_in K."""
    lo, dil = geometry.pad[0], geometry.lhs_dilation
    p = (np.arange(n_out)[:, None] * geometry.stride + np.arange(kernel)[None, :] - lo)
    return int(np.sum((p >= 0) & (p <= (n_in - 1) * dil) & (p % dil == 0)))


def _layer_macs(layer: Layer, below: Shape, above: Shape, down: bool) -> int:
    """Multiply-adds per example of conv/fc ``layer`` (down: its decoder transpose)."""
    if layer.kind == "fc":
        return math.prod(below) * math.prod(above)
    src, dst = (above, below) if down else (below, above)
    spatial = 1
    for axis in range(2):
        geometry = (_decoder_geometry(layer, above[axis], below[axis]) if down
                    else _encoder_geometry(layer))
        spatial *= window_pairs(src[axis], layer.kernel, dst[axis], geometry)
    return spatial * below[-1] * above[-1]


def step_flops(cfg: ModelConfig, labeled_rows: int, unlabeled_rows: int) -> int:
    """Convolution and matmul FLOPs of one training step (2 per multiply-add).

    m_l, multiply-adds per example of conv/fc layer l: fc n_(l-1) n_l; conv
    C_(l-1) C_l P_h P_w, P per spatial axis = window_pairs (output positions x kernel taps
    that land on an input element: n_out K for a valid conv, n_in K for a full one, stride
    1); pooling layers have none. m'_l: the same for the decoder's transpose V_l (equal to
    m_l at stride 1).
    Forward: R = Nl + 2 Nu rows through the encoder (R = Nl without a decoder), Nu rows
    through each V_l of the decoder:  F = sum_l 2 R m_l + sum_(V_l) 2 Nu m'_l.
    Backward: a weight gradient per forward op (the same pairs: F) and an input gradient
    per forward op but the lowest conv/fc encoder layer's, whose input depends on no
    parameter (F - 2 R m_first).   Total = 3 F - 2 R m_first.
    """
    layers, shapes = _plan(cfg.conv_layers, tuple(cfg.input_shape))
    lowest = cfg.lowest_decoded_layer
    rows = labeled_rows + 2 * unlabeled_rows if lowest is not None else labeled_rows
    forward, first = 0, None
    for index, layer in enumerate(layers, start=1):
        if layer.kind in ("maxpool", "globalmeanpool"):
            continue
        macs = _layer_macs(layer, shapes[index - 1], shapes[index], down=False)
        first = macs if first is None else first
        forward += 2 * rows * macs
        if lowest is not None and index > lowest:
            forward += 2 * unlabeled_rows * _layer_macs(layer, shapes[index - 1],
                                                        shapes[index], down=True)
    return 3 * forward - 2 * rows * (first or 0)
