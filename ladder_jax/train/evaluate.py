"""Evaluation: exact population statistics over the unlabeled set, error rates with them, and
prediction on new images. All of it runs on this process's default device."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ladder_jax import models
from ladder_jax.config import ModelConfig
from ladder_jax.datasets import base as datasets_base

#: Bytes of activations one evaluation batch may hold. A larger set (a conv net over 60,000
#: images) goes through in chunks of rows; the results are the same sums.
BATCH_BYTES = 2**30


def chunk_rows(cfg: ModelConfig) -> int:
    """Rows per evaluation batch: as many as BATCH_BYTES of the clean pass's z's hold."""
    per_example = 4 * sum(math.prod(shape) for shape in cfg.layer_shapes)
    return max(1, BATCH_BYTES // per_example)


#: Bytes of one layer's outputs over the whole set that the layer-by-layer statistics may
#: keep, so that the passes above start there instead of at the input.
CACHE_BYTES = 2**31


def population_stats(params: models.Params, cfg: ModelConfig, images: jax.Array,
                     rows: jax.Array, preprocessing=None) -> models.BnStats:
    """Exact population batch-norm statistics over ``images[rows]`` (a clean pass).

    In one batch where it fits. Otherwise layer by layer, each over chunks of rows: layer
    l's moments need the population statistics of the layers below it (as at test time),
    so pass l runs the encoder up to l over every chunk with those, and the chunks' means
    and variances are pooled exactly (Chan et al.). A pass keeps the output of the layer
    below it where that fits CACHE_BYTES, and the passes above start from the newest one
    kept (for Conv-Small ~2.5 instead of ~6 forward passes over the set)."""
    rows = jnp.asarray(rows)
    size, count = chunk_rows(cfg), rows.shape[0]
    if count <= size:
        return _population_stats_one_batch(params, cfg, images, rows, preprocessing)
    mean: list = [None] * (cfg.num_layers + 1)
    var: list = [None] * (cfg.num_layers + 1)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    start, kept = 0, None  # kept: h[start] of every row (host), once start > 0
    for layer in range(1, cfg.num_layers + 1):
        below = (count, *cfg.layer_shapes[layer - 1])
        keep = layer - 1 > start and dtype.itemsize * math.prod(below) <= CACHE_BYTES
        new_kept = np.empty(below, dtype) if keep else None
        moments = _PooledMoments()
        for begin in range(0, count, size):
            x = images[rows[begin:begin + size]] if start == 0 else kept[begin:begin + size]
            m, v, h_below = _batch_moments(params, cfg, models.BnStats(mean, var), x,
                                           preprocessing, layer=layer, start=start, keep=keep)
            moments.add(m, v, x.shape[0])
            if keep:
                new_kept[begin:begin + x.shape[0]] = np.asarray(h_below)
        if keep:
            start, kept = layer - 1, new_kept
        mean[layer], var[layer] = (jnp.asarray(a, dtype) for a in moments.mean_and_var())
    return models.BnStats(mean, var)


class _PooledMoments:
    """Mean and (biased) variance of a set from its chunks' ones, pooled exactly in float64
    (Chan et al.)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, mean, var, count: int) -> None:
        mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
        delta, total = mean - self.mean, self.count + count
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + var * count + np.square(delta) * self.count * count / total
        self.count = total

    def mean_and_var(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean, self.m2 / self.count


@functools.partial(jax.jit, static_argnames=("cfg",))
def _population_stats_one_batch(params, cfg, images, rows, preprocessing):
    x = datasets_base.preprocess(images[rows], preprocessing)
    return models.population_stats(params, cfg, x)


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "start", "keep"))
def _batch_moments(params, cfg, known, x, preprocessing, *, layer, start, keep):
    """Batch mean and (biased) variance of zpre_layer over ``x``, the layers below
    normalised with ``known`` population statistics, and h[layer - 1] where ``keep``.

    ``x``: uint8 images (start 0) or the kept h[start]. The pass stops at ``layer``:
    nothing above it reaches the outputs."""
    if start == 0:
        x = datasets_base.preprocess(x, preprocessing)
    trace = models.encode(params, cfg, x, bn_stats=known, start=start)
    return (trace.stats.mean[layer][0], trace.stats.var[layer][0],
            trace.h[layer - 1] if keep else None)


def error_rate(params: models.Params, cfg: ModelConfig, bn_stats: models.BnStats,
               images: jax.Array, labels: jax.Array, preprocessing=None) -> float:
    """Fraction of ``images`` (uint8 [N, H, W, C]) whose predicted class differs from
    ``labels``."""
    size = chunk_rows(cfg)
    wrong = sum(int(_count_wrong(params, cfg, bn_stats, images[start:start + size],
                                 labels[start:start + size], preprocessing))
                for start in range(0, images.shape[0], size))
    return wrong / images.shape[0]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _count_wrong(params, cfg, bn_stats, images, labels, preprocessing):
    return jnp.sum(_predict(params, cfg, bn_stats, images, preprocessing) != labels)


def _predict(params, cfg, bn_stats, images, preprocessing):
    x = datasets_base.preprocess(images, preprocessing)
    return jnp.argmax(models.predict_log_probs(params, cfg, x, bn_stats), axis=-1)


_predict_jit = jax.jit(_predict, static_argnames=("cfg",))


def predict(params: models.Params, cfg: ModelConfig, bn_stats: models.BnStats,
            images: np.ndarray, preprocessing=None) -> np.ndarray:
    """Predicted classes (int [N]) for uint8 images [N, H, W, C] (or [N, H, W] grey)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    size = chunk_rows(cfg)
    return np.concatenate([
        np.asarray(_predict_jit(params, cfg, bn_stats, jnp.asarray(images[start:start + size]),
                                preprocessing))
        for start in range(0, max(1, images.shape[0]), size)])


def empty_stats(cfg: ModelConfig) -> models.BnStats:
    """Zero statistics of the right shapes (a restore target)."""
    zeros = [jnp.zeros((shape[-1],)) for shape in cfg.layer_shapes[1:]]
    return models.BnStats([None, *zeros], [None, *zeros])


def stats_to_tree(stats: models.BnStats) -> dict[str, list[jax.Array]]:
    """BnStats as a checkpointable tree (the None at layer 0 dropped)."""
    return {"mean": list(stats.mean[1:]), "var": list(stats.var[1:])}


def tree_to_stats(tree: dict[str, list[jax.Array]]) -> models.BnStats:
    """Inverse of ``stats_to_tree``."""
    return models.BnStats([None, *tree["mean"]], [None, *tree["var"]])
