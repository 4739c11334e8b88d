"""A float64 gradient against central finite differences, shared by the model families'
tests."""

from __future__ import annotations

import numpy as np


def assert_gradient_matches_finite_differences(loss, flat, grad, directions: int = 3,
                                               step: float = 1e-5, seed: int = 19) -> None:
    """``grad`` (of ``loss`` at the flat parameters ``flat``) is finite, mostly non-zero,
    and its derivative along random unit directions equals loss's central differences to
    1e-5 relative (of the larger of the derivative and 1e-3 |grad|)."""
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)) and np.count_nonzero(grad) > 0.9 * grad.size
    rng = np.random.default_rng(seed)
    for _ in range(directions):
        d = rng.standard_normal(flat.shape)
        d /= np.linalg.norm(d)
        analytic = float(grad @ d)
        numeric = float(loss(flat + step * d) - loss(flat - step * d)) / (2 * step)
        scale = max(abs(analytic), 1e-3 * np.linalg.norm(grad))
        assert abs(analytic - numeric) <= 1e-5 * scale, (analytic, numeric)
