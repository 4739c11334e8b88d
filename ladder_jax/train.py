"""Training: the optimiser and its schedule, the compiled multi-step update, evaluation with
population statistics, and ``train_and_evaluate`` (the loop the runner calls).

The whole training set lives on the device as uint8; each compiled call runs many steps
(``lax.scan``) and gathers its batches from index arrays inside the compiled code. Every
random choice (labels, data order, noise) derives from the seed and the step, so a run
restored from a checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from ladder_jax import cpu_rng, losses, model, parallel
from ladder_jax import data as data_lib
from ladder_jax.config import ModelConfig, TrainConfig


class TrainState(NamedTuple):
    """Everything a resumed run needs. metric_sums accumulate since the last metrics line."""

    step: jax.Array  # int32 scalar
    params: model.Params
    opt_state: optax.OptState
    metric_sums: dict[str, jax.Array]
    metric_count: jax.Array  # float32 scalar


class DeviceData(NamedTuple):
    """The training set on the device, and the index sets that define the semi-supervised task.

    images: uint8 [N, n_0]; labels: int32 [N]; labeled: int32 [Nl] row indices with labels
    used for training; unlabeled: int32 [Nu] row indices of the unlabeled set.
    """

    images: jax.Array
    labels: jax.Array
    labeled: jax.Array
    unlabeled: jax.Array


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


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
    return base + [f"denoise_cost_{layer}" for layer in range(len(cfg.layer_sizes))]


def init_state(cfg: TrainConfig, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh TrainState at step 0 (parameters from the seed)."""
    params = model.init(jax.random.fold_in(jax.random.key(cfg.seed), 0), cfg.model)
    zeros = {name: jnp.zeros((), jnp.float32) for name in metric_names(cfg.model)}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        metric_sums=zeros,
        metric_count=jnp.zeros((), jnp.float32),
    )


def _stream_key(seed: int, stream: int) -> jax.Array:
    # Stream 0 initialises parameters, 1 orders labeled data, 2 unlabeled data, 3 noise.
    return jax.random.fold_in(jax.random.key(seed), stream)


def noise_key(seed: int) -> jax.Array:
    """The key whose fold_in with the step draws that step's noise."""
    return _stream_key(seed, 3)


@functools.partial(jax.jit, static_argnames=("batch", "num_steps"))
def index_stream(key: jax.Array, pool: jax.Array, first_step: jax.Array, *, batch: int,
                 num_steps: int) -> jax.Array:
    """Rows of ``pool`` for steps first_step .. first_step + num_steps - 1: [num_steps, batch].

    The pool is read as an endless sequence of its permutations (permutation e drawn from
    fold_in(key, e)); step s takes positions s*batch .. s*batch + batch - 1 of it. So
    every example is seen once per pass, and any step's batch follows from (key, s) alone.
    """
    n = pool.shape[0]
    positions = first_step.astype(jnp.int64 if jax.config.jax_enable_x64 else jnp.int32) * batch
    positions = positions + jnp.arange(num_steps * batch)
    passes = positions // n
    first_pass = passes[0]
    num_passes = -(-num_steps * batch // n) + 1  # static upper bound on passes touched
    perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n))(
        first_pass + jnp.arange(num_passes)
    )
    rows = pool[perms[passes - first_pass, positions % n]]
    return rows.reshape(num_steps, batch)


def train_steps(model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                state: TrainState, data: DeviceData, labeled_rows: jax.Array,
                unlabeled_rows: jax.Array | None, noise_key: jax.Array, *,
                constrain_batch: Callable[[jax.Array], jax.Array] | None = None,
                ) -> tuple[TrainState, jax.Array]:
    """One training step per row of the index arrays (to be traced inside jit; vmappable).

    (state, data, labeled_rows [K, Nl_batch], unlabeled_rows [K, Nu_batch] or None,
    noise_key) -> (state after K steps, per-step total loss [K]). The noise of step s is
    drawn from fold_in(noise_key, s); a run's noise_key is _stream_key(seed, 3).
    constrain_batch (data parallelism) pins each gathered batch's sharding.
    """

    def step_fn(state: TrainState, rows):
        lab, unl, noise = rows
        x_labeled = model.preprocess(data.images[lab])
        y = data.labels[lab]
        x_unlabeled = None if unl is None else model.preprocess(data.images[unl])
        if constrain_batch is not None:
            x_labeled, y = constrain_batch(x_labeled), constrain_batch(y)
            if x_unlabeled is not None:
                x_unlabeled = constrain_batch(x_unlabeled)
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
    cpu_rng.use_unrolled_threefry()  # before lowering: same bits, faster noise on the CPU
    num_steps = labeled_rows.shape[0]
    block = noise_block_size(num_steps)
    noisy_rows = labeled_rows.shape[1] + (0 if unlabeled_rows is None else unlabeled_rows.shape[1])

    def block_fn(state: TrainState, block_rows):
        steps = state.step + jnp.arange(block, dtype=state.step.dtype)
        noise = jax.vmap(lambda s: model.draw_noise(
            jax.random.fold_in(noise_key, s), model_cfg, noisy_rows))(steps)
        return jax.lax.scan(step_fn, state, (*block_rows, noise))

    blocks = jax.tree_util.tree_map(
        lambda a: a.reshape(num_steps // block, block, *a.shape[1:]),
        (labeled_rows, unlabeled_rows))
    state, block_losses = jax.lax.scan(block_fn, state, blocks)
    return state, block_losses.reshape(num_steps)


def noise_block_size(num_steps: int, limit: int = 100) -> int:
    """Steps whose noise is drawn at once: the largest divisor of num_steps up to ``limit``
    (the pre-drawn noise takes about 2.4 MB per paper step, so memory stays bounded)."""
    return max(d for d in range(1, min(num_steps, limit) + 1) if num_steps % d == 0)


def make_train_chunk(
    cfg: TrainConfig, optimizer: optax.GradientTransformation, *, mesh: Any = None,
) -> Callable[[TrainState, DeviceData, jax.Array, jax.Array | None], tuple[TrainState, jax.Array]]:
    """A jitted function running one training step per row of the given index arrays.

    (state, data, labeled_rows [K, Nl_batch], unlabeled_rows [K, Nu_batch] or None,
    noise_key) -> (state after K steps, per-step total loss [K]).
    The noise key is an argument, not a constant, so runs that differ only in their seed
    share one compiled program (and the persistent compilation cache).
    With a ``mesh`` (ladder_jax.parallel), each batch is split over its 'data' axis while
    state and data stay replicated; the step computes the same global-batch numbers.
    """
    model_cfg = cfg.model
    constrain = None if mesh is None else parallel.batch_constraint(mesh)

    def train_chunk(state: TrainState, data: DeviceData, labeled_rows: jax.Array,
                    unlabeled_rows: jax.Array | None, noise_key: jax.Array
                    ) -> tuple[TrainState, jax.Array]:
        return train_steps(model_cfg, optimizer, state, data, labeled_rows, unlabeled_rows,
                           noise_key, constrain_batch=constrain)

    if mesh is None:
        return jax.jit(train_chunk)
    return jax.jit(train_chunk, out_shardings=parallel.replicated(mesh))


@functools.partial(jax.jit, static_argnames=("cfg",))
def population_stats(params: model.Params, cfg: ModelConfig, images: jax.Array,
                     rows: jax.Array) -> model.BnStats:
    """Population batch-norm statistics over ``images[rows]`` (a clean pass, one batch)."""
    return model.population_stats(params, cfg, model.preprocess(images[rows]))


@functools.partial(jax.jit, static_argnames=("cfg",))
def error_rate(params: model.Params, cfg: ModelConfig, bn_stats: model.BnStats,
               images: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of ``images`` (uint8 [N, ...]) whose predicted class differs from ``labels``."""
    log_probs = model.predict_log_probs(params, cfg, model.preprocess(images), bn_stats)
    return jnp.mean(jnp.argmax(log_probs, axis=-1) != labels)


_predict_log_probs = jax.jit(model.predict_log_probs, static_argnames=("cfg",))


def predict(params: model.Params, cfg: ModelConfig, bn_stats: model.BnStats,
            images: np.ndarray) -> np.ndarray:
    """Predicted classes (int [N]) for uint8 images [N, 28, 28] or [N, 784]."""
    log_probs = _predict_log_probs(params, cfg, model.preprocess(jnp.asarray(images)), bn_stats)
    return np.asarray(jnp.argmax(log_probs, axis=-1))


# ----------------------------------------------------------------------------------------
# The experiment: data -> state -> loop of (train chunk, metrics, eval, checkpoint).


@dataclasses.dataclass
class Experiment:
    """The pieces of a run that are not in the TrainState: data, index sets, compiled fns."""

    cfg: TrainConfig
    mnist: data_lib.Mnist
    device_data: DeviceData
    validation_rows: np.ndarray
    schedule: Schedule
    optimizer: optax.GradientTransformation
    train_chunk: Callable[..., Any]
    mesh: Any = None  # a ladder_jax.parallel mesh: data-parallel over its devices

    def put(self, value: Any) -> jax.Array:
        """A host array as a jax.Array next to this experiment's data (replicated on a mesh)."""
        return jnp.asarray(value) if self.mesh is None else parallel.replicate(value, self.mesh)


def index_sets(cfg: TrainConfig, labels: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labeled rows, unlabeled training rows (unsorted), validation rows) from the seed."""
    num_classes = cfg.model.layer_sizes[-1]
    train_rows, val_rows = data_lib.split_validation(labels, cfg.num_validation, cfg.seed,
                                                     num_classes)
    labeled = data_lib.select_labeled(labels, cfg.num_labels, cfg.seed, num_classes,
                                      exclude=val_rows)
    return labeled, train_rows, val_rows


def build_experiment(cfg: TrainConfig, mnist: data_lib.Mnist | None = None, *,
                     mesh: Any = None) -> Experiment:
    """Loads the data (unless given), picks the labeled and validation sets from the seed.

    With a ``mesh`` (ladder_jax.parallel.make_mesh) the data is replicated over its devices
    and each training batch is split over its 'data' axis.
    """
    if mnist is None:
        mnist = data_lib.load_mnist(cfg.data_source, data_dir=cfg.data_dir)
    labels = np.asarray(mnist.train_labels, np.int32)
    labeled, train_rows, val_rows = index_sets(cfg, labels)
    images = mnist.train_images.reshape(len(labels), -1)
    if images.shape[1] != cfg.model.layer_sizes[0]:
        raise data_lib.DataError(
            f"images have {images.shape[1]} pixels but layer_sizes[0] is "
            f"{cfg.model.layer_sizes[0]}; set the input width to {images.shape[1]}")
    device_data = DeviceData(
        images=jnp.asarray(images, jnp.uint8),
        labels=jnp.asarray(labels),
        labeled=jnp.asarray(labeled, jnp.int32),
        unlabeled=jnp.asarray(np.sort(train_rows), jnp.int32),
    )
    if mesh is not None:  # the same values, replicated over the mesh (every process)
        device_data = parallel.replicate(device_data, mesh)
    schedule = Schedule.of(cfg, len(train_rows))
    optimizer = make_optimizer(cfg, schedule.total_steps)
    return Experiment(cfg, mnist, device_data, val_rows, schedule, optimizer,
                      make_train_chunk(cfg, optimizer, mesh=mesh), mesh)


def batch_rows(exp: Experiment, first_step: int, num_steps: int
               ) -> tuple[jax.Array, jax.Array | None]:
    """Image rows of the labeled and unlabeled batches of steps first_step.. (+num_steps)."""
    cfg, d = exp.cfg, exp.device_data
    step = jnp.asarray(first_step, jnp.int32)
    labeled = index_stream(_stream_key(cfg.seed, 1), d.labeled, step,
                           batch=cfg.batch_size, num_steps=num_steps)
    unlabeled = None
    if cfg.uses_unlabeled:
        unlabeled = index_stream(_stream_key(cfg.seed, 2), d.unlabeled, step,
                                 batch=cfg.unlabeled_batch_size, num_steps=num_steps)
    return labeled, unlabeled


def run_steps(exp: Experiment, state: TrainState, num_steps: int) -> tuple[TrainState, np.ndarray]:
    """Runs ``num_steps`` training steps from ``state``; returns the new state and losses [K]."""
    labeled, unlabeled = batch_rows(exp, int(state.step), num_steps)
    state, step_losses = exp.train_chunk(state, exp.device_data, labeled, unlabeled,
                                         noise_key(exp.cfg.seed))
    return state, np.asarray(step_losses)


def evaluate(exp: Experiment, params: model.Params) -> tuple[model.BnStats, dict[str, float]]:
    """Population statistics over the unlabeled set, then test (and validation) error."""
    d = exp.device_data
    stats = population_stats(params, exp.cfg.model, d.images, d.unlabeled)
    test_images = exp.mnist.test_images.reshape(len(exp.mnist.test_labels), -1)
    result = {"test_error": float(error_rate(params, exp.cfg.model, stats,
                                             exp.put(test_images),
                                             exp.put(exp.mnist.test_labels)))}
    if len(exp.validation_rows):
        rows = exp.put(exp.validation_rows)
        result["val_error"] = float(error_rate(params, exp.cfg.model, stats, d.images[rows],
                                               d.labels[rows]))
    return stats, result


def check_finite(step_losses: np.ndarray, first_step: int) -> None:
    """Raises TrainingDiverged naming the first step whose loss is NaN or infinite."""
    bad = np.flatnonzero(~np.isfinite(step_losses))
    if bad.size:
        step = first_step + int(bad[0]) + 1
        raise TrainingDiverged(
            f"loss became {step_losses[bad[0]]} at step {step}; the run stopped and the last "
            "good checkpoint is kept (try a lower --lr)"
        )


def eta_string(seconds: float) -> str:
    """'1h02m' / '3m05s' style duration."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def log_progress(exp: Experiment, state: TrainState, steps_per_s: float) -> None:
    """One progress line: epoch, step, running losses, speed and ETA."""
    step = int(state.step)
    count = max(float(state.metric_count), 1.0)
    avg = {k: float(v) / count for k, v in state.metric_sums.items()}
    sched = exp.schedule
    logging.info(
        "epoch %d/%d step %d/%d loss %.4f (class %.4f, denoise %.4f) train_err %.2f%% "
        "%.1f steps/s ETA %s",
        step // sched.steps_per_epoch + 1, exp.cfg.epochs, step, sched.end_step, avg["loss"],
        avg["class_cost"], avg["denoise_cost"], 100 * avg["train_error"], steps_per_s,
        eta_string((sched.end_step - step) / steps_per_s if steps_per_s > 0 else math.inf),
    )


def _stats_to_tree(stats: model.BnStats) -> dict[str, list[jax.Array]]:
    return {"mean": list(stats.mean[1:]), "var": list(stats.var[1:])}


def _tree_to_stats(tree: dict[str, list[jax.Array]]) -> model.BnStats:
    return model.BnStats([None, *tree["mean"]], [None, *tree["var"]])


def _empty_stats(cfg: ModelConfig) -> model.BnStats:
    zeros = [jnp.zeros((n,)) for n in cfg.layer_sizes[1:]]
    return model.BnStats([None, *zeros], [None, *zeros])


class RunResult(NamedTuple):
    """What train_and_evaluate returns: the final state, its population statistics, the
    results.json dict and the metrics records (one per epoch)."""

    state: TrainState
    bn_stats: model.BnStats
    results: dict[str, Any]
    metrics: list[dict[str, Any]]


def _environment() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("jax", "jaxlib", "optax", "orbax-checkpoint", "numpy", "ladder_jax"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    device = jax.devices()[0]
    return {"device_kind": device.device_kind, "platform": device.platform,
            "num_devices": jax.device_count(), "num_processes": jax.process_count(),
            "versions": versions}


def train_and_evaluate(cfg: TrainConfig, workdir: str, *, restart: bool = False,
                       mnist: data_lib.Mnist | None = None, mesh: Any = None) -> RunResult:
    """Trains (or resumes) the run described by ``cfg`` in ``workdir`` and evaluates it.

    Writes config.json, metrics.jsonl (a record per epoch: step, epoch, lr, each cost,
    train error, test error when evaluated, steps/s, wall time), checkpoints/ and, at the
    end, results.json. Running it again on a finished workdir returns the stored result.
    Raises ConfigError for a workdir holding another config (unless ``restart``) and
    TrainingDiverged when the loss becomes NaN/inf (the last checkpoint stays).
    With a ``mesh`` (ladder_jax.parallel) training is data-parallel over its devices, in
    one or several processes (every process calls this; only process 0 writes files other
    than checkpoints, which orbax saves and restores collectively).
    """
    from ladder_jax import workdir as wd

    exp = build_experiment(cfg, mnist, mesh=mesh)  # bad data/labels fail before the workdir
    wd.prepare(workdir, cfg, restart)
    sched = exp.schedule
    checkpoints = wd.Checkpoints(workdir, cfg.keep_checkpoints)
    writer = wd.MetricsWriter(workdir)
    state = init_state(cfg, exp.optimizer)
    bn_stats = _empty_stats(cfg.model)
    if mesh is not None:
        state, bn_stats = parallel.replicate((state, bn_stats), mesh)
    latest = checkpoints.latest_step()
    if latest is not None:
        restored = checkpoints.restore({"state": state, "bn_stats": _stats_to_tree(bn_stats)})
        state = TrainState(**restored["state"]) if isinstance(restored["state"], dict) \
            else restored["state"]
        bn_stats = _tree_to_stats(restored["bn_stats"])
        logging.info("resuming %s from the checkpoint at step %d", workdir, latest)
    records = writer.truncate_after(latest if latest is not None else -1)
    elapsed_before = records[-1]["wall_time_s"] if records else 0.0
    lr_at = learning_rate_schedule(cfg, sched.total_steps)

    start_time = time.time()
    last_line_time, last_line_step = start_time, int(state.step)
    last_progress = start_time
    train_seconds = 0.0
    steps_this_process = 0
    try:
        while int(state.step) < sched.end_step:
            step = int(state.step)
            epoch_end = (step // sched.steps_per_epoch + 1) * sched.steps_per_epoch
            chunk_end = min(epoch_end, sched.end_step, step + cfg.steps_per_call)
            if cfg.checkpoint_every:
                chunk_end = min(chunk_end, (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every)
            t0 = time.time()
            state, step_losses = run_steps(exp, state, chunk_end - step)
            check_finite(step_losses, step)
            train_seconds += time.time() - t0
            steps_this_process += chunk_end - step
            now = time.time()
            speed = steps_this_process / max(train_seconds, 1e-9)
            if now - last_progress >= 5.0 or chunk_end == sched.end_step:
                log_progress(exp, state, speed)
                last_progress = now
            at_epoch_end = chunk_end % sched.steps_per_epoch == 0
            at_end = chunk_end == sched.end_step
            evaluated = False
            if at_epoch_end or at_end:
                epoch = chunk_end / sched.steps_per_epoch
                record: dict[str, Any] = {"step": chunk_end, "epoch": round(epoch, 4),
                                          "lr": float(lr_at(chunk_end - 1))}
                count = max(float(state.metric_count), 1.0)
                record.update({k: float(v) / count for k, v in state.metric_sums.items()})
                if at_end or (at_epoch_end and int(epoch) % cfg.eval_every == 0):
                    bn_stats, errors = evaluate(exp, state.params)
                    record.update(errors)
                    evaluated = True
                    logging.info("epoch %.2f step %d: test error %.2f%%%s", epoch, chunk_end,
                                 100 * errors["test_error"],
                                 f", validation error {100 * errors['val_error']:.2f}%"
                                 if "val_error" in errors else "")
                now = time.time()
                record["steps_per_s"] = (chunk_end - last_line_step) / max(now - last_line_time,
                                                                          1e-9)
                record["wall_time_s"] = elapsed_before + now - start_time
                last_line_time, last_line_step = now, chunk_end
                writer.write(record)
                records.append(record)
                state = state._replace(
                    metric_sums=jax.tree_util.tree_map(jnp.zeros_like, state.metric_sums),
                    metric_count=jnp.zeros_like(state.metric_count))
            due = cfg.checkpoint_every and chunk_end % cfg.checkpoint_every == 0
            if due or evaluated or at_end:
                if not evaluated:  # a checkpoint carries statistics of its own parameters
                    bn_stats, _ = evaluate_stats_only(exp, state.params)
                checkpoints.save(chunk_end, {"state": state, "bn_stats": _stats_to_tree(bn_stats)})
    finally:
        checkpoints.wait()
        checkpoints.close()
        writer.close()

    results_path = os.path.join(workdir, wd.RESULTS_FILE)
    if steps_this_process == 0 and os.path.exists(results_path):
        results = wd.read_json(results_path)
    else:
        final = records[-1] if records else {}
        if "test_error" not in final:
            bn_stats, final = evaluate(exp, state.params)
        total_train_steps = int(state.step)
        results = {
            "final_test_error": final["test_error"],
            "final_val_error": final.get("val_error"),
            "step": total_train_steps,
            "epochs": total_train_steps / sched.steps_per_epoch,
            "wall_time_s": records[-1]["wall_time_s"] if records else 0.0,
            "steps_per_s": (steps_this_process / train_seconds) if train_seconds else None,
            "num_labels": cfg.num_labels,
            "seed": cfg.seed,
            **_environment(),
        }
        if mesh is not None:
            results["mesh"] = parallel.describe(mesh)
        if wd.is_writer():
            wd.write_json_atomic(results_path, results)
    logging.info("final test error %.2f%%", 100 * results["final_test_error"])
    return RunResult(state, bn_stats, results, records)


def evaluate_stats_only(exp: Experiment, params: model.Params) -> tuple[model.BnStats, None]:
    """Population statistics of ``params`` over the unlabeled set (no test pass)."""
    d = exp.device_data
    return population_stats(params, exp.cfg.model, d.images, d.unlabeled), None


def load_run(workdir: str, step: int | None = None
             ) -> tuple[TrainConfig, TrainState, model.BnStats]:
    """Restores a workdir's config, train state and population statistics (latest step)."""
    from ladder_jax import workdir as wd

    cfg = TrainConfig.from_dict(wd.read_json(os.path.join(workdir, wd.CONFIG_FILE)))
    checkpoints = wd.Checkpoints(workdir, cfg.keep_checkpoints)
    try:
        if checkpoints.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {workdir}; train it first")
        target = {"state": init_state(cfg, make_optimizer(cfg, 1)),
                  "bn_stats": _stats_to_tree(_empty_stats(cfg.model))}
        restored = checkpoints.restore(target, step)
    finally:
        checkpoints.close()
    state = restored["state"]
    if isinstance(state, dict):
        state = TrainState(**state)
    return cfg, state, _tree_to_stats(restored["bn_stats"])


def predict_from_workdir(workdir: str, images: np.ndarray) -> np.ndarray:
    """Predicted classes (int [N]) for uint8 images, with a trained workdir's latest model."""
    cfg, state, bn_stats = load_run(workdir)
    return predict(state.params, cfg.model, bn_stats, images)
