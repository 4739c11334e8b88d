"""Costs: the supervised cost on the corrupted output, the layer-wise denoising costs, and
the total training loss that runs both encoder passes and the decoder on one batch."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ladder_jax import models
from ladder_jax.config import ModelConfig


def classification_cost(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over the batch of -log softmax(logits)[label]; logits [B, C], labels [B] int."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def denoising_costs(
    cfg: ModelConfig,
    clean_z: Sequence[jax.Array],
    estimates: Sequence[jax.Array | None],
) -> list[jax.Array]:
    """lambda_l * mean over the batch of ||z_l - zhat_bn_l||^2 / n_l, per layer l = 0..L.

    n_l counts the layer's units per example (all positions and channels of a convolutional
    layer, as the authors' code divides by the layer's dimensions). Layers without an
    estimate or with lambda_l = 0 cost 0.
    """
    costs = []
    for layer, weight in enumerate(cfg.denoise_weights):
        est = estimates[layer]
        if est is None or weight == 0.0:
            costs.append(jnp.zeros(()))
            continue
        feature_axes = tuple(range(1, est.ndim))
        per_example = jnp.sum(jnp.square(clean_z[layer] - est), axis=feature_axes)
        costs.append(weight * jnp.mean(per_example) / models.layer_size(cfg, layer))
    return costs


def ladder_loss(
    params: models.Params,
    cfg: ModelConfig,
    x_labeled: jax.Array,
    labels: jax.Array,
    x_unlabeled: jax.Array | None,
    key: jax.Array | None,
    *,
    noise: list[jax.Array | None] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total training cost C = C_class + sum_l C_denoise_l on one batch.

    x_labeled: [Nl, ...], labels: [Nl], x_unlabeled: [Nu, ...] (None when nothing is
    denoised, as for the supervised baseline). The corrupted pass (labeled and unlabeled
    parts) and the clean pass (unlabeled part) run as one batch through each weight
    matrix, each part batch-normalised with its own statistics; the clean labeled pass is
    not needed for the cost and is not run. Gradients flow through every path.
    The corruption is drawn from ``key``, or given as ``noise`` (models.draw_noise over the
    Nl + Nu corrupted rows, labeled first).

    Returns (total, metrics) with metrics 'loss', 'class_cost', 'denoise_cost',
    'denoise_cost_l' per layer l, and 'train_error' (corrupted output, labeled part).
    """
    n_labeled = x_labeled.shape[0]
    if x_unlabeled is None:
        trace = models.encode(params, cfg, x_labeled, noisy=(True,), key=key,
                             noise=noise)
        class_cost = classification_cost(trace.logits, labels)
        denoise = [jnp.zeros(()) for _ in range(cfg.num_layers + 1)]
        labeled_logits = trace.logits
    else:
        n_unlabeled = x_unlabeled.shape[0]
        x = jnp.concatenate([x_labeled, x_unlabeled, x_unlabeled], axis=0)
        parts = (n_labeled, n_unlabeled, n_unlabeled)
        trace = models.encode(params, cfg, x, part_sizes=parts, noisy=(True, True, False),
                             key=key, noise=noise)
        noisy_u = slice(n_labeled, n_labeled + n_unlabeled)
        clean_u = slice(n_labeled + n_unlabeled, None)
        labeled_logits = trace.logits[:n_labeled]
        class_cost = classification_cost(labeled_logits, labels)
        clean_stats = models.BnStats(
            [None] + [m[2] for m in trace.stats.mean[1:]],
            [None] + [v[2] for v in trace.stats.var[1:]],
        )
        estimates = models.decode(
            params, cfg, [z[noisy_u] for z in trace.z], trace.h[-1][noisy_u], clean_stats
        )
        denoise = denoising_costs(cfg, [z[clean_u] for z in trace.z], estimates)
    denoise_total = sum(denoise, jnp.zeros(()))
    total = class_cost + denoise_total
    metrics = {
        "loss": total,
        "class_cost": class_cost,
        "denoise_cost": denoise_total,
        "train_error": jnp.mean(jnp.argmax(labeled_logits, -1) != labels).astype(jnp.float32),
    }
    for layer, cost in enumerate(denoise):
        metrics[f"denoise_cost_{layer}"] = cost
    return total, metrics
