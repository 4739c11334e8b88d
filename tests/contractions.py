"""FLOPs of traced dot_general / conv_general_dilated equations, counted from their shapes
and parameters alone (independently of models.step_flops), for the FLOP-count tests."""

from __future__ import annotations

import math

import numpy as np


def _pairs(n_in: int, k: int, n_out: int, stride: int, pad_lo: int, lhs_dil: int,
           rhs_dil: int) -> int:
    """(output position, kernel tap) pairs of one spatial axis that read a real input
    element (not padding, not a hole of lhs dilation)."""
    o = np.arange(n_out)[:, None]
    t = np.arange(k)[None, :]
    p = o * stride + t * rhs_dil - pad_lo  # position in the dilated, padded input
    return int(np.sum((p >= 0) & (p <= (n_in - 1) * lhs_dil) & (p % lhs_dil == 0)))


def contraction_flops(eqn) -> int:
    """2 x the multiply-adds of a dot_general or conv_general_dilated equation that touch
    real data."""
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    out = eqn.outvars[0].aval.shape
    if eqn.primitive.name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        return 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
    p = eqn.params
    assert p["feature_group_count"] == 1 and p["batch_group_count"] == 1, p
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    macs = lhs[lhs_spec[0]] * lhs[lhs_spec[1]] * rhs[rhs_spec[0]]  # N x C_in x C_out
    for axis in range(len(lhs_spec) - 2):
        macs *= _pairs(lhs[lhs_spec[2 + axis]], rhs[rhs_spec[2 + axis]], out[out_spec[2 + axis]],
                       p["window_strides"][axis], p["padding"][axis][0],
                       p["lhs_dilation"][axis], p["rhs_dilation"][axis])
    return 2 * macs
