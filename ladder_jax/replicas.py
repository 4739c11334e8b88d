"""Replicas: K independent ladder models trained together in ONE compiled program.

The models of a group differ only in their seed and label count (``shape_key`` says which
configs can share a group). Parameters, optimiser states and noise keys are stacked along a
leading replica axis and the training step is ``jax.vmap``-ed over it; each replica's
batches come from its own labeled set and data order, drawn exactly as a solo run draws
them (``train.index_stream`` with the replica's own seed), so replica i follows the solo run
of ``cfgs[i]`` up to float reordering of the batched matmuls. On a mesh
(``parallel.make_mesh(n, K)``) the replica axis is split over the mesh's 'replica' devices
and each replica's batch over its 'data' devices.

Why: a small model leaves a CPU core or an accelerator mostly idle; K models in one
program share each kernel launch and the resident training set (see docs/scale_out.md).

Layout of a group's workdir::

    workdir/replicas.json                      the group's configs (resume check)
    workdir/checkpoints/                       ONE orbax checkpoint of the stacked state
    workdir/replica_seed<S>_labels<N>/         per replica, like a solo run's workdir:
        config.json  metrics.jsonl  results.json

Entry point: ``train_replicas_and_evaluate(cfgs, workdir, mnist=None)``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from ladder_jax import data as data_lib
from ladder_jax import model, parallel, train
from ladder_jax import workdir as wd
from ladder_jax.config import ConfigError, TrainConfig

GROUP_FILE = "replicas.json"
# Fields that may differ between the replicas of one group.
PER_REPLICA_FIELDS = ("seed", "num_labels")


def shape_key(cfg: TrainConfig) -> str:
    """A string equal for configs that can train in one replica group: every field but
    ``seed`` and ``num_labels`` (model, batch sizes, schedule, data source, ...) is equal."""
    d = cfg.to_dict()
    for name in PER_REPLICA_FIELDS:
        d.pop(name)
    return json.dumps(d, sort_keys=True)


def replica_name(cfg: TrainConfig) -> str:
    """The replica's subdirectory name: 'replica_seed<S>_labels<N>'."""
    return f"replica_seed{cfg.seed}_labels{cfg.num_labels}"


def replica_workdir(workdir: str, cfg: TrainConfig) -> str:
    """Where replica ``cfg`` of the group in ``workdir`` writes config/metrics/results."""
    return os.path.join(workdir, replica_name(cfg))


def check_group(cfgs: Sequence[TrainConfig]) -> None:
    """Raises ConfigError unless ``cfgs`` can train together (see ``shape_key``)."""
    if not cfgs:
        raise ConfigError("a replica group needs at least one config")
    first = cfgs[0].to_dict()
    for cfg in cfgs[1:]:
        if shape_key(cfg) != shape_key(cfgs[0]):
            other = cfg.to_dict()
            fields = sorted(k for k in first if k not in PER_REPLICA_FIELDS
                            and first[k] != other[k])
            raise ConfigError(
                f"replicas may differ only in {' and '.join(PER_REPLICA_FIELDS)}; "
                f"{replica_name(cfg)} also differs in {', '.join(fields)}")
    names = [replica_name(c) for c in cfgs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"replica group lists {', '.join(dupes)} more than once")


# ----------------------------------------------------------------------------------------
# The group: shared data, per-replica index sets, the vmapped compiled chunk.


@dataclasses.dataclass
class ReplicaGroup:
    """What a group needs besides its (stacked) TrainState."""

    cfgs: list[TrainConfig]
    mnist: data_lib.Mnist
    data: train.DeviceData  # images/labels for training (global on a mesh); no index sets
    local: train.DeviceData  # images/labels on this process's default device (evaluation)
    labeled: list[jax.Array]  # per replica: its labeled rows
    unlabeled: list[jax.Array]  # per replica: its unlabeled rows (sorted)
    validation_rows: list[np.ndarray]
    schedule: train.Schedule
    optimizer: optax.GradientTransformation
    noise_key_data: jax.Array  # [K, ...] key data of _stream_key(seed_i, 3)
    train_chunk: Callable[..., Any]
    mesh: Any = None

    @property
    def num_replicas(self) -> int:
        return len(self.cfgs)


def make_group_chunk(cfg: TrainConfig, total_steps: int, key_impl: Any, mesh: Any = None
                     ) -> tuple[optax.GradientTransformation, Callable[..., Any]]:
    """(optimizer, jit(vmap(train.train_steps))): the chunk maps (stacked state, data,
    labeled_rows [K, n, Bl], unlabeled_rows [K, n, Bu] or None, noise key data [K, ...])
    to (state, losses [K, n]).

    Cached on what the program depends on (model, optimiser schedule, mesh), so groups of
    the same shape (a sweep's cells, a resumed group) reuse one compiled program.
    """
    return _group_chunk(cfg.model, cfg.lr, cfg.decay_start, cfg.epochs, total_steps,
                        str(key_impl), mesh)


@functools.lru_cache(maxsize=16)
def _group_chunk(model_cfg: Any, lr: float, decay_start: float, epochs: int,
                 total_steps: int, key_impl: str, mesh: Any):
    cfg = TrainConfig(model=model_cfg, lr=lr, decay_start=decay_start, epochs=epochs)
    optimizer = train.make_optimizer(cfg, total_steps)
    constrain = None if mesh is None else parallel.batch_constraint(mesh)

    def one_replica(state, data, labeled_rows, unlabeled_rows, key_data):
        key = jax.random.wrap_key_data(key_data, impl=key_impl)
        return train.train_steps(cfg.model, optimizer, state, data, labeled_rows,
                                 unlabeled_rows, key, constrain_batch=constrain)

    spmd_axis = None if mesh is None else parallel.REPLICA_AXIS
    batched = jax.vmap(one_replica, in_axes=(0, None, 0, 0, 0), spmd_axis_name=spmd_axis)
    if mesh is None:
        return optimizer, jax.jit(batched)
    return optimizer, jax.jit(batched, out_shardings=parallel.replica_sharded(mesh))


def build_group(cfgs: Sequence[TrainConfig], mnist: data_lib.Mnist | None = None, *,
                mesh: Any = None) -> ReplicaGroup:
    """Loads the data (unless given) and picks each replica's labeled/validation sets."""
    cfgs = list(cfgs)
    check_group(cfgs)
    cfg = cfgs[0]
    if mnist is None:
        mnist = data_lib.load_mnist(cfg.data_source, data_dir=cfg.data_dir)
    labels = np.asarray(mnist.train_labels, np.int32)
    images = mnist.train_images.reshape(len(labels), -1)
    if images.shape[1] != cfg.model.layer_sizes[0]:
        raise data_lib.DataError(
            f"images have {images.shape[1]} pixels but layer_sizes[0] is "
            f"{cfg.model.layer_sizes[0]}; set the input width to {images.shape[1]}")
    empty = jnp.zeros((0,), jnp.int32)
    local = train.DeviceData(jnp.asarray(images, jnp.uint8), jnp.asarray(labels), empty, empty)
    if mesh is not None:
        shared = train.DeviceData(*parallel.replicate((local.images, local.labels), mesh),
                                  *parallel.replicate((empty, empty), mesh))
    else:
        shared = local
    labeled, unlabeled, validation = [], [], []
    for c in cfgs:
        lab, train_rows, val_rows = train.index_sets(c, labels)
        labeled.append(jnp.asarray(lab, jnp.int32))
        unlabeled.append(jnp.asarray(np.sort(train_rows), jnp.int32))
        validation.append(val_rows)
    schedule = train.Schedule.of(cfg, int(unlabeled[0].shape[0]))
    keys = jnp.stack([train._stream_key(c.seed, 3) for c in cfgs])
    key_data = jax.random.key_data(keys)
    if mesh is not None:
        key_data = parallel.to_global(key_data, parallel.replica_sharded(mesh))
    optimizer, chunk = make_group_chunk(cfg, schedule.total_steps, jax.random.key_impl(keys),
                                        mesh)
    return ReplicaGroup(cfgs, mnist, shared, local, labeled, unlabeled, validation, schedule,
                        optimizer, key_data, chunk, mesh)


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _place(group: ReplicaGroup, stacked: Any) -> Any:
    """Stacked arrays onto the mesh (replica axis split over 'replica'), if there is one."""
    if group.mesh is None:
        return stacked
    return parallel.to_global(stacked, parallel.replica_sharded(group.mesh))


def init_group_state(group: ReplicaGroup) -> train.TrainState:
    """The stacked TrainState at step 0: replica i starts exactly as a solo run of cfgs[i]."""
    return _place(group, _stack([train.init_state(c, group.optimizer) for c in group.cfgs]))


def group_batch_rows(group: ReplicaGroup, first_step: int, num_steps: int
                     ) -> tuple[jax.Array, jax.Array | None]:
    """Stacked batch rows [K, num_steps, batch] of every replica (as its solo run's)."""
    step = jnp.asarray(first_step, jnp.int32)
    labeled, unlabeled = [], []
    for i, cfg in enumerate(group.cfgs):
        labeled.append(train.index_stream(train._stream_key(cfg.seed, 1), group.labeled[i],
                                          step, batch=cfg.batch_size, num_steps=num_steps))
        if cfg.uses_unlabeled:
            unlabeled.append(train.index_stream(
                train._stream_key(cfg.seed, 2), group.unlabeled[i], step,
                batch=cfg.unlabeled_batch_size, num_steps=num_steps))
    if group.mesh is None:
        return jnp.stack(labeled), (jnp.stack(unlabeled) if unlabeled else None)
    return (_place(group, np.stack(labeled)),
            _place(group, np.stack(unlabeled)) if unlabeled else None)


def run_group_steps(group: ReplicaGroup, state: train.TrainState, num_steps: int
                    ) -> tuple[train.TrainState, np.ndarray]:
    """``num_steps`` steps of every replica; returns the new state and losses [K, num_steps]."""
    step = int(parallel.to_host(state.step)[0])
    labeled, unlabeled = group_batch_rows(group, step, num_steps)
    state, losses = group.train_chunk(state, group.data, labeled, unlabeled,
                                      group.noise_key_data)
    return state, parallel.to_host(losses)


def unstack(tree: Any, index: int) -> Any:
    """Replica ``index`` of a stacked tree, as arrays on this process's default device."""
    return _take(parallel.to_host(tree), index)


def _take(host_tree: Any, index: int) -> Any:
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x[index]), host_tree)


def evaluate_replica(group: ReplicaGroup, index: int, params: model.Params,
                     stats_only: bool = False) -> tuple[model.BnStats, dict[str, float]]:
    """As ``train.evaluate`` for replica ``index`` (its own unlabeled and validation sets)."""
    cfg, d = group.cfgs[index], group.local
    stats = train.population_stats(params, cfg.model, d.images, group.unlabeled[index])
    if stats_only:
        return stats, {}
    mnist = group.mnist
    test_images = mnist.test_images.reshape(len(mnist.test_labels), -1)
    result = {"test_error": float(train.error_rate(params, cfg.model, stats,
                                                   jnp.asarray(test_images),
                                                   jnp.asarray(mnist.test_labels)))}
    if len(group.validation_rows[index]):
        rows = jnp.asarray(group.validation_rows[index])
        result["val_error"] = float(train.error_rate(params, cfg.model, stats, d.images[rows],
                                                     d.labels[rows]))
    return stats, result


# ----------------------------------------------------------------------------------------
# The loop.


def _prepare(workdir: str, cfgs: list[TrainConfig], dirs: list[str], restart: bool) -> None:
    """The group's replicas.json and each replica's config.json (ConfigError on mismatch)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, GROUP_FILE)
    wanted = [c.to_dict() for c in cfgs]
    if os.path.exists(path):
        try:
            existing = wd.read_json(path)
        except (OSError, json.JSONDecodeError):
            existing = None
        if existing != wanted and not restart:
            raise ConfigError(
                f"workdir {workdir} holds another replica group; pass restart=True "
                "(--restart) to discard it, or choose another workdir")
    if restart:
        wd.clear(workdir)
    for cfg, rdir in zip(cfgs, dirs):
        wd.prepare(rdir, cfg, restart)
    if wd.is_writer():
        wd.write_json_atomic(path, wanted)


def train_replicas_and_evaluate(
    cfgs: Sequence[TrainConfig], workdir: str, mnist: data_lib.Mnist | None = None, *,
    restart: bool = False, mesh: Any = None, replica_dirs: Sequence[str] | None = None,
) -> list[train.RunResult]:
    """Trains (or resumes) the models ``cfgs`` together in one program, then evaluates each.

    cfgs: configs that differ only in ``seed`` and ``num_labels`` (``shape_key`` groups
        them; anything else raises ConfigError). Label counts may differ ('all' included).
    workdir: the group's directory (layout in the module docstring). Replica i writes
        ``replica_workdir(workdir, cfgs[i])``/{config.json, metrics.jsonl, results.json},
        the same files and fields as ``train.train_and_evaluate`` (results.json adds
        'num_replicas' and 'replica_group'); the stacked state is checkpointed once in
        workdir/checkpoints. Running it again resumes, or returns the stored results.
    mnist: the data set (loaded from cfgs[0].data_source when None).
    restart: discard an existing group in ``workdir`` first.
    mesh: ``parallel.make_mesh(num_devices, len(cfgs))`` to spread replicas (and batches)
        over devices; None runs on the default device.
    replica_dirs: where each replica writes config.json/metrics.jsonl/results.json instead
        of ``replica_workdir(workdir, cfg)`` (e.g. a sweep's cell directories); the group's
        checkpoints and replicas.json stay in ``workdir``.

    Returns one ``train.RunResult`` per config, in the order of ``cfgs``: the replica's own
    final TrainState and population statistics, its results.json dict and its metrics
    records. Each equals a solo ``train_and_evaluate`` of that config within float
    tolerance (vmapped matmuls may round differently). Raises TrainingDiverged (naming the
    replica) if any replica's loss becomes NaN/inf.
    """
    cfgs = list(cfgs)
    check_group(cfgs)
    dirs = list(replica_dirs) if replica_dirs is not None else [
        replica_workdir(workdir, c) for c in cfgs]
    if len(dirs) != len(cfgs) or len(set(map(os.path.abspath, dirs))) != len(dirs):
        raise ConfigError(f"replica_dirs needs {len(cfgs)} distinct directories, got {dirs}")
    _prepare(workdir, cfgs, dirs, restart)
    group = build_group(cfgs, mnist, mesh=mesh)
    k, sched, cfg0 = group.num_replicas, group.schedule, cfgs[0]
    names = train.metric_names(cfg0.model)
    checkpoints = wd.Checkpoints(workdir, cfg0.keep_checkpoints)
    writers = [wd.MetricsWriter(d) for d in dirs]
    state = init_group_state(group)
    bn_stats = [train._empty_stats(cfg0.model) for _ in cfgs]
    latest = checkpoints.latest_step()
    if latest is not None:
        target = {"state": state,
                  "bn_stats": _place(group, _stack([train._stats_to_tree(s) for s in bn_stats]))}
        restored = checkpoints.restore(target)
        state = restored["state"]
        if isinstance(state, dict):
            state = train.TrainState(**state)
        bn_stats = [train._tree_to_stats(unstack(restored["bn_stats"], i)) for i in range(k)]
        logging.info("resuming replica group %s from the checkpoint at step %d", workdir, latest)
    records = [w.truncate_after(latest if latest is not None else -1) for w in writers]
    elapsed_before = records[0][-1]["wall_time_s"] if records[0] else 0.0
    lr_at = train.learning_rate_schedule(cfg0, sched.total_steps)

    def current_step() -> int:
        return int(parallel.to_host(state.step)[0])

    start_time = time.time()
    last_line_time, last_line_step = start_time, current_step()
    last_progress = start_time
    train_seconds = 0.0
    steps_this_process = 0
    try:
        while (step := current_step()) < sched.end_step:
            epoch_end = (step // sched.steps_per_epoch + 1) * sched.steps_per_epoch
            chunk_end = min(epoch_end, sched.end_step, step + cfg0.steps_per_call)
            if cfg0.checkpoint_every:
                chunk_end = min(chunk_end,
                                (step // cfg0.checkpoint_every + 1) * cfg0.checkpoint_every)
            t0 = time.time()
            state, losses = run_group_steps(group, state, chunk_end - step)
            for i in range(k):
                try:
                    train.check_finite(losses[i], step)
                except train.TrainingDiverged as e:
                    raise train.TrainingDiverged(f"{replica_name(cfgs[i])}: {e}") from None
            train_seconds += time.time() - t0
            steps_this_process += chunk_end - step
            now = time.time()
            speed = steps_this_process / max(train_seconds, 1e-9)
            if now - last_progress >= 5.0 or chunk_end == sched.end_step:
                _log_progress(group, chunk_end, losses, speed)
                last_progress = now
            at_epoch_end = chunk_end % sched.steps_per_epoch == 0
            at_end = chunk_end == sched.end_step
            evaluated = False
            if at_epoch_end or at_end:
                epoch = chunk_end / sched.steps_per_epoch
                sums = parallel.to_host(state.metric_sums)
                counts = parallel.to_host(state.metric_count)
                do_eval = at_end or (at_epoch_end and int(epoch) % cfg0.eval_every == 0)
                params = parallel.to_host(state.params) if do_eval else None
                for i in range(k):
                    record: dict[str, Any] = {"step": chunk_end, "epoch": round(epoch, 4),
                                              "lr": float(lr_at(chunk_end - 1))}
                    count = max(float(counts[i]), 1.0)
                    record.update({n: float(sums[n][i]) / count for n in names})
                    if do_eval:
                        bn_stats[i], errors = evaluate_replica(group, i, _take(params, i))
                        record.update(errors)
                    records[i].append(record)
                evaluated = do_eval
                if do_eval:
                    logging.info("replicas, epoch %.2f step %d: test error %s", epoch, chunk_end,
                                 ", ".join(f"{100 * r[-1]['test_error']:.2f}%" for r in records))
                now = time.time()
                for i in range(k):
                    records[i][-1]["steps_per_s"] = (chunk_end - last_line_step) / max(
                        now - last_line_time, 1e-9)
                    records[i][-1]["wall_time_s"] = elapsed_before + now - start_time
                    writers[i].write(records[i][-1])
                last_line_time, last_line_step = now, chunk_end
                state = state._replace(
                    metric_sums=jax.tree_util.tree_map(jnp.zeros_like, state.metric_sums),
                    metric_count=jnp.zeros_like(state.metric_count))
            due = cfg0.checkpoint_every and chunk_end % cfg0.checkpoint_every == 0
            if due or evaluated or at_end:
                if not evaluated:  # a checkpoint carries statistics of its own parameters
                    params = parallel.to_host(state.params)
                    bn_stats = [evaluate_replica(group, i, _take(params, i), stats_only=True)[0]
                                for i in range(k)]
                stacked_stats = _place(group, _stack([train._stats_to_tree(s) for s in bn_stats]))
                checkpoints.save(chunk_end, {"state": state, "bn_stats": stacked_stats})
    finally:
        checkpoints.wait()
        checkpoints.close()
        for w in writers:
            w.close()

    results_paths = [os.path.join(d, wd.RESULTS_FILE) for d in dirs]
    final_step = current_step()
    out = []
    for i, cfg in enumerate(cfgs):
        state_i = unstack(state, i)
        if steps_this_process == 0 and os.path.exists(results_paths[i]):
            results = wd.read_json(results_paths[i])
        else:
            final = records[i][-1] if records[i] else {}
            if "test_error" not in final:
                bn_stats[i], final = evaluate_replica(group, i, state_i.params)
            results = {
                "final_test_error": final["test_error"],
                "final_val_error": final.get("val_error"),
                "step": final_step,
                "epochs": final_step / sched.steps_per_epoch,
                "wall_time_s": records[i][-1]["wall_time_s"] if records[i] else 0.0,
                "steps_per_s": (steps_this_process / train_seconds) if train_seconds else None,
                "num_labels": cfg.num_labels,
                "seed": cfg.seed,
                "num_replicas": k,
                "replica_group": workdir,
                **train._environment(),
            }
            if mesh is not None:
                results["mesh"] = parallel.describe(mesh)
            if wd.is_writer():
                wd.write_json_atomic(results_paths[i], results)
        out.append(train.RunResult(state_i, bn_stats[i], results, records[i]))
    logging.info("final test errors: %s", ", ".join(
        f"{replica_name(c)} {100 * r.results['final_test_error']:.2f}%" for c, r in zip(cfgs, out)))
    return out


def _log_progress(group: ReplicaGroup, step: int, losses: np.ndarray, speed: float) -> None:
    sched = group.schedule
    last = losses[:, -1]
    eta = (sched.end_step - step) / speed if speed > 0 else math.inf
    logging.info("%d replicas: epoch %d/%d step %d/%d loss %.4f..%.4f %.1f steps/s per model "
                 "ETA %s", group.num_replicas, step // sched.steps_per_epoch + 1,
                 group.cfgs[0].epochs, step, sched.end_step, float(last.min()),
                 float(last.max()), speed, train.eta_string(eta))
