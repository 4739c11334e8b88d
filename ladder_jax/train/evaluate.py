"""Evaluation: exact population statistics over the unlabeled set, error rates with them, and
prediction on new images. All of it runs on this process's default device."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ladder_jax import models
from ladder_jax.config import ModelConfig
from ladder_jax.datasets import base as datasets_base


@functools.partial(jax.jit, static_argnames=("cfg",))
def population_stats(params: models.Params, cfg: ModelConfig, images: jax.Array,
                     rows: jax.Array, preprocessing=None) -> models.BnStats:
    """Population batch-norm statistics over ``images[rows]`` (a clean pass, one batch)."""
    x = datasets_base.preprocess(images[rows], preprocessing)
    return models.population_stats(params, cfg, x)


@functools.partial(jax.jit, static_argnames=("cfg",))
def error_rate(params: models.Params, cfg: ModelConfig, bn_stats: models.BnStats,
               images: jax.Array, labels: jax.Array, preprocessing=None) -> jax.Array:
    """Fraction of ``images`` (uint8 [N, H, W, C]) whose predicted class differs from
    ``labels``."""
    x = datasets_base.preprocess(images, preprocessing)
    log_probs = models.predict_log_probs(params, cfg, x, bn_stats)
    return jnp.mean(jnp.argmax(log_probs, axis=-1) != labels)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _predict(params, cfg, bn_stats, images, preprocessing):
    x = datasets_base.preprocess(images, preprocessing)
    return jnp.argmax(models.predict_log_probs(params, cfg, x, bn_stats), axis=-1)


def predict(params: models.Params, cfg: ModelConfig, bn_stats: models.BnStats,
            images: np.ndarray, preprocessing=None) -> np.ndarray:
    """Predicted classes (int [N]) for uint8 images [N, H, W, C] (or [N, H, W] grey)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return np.asarray(_predict(params, cfg, bn_stats, jnp.asarray(images), preprocessing))


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
