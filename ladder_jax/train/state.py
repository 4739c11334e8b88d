"""What a training run carries from step to step: the TrainState, the step bookkeeping, and the
optimiser with the paper's learning-rate schedule (built once, here)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ladder_jax import models
from ladder_jax.config import ModelConfig, TrainConfig
from ladder_jax.datasets import rows


class TrainState(NamedTuple):
    """Everything a resumed run needs. metric_sums accumulate since the last metrics line."""

    step: jax.Array  # int32 scalar
    params: models.Params
    opt_state: optax.OptState
    metric_sums: dict[str, jax.Array]
    metric_count: jax.Array  # float32 scalar


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step bookkeeping derived from a TrainConfig and the unlabeled set size."""

    steps_per_epoch: int
    total_steps: int  # of the full schedule (sets the learning-rate decay)
    end_step: int  # where this run stops (max_steps may cut it short)

    @classmethod
    def of(cls, cfg: TrainConfig, num_unlabeled: int) -> Schedule:
        steps_per_epoch = max(1, num_unlabeled // cfg.unlabeled_batch_size)
        total = cfg.epochs * steps_per_epoch
        end = min(total, cfg.max_steps) if cfg.max_steps else total
        return cls(steps_per_epoch, total, end)


def learning_rate_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """lr constant for the first ``decay_start`` of training, then linear to 0 at the end."""
    decay_begin = round(cfg.decay_start * total_steps)
    return optax.join_schedules(
        [
            optax.constant_schedule(cfg.lr),
            optax.linear_schedule(cfg.lr, 0.0, max(1, total_steps - decay_begin)),
        ],
        [decay_begin],
    )


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """Adam (default betas, eps 1e-8, as the authors' code) with the paper's schedule."""
    return optax.adam(learning_rate_schedule(cfg, total_steps))


def metric_names(cfg: ModelConfig) -> list[str]:
    """The per-step training metrics, in logging order."""
    base = ["loss", "class_cost", "denoise_cost", "train_error"]
    return base + [f"denoise_cost_{layer}" for layer in range(cfg.num_layers + 1)]


def init_state(cfg: TrainConfig, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh TrainState at step 0 (parameters from the seed)."""
    params = models.init(rows.stream_key(cfg.seed, rows.PARAMS_STREAM), cfg.model)
    zeros = {name: jnp.zeros((), jnp.float32) for name in metric_names(cfg.model)}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        metric_sums=zeros,
        metric_count=jnp.zeros((), jnp.float32),
    )


def reset_metrics(state: TrainState) -> TrainState:
    """The state with its metric sums (and count) set to zero, after a metrics line."""
    return state._replace(
        metric_sums=jax.tree_util.tree_map(jnp.zeros_like, state.metric_sums),
        metric_count=jnp.zeros_like(state.metric_count))
