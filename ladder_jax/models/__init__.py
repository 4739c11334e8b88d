"""Model families behind one interface, and the family-independent model functions.

A family is one module (``mlp.py``, ``conv.py``) that defines, for a ``ModelConfig``:

    validate(cfg)                    raise ConfigError (one line) for settings it cannot build
    layer_shapes(cfg)                per-example shape of z_l, l = 0 (input) .. L
    init(key, cfg) -> Params         encoder and decoder parameters
    encode(params, cfg, x, *, part_sizes, noisy, noise, bn_stats, start) -> EncoderTrace
    decode(params, cfg, z_noisy, h_top_noisy, clean_stats) -> per-layer estimates
    count_params(params) -> {role: count, 'total': count}
    step_flops(cfg, labeled_rows, unlabeled_rows) -> FLOPs of one training step's
                                     matmuls and convolutions (2 per multiply-add)

and registers itself in ``FAMILIES`` below. Everything else (noise, population statistics,
prediction, costs, training) is written once, over the trace.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import jax

from ladder_jax.models.ops import BnStats, EncoderTrace, Params

if TYPE_CHECKING:
    from ladder_jax.config import ModelConfig

#: Family name -> module path. Adding a family is one file and one line here.
FAMILIES = {
    "mlp": "ladder_jax.models.mlp",
    "conv": "ladder_jax.models.conv",
}

__all__ = ["FAMILIES", "BnStats", "EncoderTrace", "Params", "count_params", "decode",
           "draw_noise", "encode", "family", "init", "population_stats", "predict_log_probs",
           "step_flops"]


def family(name: str) -> ModuleType:
    """The family module called ``name``; ConfigError for an unknown name."""
    if name not in FAMILIES:
        from ladder_jax.config import ConfigError

        raise ConfigError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name])


def init(key: jax.Array, cfg: ModelConfig) -> Params:
    """The parameters of the ladder ``cfg`` describes (see the family's ``init``)."""
    return family(cfg.family).init(key, cfg)


def draw_noise(key: jax.Array, cfg: ModelConfig, num_rows: int) -> list[jax.Array | None]:
    """The corruption of one encoder pass over ``num_rows`` noisy rows, per layer l = 0..L:
    noise_std[l] * N(0, 1) of shape [num_rows, *shape_l], drawn from split(key, L + 1)[l];
    None where noise_std[l] is 0. Drawn apart from the pass, so the trainer can draw many
    steps' noise in one vectorised call (train.step)."""
    keys = jax.random.split(key, cfg.num_layers + 1)
    return [
        None if std == 0.0 else std * jax.random.normal(keys[layer], (num_rows, *shape))
        for layer, (std, shape) in enumerate(zip(cfg.noise_std, cfg.layer_shapes))
    ]


def encode(
    params: Params,
    cfg: ModelConfig,
    x: jax.Array,
    *,
    part_sizes: Sequence[int] | None = None,
    noisy: Sequence[bool] | None = None,
    key: jax.Array | None = None,
    noise: Sequence[jax.Array | None] | None = None,
    bn_stats: BnStats | None = None,
    start: int = 0,
) -> EncoderTrace:
    """One encoder pass over ``x`` [B, ...] (the dataset's preprocessed images).

    part_sizes: consecutive row blocks batch-normalised separately (default: one part).
    noisy: per part, whether it is corrupted with ``cfg.noise_std`` (default: all clean).
        Clean and corrupted parts share each matmul or convolution: the weights are the same.
    key: draws the corruption (draw_noise(key, cfg, noisy rows)); or pass it drawn as ``noise``.
    bn_stats: population statistics; when given, they replace the batch statistics (a
        layer whose entry is None keeps its batch statistics).
    start: 0, or a layer whose output h[start] ``x`` is: the pass runs only the layers above
        it (evaluation keeps a layer's outputs and starts there); trace entries below are None.
    """
    part_sizes = tuple(part_sizes) if part_sizes is not None else (x.shape[0],)
    noisy = tuple(noisy) if noisy is not None else (False,) * len(part_sizes)
    if not 0 <= start < cfg.num_layers:
        raise ValueError(f"start {start} is not a layer below the top ({cfg.num_layers})")
    if sum(part_sizes) != x.shape[0] or len(noisy) != len(part_sizes):
        raise ValueError(f"part_sizes {part_sizes} / noisy {noisy} do not fit a batch of "
                         f"{x.shape[0]} rows")
    if not any(noisy):
        noise = [None] * (cfg.num_layers + 1)
    elif noise is None:
        if key is None:
            raise ValueError("a corrupted pass needs a PRNG key or its drawn noise")
        noise = draw_noise(key, cfg, sum(s for s, n in zip(part_sizes, noisy) if n))
    return family(cfg.family).encode(params, cfg, x, part_sizes=part_sizes, noisy=noisy,
                                     noise=noise, bn_stats=bn_stats, start=start)


def decode(params: Params, cfg: ModelConfig, z_noisy: Sequence[jax.Array],
           h_top_noisy: jax.Array, clean_stats: BnStats) -> list[jax.Array | None]:
    """The denoising decoder on the unlabeled part (see the family's ``decode``): zhat_bn[l]
    for the decoded layers, None for the others."""
    return family(cfg.family).decode(params, cfg, z_noisy, h_top_noisy, clean_stats)


def population_stats(params: Params, cfg: ModelConfig, x: jax.Array) -> BnStats:
    """Exact population statistics: a clean pass over all of ``x`` as one batch.

    Layer by layer, each layer's input is normalised with the population statistics of the
    layer below, as at test time. Returns BnStats with mean[l], var[l] of shape [c_l].
    """
    trace = encode(params, cfg, x)
    return BnStats([None] + [m[0] for m in trace.stats.mean[1:]],
                   [None] + [v[0] for v in trace.stats.var[1:]])


def predict_log_probs(params: Params, cfg: ModelConfig, x: jax.Array,
                      bn_stats: BnStats) -> jax.Array:
    """log h_L [B, classes] of the clean encoder with population batch-norm statistics."""
    return jax.nn.log_softmax(encode(params, cfg, x, bn_stats=bn_stats).logits, axis=-1)


def count_params(params: Params, cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts by role (the family's roles) and 'total'."""
    return family(cfg.family).count_params(params)


def step_flops(cfg: ModelConfig, labeled_rows: int, unlabeled_rows: int) -> int:
    """Counted matmul/convolution FLOPs of one training step (see the family's formula)."""
    return family(cfg.family).step_flops(cfg, labeled_rows, unlabeled_rows)


def layer_size(cfg: ModelConfig, layer: int) -> int:
    """Number of units of layer ``layer`` per example (the denoising cost's normaliser)."""
    return math.prod(cfg.layer_shapes[layer])
