"""The compiled training step: K steps per call (lax.scan), batches gathered inside the compiled
code from the device-resident uint8 training set, and the same function vmapped over a stack
of models when a job trains several.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ladder_jax import losses, models, parallel
from ladder_jax.config import ModelConfig, TrainConfig
from ladder_jax.datasets import base as datasets_base
from ladder_jax.train.state import TrainState, make_optimizer


class DeviceData(NamedTuple):
    """The training images on the device and how to turn them into model inputs.

    images: uint8 [N, H, W, C]; labels: int32 [N]; preprocessing: the dataset's
    (datasets.base.Preprocessing, or None for pixels / 255).
    """

    images: jax.Array
    labels: jax.Array
    preprocessing: Any = None


def model_inputs(data: DeviceData, rows: jax.Array) -> jax.Array:
    """float32 model inputs [len(rows), H, W, C] of the given training rows."""
    return datasets_base.preprocess(data.images[rows], data.preprocessing)


#: At most this many bytes of noise are drawn ahead, and at most this many steps.
NOISE_BLOCK_BYTES = 256 * 2**20
NOISE_BLOCK_STEPS = 100


def noise_block_size(num_steps: int, bytes_per_step: int = 0) -> int:
    """Steps whose noise is drawn at once: the largest divisor of num_steps up to
    NOISE_BLOCK_STEPS whose noise fits in NOISE_BLOCK_BYTES (the block size does not change
    the numbers, only memory and speed)."""
    limit = NOISE_BLOCK_STEPS
    if bytes_per_step:
        limit = max(1, min(limit, NOISE_BLOCK_BYTES // bytes_per_step))
    return max(d for d in range(1, min(num_steps, limit) + 1) if num_steps % d == 0)


def noise_bytes_per_step(model_cfg: ModelConfig, noisy_rows: int) -> int:
    """Bytes of float32 noise one step draws (every noisy layer, every corrupted row)."""
    units = sum(math.prod(shape) for std, shape in zip(model_cfg.noise_std,
                                                       model_cfg.layer_shapes) if std > 0)
    return 4 * noisy_rows * units


def train_steps(model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                state: TrainState, data: DeviceData, labeled_rows: jax.Array,
                unlabeled_rows: jax.Array | None, *, noise_key: jax.Array,
                constrain_batch: Callable[[jax.Array], jax.Array] | None = None,
                ) -> tuple[TrainState, jax.Array]:
    """One training step per row of the index arrays (traced inside jit; vmappable).

    Args:
      model_cfg, optimizer: the model and its optimiser.
      state, data: the state before the steps; the device-resident training set.
      labeled_rows, unlabeled_rows: row indices [K, batch] of each step's labeled and
        unlabeled batch (unlabeled None: a supervised model).
      noise_key: the noise of step s is drawn from fold_in(noise_key, s)
        (datasets.rows.noise_key(seed) for a run).
      constrain_batch: pins each gathered batch's sharding (data parallelism).

    Returns:
      (state after the K steps, per-step total loss [K]).
    """
    pin = constrain_batch or (lambda x: x)

    def step_fn(state: TrainState, rows):
        lab, unl, noise = rows
        x_labeled, y = pin(model_inputs(data, lab)), pin(data.labels[lab])
        x_unlabeled = None if unl is None else pin(model_inputs(data, unl))
        grad_fn = jax.value_and_grad(losses.ladder_loss, has_aux=True)
        (_, metrics), grads = grad_fn(state.params, model_cfg, x_labeled, y, x_unlabeled, None,
                                      noise=noise)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        sums = {k: state.metric_sums[k] + metrics[k] for k in state.metric_sums}
        new_state = TrainState(state.step + 1, params, opt_state, sums,
                               state.metric_count + 1.0)
        return new_state, metrics["loss"]

    # Noise is drawn for a block of steps in one vectorised call before the block's loop:
    # drawn inside the step, XLA fuses the generator into each layer's consumers, where it
    # runs several times slower. Same keys, so the same numbers either way.
    num_steps = labeled_rows.shape[0]
    noisy_rows = labeled_rows.shape[1] + (0 if unlabeled_rows is None else unlabeled_rows.shape[1])
    block = noise_block_size(num_steps, noise_bytes_per_step(model_cfg, noisy_rows))

    def block_fn(state: TrainState, block_rows):
        steps = state.step + jnp.arange(block, dtype=state.step.dtype)
        noise = jax.vmap(lambda s: models.draw_noise(
            jax.random.fold_in(noise_key, s), model_cfg, noisy_rows))(steps)
        return jax.lax.scan(step_fn, state, (*block_rows, noise))

    blocks = jax.tree_util.tree_map(
        lambda a: a.reshape(num_steps // block, block, *a.shape[1:]),
        (labeled_rows, unlabeled_rows))
    state, block_losses = jax.lax.scan(block_fn, state, blocks)
    return state, block_losses.reshape(num_steps)


def make_chunk(cfg: TrainConfig, total_steps: int, *, num_models: int = 1,
               key_impl: str | None = None, mesh: Any = None,
               ) -> tuple[optax.GradientTransformation, Callable[..., Any]]:
    """(optimizer, compiled chunk) for a job of ``num_models`` models shaped like ``cfg``.

    The chunk maps (state, data, labeled_rows, unlabeled_rows or None, noise key) to
    (state, per-step losses). One model: rows [n, B], a PRNG key, losses [n], compiled
    without vmap. Several models: everything stacked on a leading model axis (rows
    [K, n, B], key data [K, ...] of the ``key_impl`` PRNG), the step vmapped over it. The
    noise key is an argument, so seeds share one program. With a ``mesh``
    (ladder_jax.parallel) batches split over 'data', models over 'replica'. Cached on what
    the program depends on (the model and the schedule), so jobs of one shape reuse it.
    """
    schedule = (cfg.lr, cfg.decay_start, cfg.epochs, total_steps)
    return _chunk(cfg.model, schedule, num_models > 1, key_impl, mesh)


@functools.lru_cache(maxsize=16)
def _chunk(model_cfg, schedule, stacked, key_impl, mesh):
    lr, decay_start, epochs, total_steps = schedule
    schedule_cfg = TrainConfig(model=model_cfg, lr=lr, decay_start=decay_start, epochs=epochs)
    optimizer = make_optimizer(schedule_cfg, total_steps)
    constrain = None if mesh is None else parallel.batch_constraint(mesh)

    def one_model(state, data, labeled_rows, unlabeled_rows, key):
        if stacked:  # keys travel as raw key data through vmap
            key = jax.random.wrap_key_data(key, impl=key_impl)
        return train_steps(model_cfg, optimizer, state, data, labeled_rows, unlabeled_rows,
                           noise_key=key, constrain_batch=constrain)

    if not stacked:
        fn, out = one_model, (None if mesh is None else parallel.replicated(mesh))
    else:
        spmd_axis = None if mesh is None else parallel.REPLICA_AXIS
        fn = jax.vmap(one_model, in_axes=(0, None, 0, 0, 0), spmd_axis_name=spmd_axis)
        out = None if mesh is None else parallel.replica_sharded(mesh)
    return optimizer, (jax.jit(fn) if out is None else jax.jit(fn, out_shardings=out))
