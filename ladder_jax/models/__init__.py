"""Model families behind one interface, and the family-independent model functions.

A family is one module (``mlp.py``, ``conv.py``) that defines, for a ``ModelConfig``:

    validate(cfg) -> {field: value}  the family's fields normalised, for the config to keep;
                                     ConfigError (one line) for settings it cannot build
    layer_shapes(cfg)                per-example shape of z_l, l = 0 (input) .. L
    init(key, cfg) -> Params         encoder and decoder parameters, keyed by role:
                                     'W', 'V', 'g', 'beta' and (optional) 'gamma'
    encode(params, cfg, x, *, part_sizes, noisy, noise, bn_stats, start) -> EncoderTrace
                                     (the loop is ops.encoder_pass)
    decode(params, cfg, z_noisy, h_top_noisy, clean_stats) -> per-layer estimates

and registers itself in ``FAMILIES`` below. Everything else (noise, population statistics,
prediction, parameter counts, costs, training) is written once, over the trace;
``flops.py`` counts a step's FLOPs per family for the measuring tools.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import jax

from ladder_jax.errors import ConfigError
from ladder_jax.models.flops import step_flops
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
    """The family module called ``name`` (imported on first use).

    Args:
        name: a key of FAMILIES.

    Raises:
        ConfigError: for an unknown name.
    """
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name])


def init(key: jax.Array, cfg: ModelConfig) -> Params:
    """The initial parameters of the ladder ``cfg`` describes.

    Args:
        key: the PRNG key every parameter is drawn from.
        cfg: the model.

    Returns:
        The family's parameters (its ``init`` documents their layout).
    """
    return family(cfg.family).init(key, cfg)


def draw_noise(key: jax.Array, cfg: ModelConfig, num_rows: int) -> list[jax.Array | None]:
    """The corruption of one encoder pass, drawn apart from the pass so that the trainer
    can draw many steps' noise in one vectorised call (train.step).

    Args:
        key: layer l's noise is drawn from split(key, L + 1)[l].
        cfg: the model (its noise_std and layer shapes).
        num_rows: the pass's noisy rows.

    Returns:
        Per layer l = 0..L, noise_std[l] * N(0, 1) of shape [num_rows, *shape_l]; None where
        noise_std[l] is 0.
    """
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
    """One encoder pass over a batch.

    Args:
        params, cfg: the model.
        x: [B, ...], the dataset's preprocessed images (or h[start], see ``start``).
        part_sizes: consecutive row blocks batch-normalised separately (default: one part).
        noisy: per part, whether it is corrupted with ``cfg.noise_std`` (default: all
            clean). Clean and corrupted parts share each matmul or convolution: the weights
            are the same.
        key: draws the corruption (draw_noise(key, cfg, noisy rows)); or pass it drawn as
            ``noise``.
        noise: the drawn corruption (draw_noise's list), instead of ``key``.
        bn_stats: population statistics; when given, they replace the batch statistics (a
            layer whose entry is None keeps its batch statistics).
        start: 0, or a layer whose output h[start] ``x`` is: the pass runs only the layers
            above it (evaluation keeps a layer's outputs and starts there).

    Returns:
        The EncoderTrace of the pass; entries below ``start`` are None.

    Raises:
        ValueError: for a ``start`` that is not below the top, parts that do not fit the
            batch, or a corrupted pass with neither ``key`` nor ``noise``.
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
    """The denoising decoder on the unlabeled part.

    Args:
        params, cfg: the model.
        z_noisy: per layer, the corrupted z~_l of the unlabeled rows.
        h_top_noisy: [Bu, classes], the corrupted softmax h~_L.
        clean_stats: the clean pass's batch statistics on the unlabeled rows.

    Returns:
        zhat_bn[l] for the decoded layers (the family's ``decode``), None for the others.
    """
    return family(cfg.family).decode(params, cfg, z_noisy, h_top_noisy, clean_stats)


def population_stats(params: Params, cfg: ModelConfig, x: jax.Array) -> BnStats:
    """Exact population statistics: a clean pass over all of ``x`` as one batch.

    Layer by layer, each layer's input is normalised with the population statistics of the
    layer below, as at test time.

    Args:
        params, cfg: the model.
        x: [N, ...], the rows the statistics are over.

    Returns:
        BnStats with mean[l], var[l] of shape [c_l] (None at the input).
    """
    trace = encode(params, cfg, x)
    return BnStats([None] + [m[0] for m in trace.stats.mean[1:]],
                   [None] + [v[0] for v in trace.stats.var[1:]])


def predict_log_probs(params: Params, cfg: ModelConfig, x: jax.Array,
                      bn_stats: BnStats) -> jax.Array:
    """The clean encoder's class log-probabilities, batch norm by population statistics.

    Args:
        params, cfg: the model.
        x: [B, ...], the images.
        bn_stats: population statistics (population_stats).

    Returns:
        log h_L, [B, classes].
    """
    return jax.nn.log_softmax(encode(params, cfg, x, bn_stats=bn_stats).logits, axis=-1)


def count_params(params: Params) -> dict[str, int]:
    """Parameter counts by role (every family keys its parameters by the same roles).

    Args:
        params: a family's parameters (or their shapes), keyed by role.

    Returns:
        {'encoder_W', 'decoder_V', 'combinators', 'bn_affine' (beta and gamma), 'total'}.
    """

    def size(tree: object) -> int:
        return sum(int(a.size) for a in jax.tree_util.tree_leaves(tree))

    counts = {
        "encoder_W": size(params["W"]),
        "decoder_V": size(params["V"]),
        "combinators": size(params["g"]),
        "bn_affine": size(params["beta"]) + size(params.get("gamma")),
    }
    counts["total"] = sum(counts.values())
    return counts


def layer_size(cfg: ModelConfig, layer: int) -> int:
    """The number of units of layer ``layer`` per example (the denoising cost's normaliser).

    Args:
        cfg: the model.
        layer: 0 (the input) .. L.
    """
    return math.prod(cfg.layer_shapes[layer])
