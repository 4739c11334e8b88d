"""Combinators g(z~, u): the decoder's per-unit denoising function of one layer.

Each combinator is a pair of pure functions: ``init(key, width) -> params`` and
``apply(params, z_noisy, u) -> z_hat``, elementwise over units, parameters per unit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ladder_jax.models.ops import FLOAT32

Params = dict[str, jax.Array]


class Combinator(NamedTuple):
    init: Callable[[jax.Array, int], Params]
    apply: Callable[[Params, jax.Array, jax.Array], jax.Array]


def gauss_init(key: jax.Array, width: int) -> Params:
    """The paper's init: a2 = a7 = 1, all other a_i = 0 (so z_hat = 0 at the start)."""
    del key
    ones, zeros = jnp.ones((width,)), jnp.zeros((width,))
    return {f"a{i}": (ones if i in (2, 7) else zeros) for i in range(1, 11)}


def gauss_apply(p: Params, z_noisy: jax.Array, u: jax.Array) -> jax.Array:
    """The paper's 'vanilla' combinator (eq. 2 of Rasmus et al. 2015).

    m = a1 sigmoid(a2 u + a3) + a4 u + a5;  v = a6 sigmoid(a7 u + a8) + a9 u + a10;
    z_hat = (z~ - m) v + m.   Shapes: [batch, width] -> [batch, width].
    """
    m = p["a1"] * jax.nn.sigmoid(p["a2"] * u + p["a3"]) + p["a4"] * u + p["a5"]
    v = p["a6"] * jax.nn.sigmoid(p["a7"] * u + p["a8"]) + p["a9"] * u + p["a10"]
    return (z_noisy - m) * v + m


def linear_init(key: jax.Array, width: int) -> Params:
    """All zeros, like the gauss combinator's effective start (z_hat = 0)."""
    del key
    zeros = jnp.zeros((width,))
    return {"w_z": zeros, "w_u": zeros, "b": zeros}


def linear_apply(p: Params, z_noisy: jax.Array, u: jax.Array) -> jax.Array:
    """z_hat = w_z z~ + w_u u + b: the ablation with no multiplicative interaction."""
    return p["w_z"] * z_noisy + p["w_u"] * u + p["b"]


AMLP_LEAK = 0.1


def amlp_init(key: jax.Array, width: int, hidden: int = 4) -> Params:
    """Per-unit MLP weights: hidden weights N(0, 1/3) over the 3 inputs, output weights 0.

    Zero output weights start the estimate at z_hat = 0, as the gauss combinator does.
    """
    return {
        "w1": jax.random.normal(key, (3, hidden, width)) / jnp.sqrt(3.0),
        "b1": jnp.zeros((hidden, width)),
        "w2": jnp.zeros((hidden, width)),
        "b2": jnp.zeros((width,)),
    }


def amlp_apply(p: Params, z_noisy: jax.Array, u: jax.Array) -> jax.Array:
    """Pezeshki et al. (2016) AMLP: a per-unit MLP over [z~, u, z~ * u].

    hidden_k = leaky_relu(w1[0,k] z~ + w1[1,k] u + w1[2,k] z~ u + b1[k]);
    z_hat = sum_k w2[k] hidden_k + b2.   Shapes: [batch, width] -> [batch, width].
    """
    inputs = jnp.stack([z_noisy, u, z_noisy * u])  # [3, batch, width]
    pre = jnp.einsum("ibw,ihw->bhw", inputs, p["w1"], precision=FLOAT32) + p["b1"]
    hidden = jax.nn.leaky_relu(pre, AMLP_LEAK)
    return jnp.einsum("bhw,hw->bw", hidden, p["w2"], precision=FLOAT32) + p["b2"]


#: The registry: name -> (init(key, width, hidden), apply). ModelConfig validates against it.
_REGISTRY: dict[str, tuple[Callable[..., Params], Callable[..., jax.Array]]] = {
    "gauss": (lambda key, width, hidden: gauss_init(key, width), gauss_apply),
    "amlp": (amlp_init, amlp_apply),
    "linear": (lambda key, width, hidden: linear_init(key, width), linear_apply),
}
NAMES = tuple(_REGISTRY)


def get(name: str, amlp_hidden: int = 4) -> Combinator:
    """The combinator called ``name`` (one of NAMES)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown combinator {name!r}; choose one of {', '.join(NAMES)}")
    init, apply = _REGISTRY[name]
    return Combinator(lambda key, width: init(key, width, amlp_hidden), apply)
