"""Counted FLOPs of one training step: the matmuls and convolutions a family's step runs,
2 per multiply-add, from the config alone (plain Python: no JAX, nothing traced).

For the measuring tools (experiments/measure/benchmark.py); tests/test_conv.py,
tests/test_benchmark.py and tests/test_conv_training.py check the counts against the
equations of the traced step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ladder_jax.errors import ConfigError
from ladder_jax.models import conv_spec
from ladder_jax.models.conv_spec import Geometry, Layer, Shape

if TYPE_CHECKING:
    from ladder_jax.config import ModelConfig


def step_flops(cfg: ModelConfig, labeled_rows: int, unlabeled_rows: int) -> int:
    """Matmul and convolution FLOPs of one training step of the ladder ``cfg``.

    Args:
        cfg: the model (family 'mlp' or 'conv').
        labeled_rows: Nl, the labeled batch's rows.
        unlabeled_rows: Nu, the unlabeled batch's rows (unused without a decoder).

    Returns:
        2 per multiply-add of the forward pass's, weight gradients' and input gradients'
        matmuls and convolutions (_mlp_step_flops, _conv_step_flops).
    """
    if cfg.family == "mlp":
        return _mlp_step_flops(cfg, labeled_rows, unlabeled_rows)
    if cfg.family == "conv":
        return _conv_step_flops(cfg, labeled_rows, unlabeled_rows)
    raise ConfigError(f"no FLOP count for model family {cfg.family!r}")


def _mlp_step_flops(cfg: ModelConfig, labeled_rows: int, unlabeled_rows: int) -> int:
    """The dense ladder's count.

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


def window_pairs(n_in: int, kernel: int, n_out: int, geometry: Geometry) -> int:
    """The (output position, kernel tap) pairs of a convolution along one axis that land on
    an input element, not on padding or an inserted zero: its multiply-adds per channel
    pair along that axis.

    Args:
        n_in: the axis's input length (before dilation and padding).
        kernel: the kernel's side.
        n_out: the axis's output length.
        geometry: the axis's padding, stride and input dilation.

    Returns:
        The count: n_out K for a valid convolution of stride 1, n_in K for a full one.
    """
    lo, dil = geometry.pad[0], geometry.lhs_dilation
    count = 0
    for out in range(n_out):
        for tap in range(kernel):
            p = out * geometry.stride + tap - lo
            if 0 <= p <= (n_in - 1) * dil and p % dil == 0:
                count += 1
    return count


def _layer_macs(layer: Layer, below: Shape, above: Shape, down: bool) -> int:
    """Multiply-adds per example of conv/fc ``layer`` (down: its decoder transpose)."""
    if layer.kind == "fc":
        return math.prod(below) * math.prod(above)
    src, dst = (above, below) if down else (below, above)
    spatial = 1
    for axis in range(2):
        geometry = (conv_spec.decoder_geometry(layer, above[axis], below[axis]) if down
                    else conv_spec.encoder_geometry(layer))
        spatial *= window_pairs(src[axis], layer.kernel, dst[axis], geometry)
    return spatial * below[-1] * above[-1]


def _conv_step_flops(cfg: ModelConfig, labeled_rows: int, unlabeled_rows: int) -> int:
    """The conv ladder's count.

    m_l, multiply-adds per example of conv/fc layer l: fc n_(l-1) n_l; conv
    C_(l-1) C_l P_h P_w, P per spatial axis = window_pairs (output positions x kernel taps
    that land on an input element: n_out K for a valid conv, n_in K for a full one, stride
    1); pooling layers have none. m'_l: the same for the decoder's transpose V_l (equal to
    m_l at stride 1). The matmul lowering also multiplies padding's zeros; those products
    are not counted.
    Forward: R = Nl + 2 Nu rows through the encoder (R = Nl without a decoder), Nu rows
    through each V_l of the decoder:  F = sum_l 2 R m_l + sum_(V_l) 2 Nu m'_l.
    Backward: a weight gradient per forward op (the same pairs: F) and an input gradient
    per forward op but the lowest conv/fc encoder layer's, whose input depends on no
    parameter (F - 2 R m_first).   Total = 3 F - 2 R m_first.
    """
    layers, shapes = conv_spec.plan(cfg.conv_layers, tuple(cfg.input_shape))
    lowest = cfg.lowest_decoded_layer
    rows = labeled_rows + 2 * unlabeled_rows if lowest is not None else labeled_rows
    forward, first = 0, None
    for index, layer in enumerate(layers, start=1):
        if layer.kind not in conv_spec.WEIGHTED:
            continue
        macs = _layer_macs(layer, shapes[index - 1], shapes[index], down=False)
        first = macs if first is None else first
        forward += 2 * rows * macs
        if lowest is not None and index > lowest:
            forward += 2 * unlabeled_rows * _layer_macs(layer, shapes[index - 1],
                                                        shapes[index], down=True)
    return 3 * forward - 2 * rows * (first or 0)
