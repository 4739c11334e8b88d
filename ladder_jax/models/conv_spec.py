"""The conv family's layer spec: parsing, per-layer shapes and convolution geometry, in
plain Python (no JAX, no numpy), so that configs can be checked and FLOPs counted without
tracing anything.

Layer spec, the authors' ``--encoder-layers`` syntax (CuriousAI/ladder), layers joined by '-':

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

Shapes are per example: (H, W, C) for maps, (n,) for vectors.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from ladder_jax.errors import ConfigError

KINDS = ("convv", "convf", "maxpool", "globalmeanpool", "fc")
#: Layer kinds with weights (W in the encoder, V in the decoder).
WEIGHTED = ("convv", "convf", "fc")
_FIELDS = {"convv": (3, 4), "convf": (3, 4), "maxpool": (2,), "globalmeanpool": (1, 2),
           "fc": (1,)}
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


def _error(index: int, text: str, why: str) -> ConfigError:
    return ConfigError(f"conv_layers layer {index} {text!r}: {why}")


def parse(spec: str) -> tuple[Layer, ...]:
    """The layers of a spec in the authors' syntax (module docstring).

    Args:
        spec: the layers joined by '-', bottom first.

    Returns:
        The parsed layers, bottom first.

    Raises:
        ConfigError: one line naming the layer's index (1 = above the input) and text, for
            an unknown type, a wrong number of fields, or fields that are not positive
            integers.
    """
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
def plan(spec: str, input_shape: Shape) -> tuple[tuple[Layer, ...], tuple[Shape, ...]]:
    """The parsed spec and the shape of every layer (cached: ModelConfig.layer_shapes is
    asked often).

    Args:
        spec: the conv layer spec (module docstring).
        input_shape: the input's (H, W, C), a tuple.

    Returns:
        (layers, shapes): layers[l - 1] is layer l; shapes[l] is layer l's per-example
        shape, shapes[0] the input's.

    Raises:
        ConfigError: one line, for a spec that does not parse, a layer that does not fit
            its input, or a top that is not a class vector of >= 2.
    """
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


class Geometry(NamedTuple):
    """One spatial axis of a convolution as lax.conv_general_dilated sees it: (low, high)
    padding, window stride, and the input's dilation (zeros inserted between elements)."""

    pad: tuple[int, int]
    stride: int = 1
    lhs_dilation: int = 1


def encoder_geometry(layer: Layer) -> Geometry:
    """The encoder's convolution of conv ``layer`` along one axis (valid: no padding;
    full: K - 1 on each side)."""
    pad = layer.kernel - 1 if layer.kind == "convf" else 0
    return Geometry((pad, pad), layer.stride)


def decoder_geometry(layer: Layer, n_above: int, n_below: int) -> Geometry:
    """The decoder's transpose of conv ``layer`` along one axis.

    Zero-insertion by the stride, then a full convolution (of a valid one) or a valid one
    (of a full one), its high padding set so that the output is exactly ``n_below`` long
    (the authors crop it to that).

    Args:
        layer: a convv or convf layer.
        n_above: the axis's length in the layer's output (the transpose's input).
        n_below: the axis's length in the layer's input (the transpose's output).
    """
    low = layer.kernel - 1 if layer.kind == "convv" else 0
    dilated = (n_above - 1) * layer.stride + 1
    high = n_below + layer.kernel - 1 - dilated - low
    return Geometry((low, high), 1, layer.stride)
