"""THE training loop: a job of K >= 1 models, trained chunk by chunk, with a metrics line per
epoch, evaluations, checkpoints and results.json per model.

Layout: each model writes config.json, metrics.jsonl and results.json into its run
directory; the job's checkpoints (one orbax checkpoint of the whole, possibly stacked,
state) live in its state directory. A single run uses one directory for both. A group of
K > 1 models also writes its configs to <state dir>/replicas.json (the resume check).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
from absl import logging

from ladder_jax import datasets, models, parallel
from ladder_jax.config import ConfigError, TrainConfig
from ladder_jax.train import evaluate as eval_lib
from ladder_jax.train import job as job_lib
from ladder_jax.train import workdir as wd
from ladder_jax.train.state import TrainState, learning_rate_schedule, reset_metrics

GROUP_FILE, MEMBER_FILE = wd.GROUP_FILE, wd.MEMBER_FILE

#: progress(step, end_step), called after every compiled call.
Progress = Callable[[int, int], None]


class RunResult(NamedTuple):
    """One model's outcome: its final TrainState and population statistics (on the default
    device), its results.json dict and its metrics records (one per epoch)."""

    state: TrainState
    bn_stats: models.BnStats
    results: dict[str, Any]
    metrics: list[dict[str, Any]]


def train_and_evaluate(cfg: TrainConfig, workdir: str, *, restart: bool = False,
                       dataset: datasets.Dataset | None = None, mesh: Any = None,
                       reference: dict[int, float] | None = None,
                       progress: Progress | None = None) -> RunResult:
    """Trains (or resumes) the run ``cfg`` in ``workdir`` and evaluates it (see train_models).

    With a ``mesh`` (ladder_jax.parallel) training is data-parallel over its devices, in one
    or several processes (every process calls this; only process 0 writes files other than
    checkpoints, which orbax saves and restores collectively).
    """
    return train_models([cfg], workdir, [workdir], restart=restart, dataset=dataset,
                        mesh=mesh, reference=reference, progress=progress)[0]


def replica_workdir(workdir: str, cfg: TrainConfig) -> str:
    """Where model ``cfg`` of a group trained in ``workdir`` writes its files by default."""
    return os.path.join(workdir, f"replica_{job_lib.model_name(cfg)}")


def train_group(cfgs: Sequence[TrainConfig], workdir: str,
                dataset: datasets.Dataset | None = None, *, restart: bool = False,
                mesh: Any = None, run_dirs: Sequence[str] | None = None,
                progress: Progress | None = None) -> list[RunResult]:
    """Trains K models of one shape (differing only in seed and num_labels) in ONE compiled
    program; model i writes into run_dirs[i] (default ``replica_workdir(workdir, cfgs[i])``)
    and equals its single run up to float reordering of the batched matmuls. On a mesh
    (``parallel.make_mesh(n, K)``) models split over 'replica', batches over 'data'."""
    dirs = list(run_dirs) if run_dirs is not None else [replica_workdir(workdir, c)
                                                        for c in cfgs]
    return train_models(cfgs, workdir, dirs, restart=restart, dataset=dataset, mesh=mesh,
                        progress=progress)


def train_models(cfgs: Sequence[TrainConfig], state_dir: str, run_dirs: Sequence[str], *,
                 restart: bool = False, dataset: datasets.Dataset | None = None,
                 mesh: Any = None, reference: dict[int, float] | None = None,
                 progress: Progress | None = None) -> list[RunResult]:
    """Trains (or resumes) the job ``cfgs`` and evaluates every model.

    Writes, per model, run_dirs[i]/config.json, metrics.jsonl (a record per epoch: step,
    epoch, lr, each cost, train error, test error when evaluated, steps/s, wall time) and at
    the end results.json; the job's checkpoints go to state_dir/checkpoints. Running it
    again resumes from the newest intact checkpoint, or returns the stored results. Raises
    ConfigError for directories holding another run (unless ``restart``) and
    TrainingDiverged when a loss becomes NaN/inf (the last checkpoint stays). ``reference``
    (epoch -> test error) is printed beside each evaluation; ``progress(step, end_step)`` is
    called after every compiled call (e.g. a notebook's progress bar).
    """
    cfgs, run_dirs = list(cfgs), list(run_dirs)
    if len(run_dirs) != len(cfgs) or len(set(map(os.path.abspath, run_dirs))) != len(cfgs):
        raise ConfigError(f"{len(cfgs)} models need {len(cfgs)} distinct run directories, "
                          f"got {run_dirs}")
    job = job_lib.build_job(cfgs, dataset, mesh=mesh)  # bad data fails before any file
    _prepare(job, state_dir, run_dirs, restart)
    checkpoints = wd.Checkpoints(state_dir, cfgs[0].keep_checkpoints)
    writers = [wd.MetricsWriter(d) for d in run_dirs]
    try:
        state, bn_stats, latest = _restore_or_init(job, checkpoints)
        records = [w.truncate_after(-1 if latest is None else latest) for w in writers]
        clock = _Clock(records[0][-1]["wall_time_s"] if records[0] else 0.0,
                       job_lib.current_step(job, state))
        state, bn_stats = _loop(job, state, bn_stats, checkpoints, writers, records, clock,
                                reference, progress)
        checkpoints.wait()  # CheckpointError if the last save failed
    except BaseException:
        with contextlib.suppress(wd.CheckpointError):  # the error in flight says more
            checkpoints.wait()
        for w in writers:
            with contextlib.suppress(OSError):  # e.g. the same full disk
                w.close()
        raise
    finally:
        try:
            checkpoints.close()
        finally:
            for w in writers:
                w.close()
    return _results(job, state, bn_stats, records, clock, state_dir, run_dirs)


class _Clock:
    """Wall time and training speed of this process's part of the run."""

    def __init__(self, elapsed_before: float, step: int):
        self.start = self.last_line = self.last_progress = time.time()
        self.elapsed_before = elapsed_before
        self.last_line_step = step
        self.train_seconds = 0.0
        self.steps = 0

    @property
    def speed(self) -> float:
        return self.steps / self.train_seconds if self.train_seconds else 0.0


def _loop(job, state, bn_stats, checkpoints, writers, records, clock, reference, progress):
    """Chunks until the end step; returns the final state and population statistics."""
    sched, cfg = job.schedule, job.cfgs[0]
    while (step := job_lib.current_step(job, state)) < sched.end_step:
        end = min((step // sched.steps_per_epoch + 1) * sched.steps_per_epoch,
                  sched.end_step, step + cfg.steps_per_call)
        if cfg.checkpoint_every:
            end = min(end, (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every)
        t0 = time.time()
        state, losses = job_lib.run_steps(job, state, end - step)
        clock.train_seconds += time.time() - t0
        clock.steps += end - step
        if progress is not None:
            progress(end, sched.end_step)
        if time.time() - clock.last_progress >= 5.0 or end == sched.end_step:
            _log_progress(job, state, losses, clock.speed)
            clock.last_progress = time.time()
        at_end = end == sched.end_step
        evaluated = False
        if end % sched.steps_per_epoch == 0 or at_end:
            epoch = end / sched.steps_per_epoch
            evaluated = at_end or int(epoch) % cfg.eval_every == 0
            bn_stats = _write_records(job, state, end, evaluated, bn_stats, writers, records,
                                      clock, reference)
            state = reset_metrics(state)
        if evaluated or at_end or (cfg.checkpoint_every and end % cfg.checkpoint_every == 0):
            if not evaluated:  # a checkpoint carries statistics of its own parameters
                params = job_lib.split(job, state.params)
                bn_stats = [job_lib.evaluate_model(job, i, p, stats_only=True)[0]
                            for i, p in enumerate(params)]
            checkpoints.save(end, _checkpoint_item(job, state, bn_stats))
    return state, bn_stats


def _checkpoint_item(job: job_lib.Job, state: TrainState, bn_stats) -> dict[str, Any]:
    return {"state": state,
            "bn_stats": job_lib.combine(job, [eval_lib.stats_to_tree(s) for s in bn_stats])}


def _restore_or_init(job: job_lib.Job, checkpoints: wd.Checkpoints):
    """(state, per-model population statistics, restored step or None)."""
    state = job_lib.init_job_state(job)
    bn_stats = [eval_lib.empty_stats(c.model) for c in job.cfgs]
    found = checkpoints.restore_newest_intact(_checkpoint_item(job, state, bn_stats))
    if found is None:
        return state, bn_stats, None
    restored, step = found
    state = restored["state"]
    if isinstance(state, dict):
        state = TrainState(**state)
    bn_stats = [eval_lib.tree_to_stats(t) for t in job_lib.split(job, restored["bn_stats"])]
    logging.info("resuming %s from the checkpoint at step %d", checkpoints.directory, step)
    return state, bn_stats, step


def _write_records(job, state, step, evaluate, bn_stats, writers, records, clock, reference):
    """One metrics record per model for the epoch ending at ``step`` (with test and
    validation error when ``evaluate``); returns the models' population statistics."""
    sched = job.schedule
    epoch = step / sched.steps_per_epoch
    lr = float(learning_rate_schedule(job.cfgs[0], sched.total_steps)(step - 1))
    per_model = job_lib.split(job, (state.metric_sums, state.metric_count))
    params = job_lib.split(job, state.params) if evaluate else None
    bn_stats = list(bn_stats)
    now = time.time()
    for i, (sums, counts) in enumerate(per_model):
        count = max(float(counts), 1.0)
        record: dict[str, Any] = {"step": step, "epoch": round(epoch, 4), "lr": lr}
        record.update({k: float(v) / count for k, v in sums.items()})
        if evaluate:
            bn_stats[i], errors = job_lib.evaluate_model(job, i, params[i])
            record.update(errors)
        record["steps_per_s"] = (step - clock.last_line_step) / max(now - clock.last_line, 1e-9)
        record["wall_time_s"] = clock.elapsed_before + time.time() - clock.start
        writers[i].write(record)
        records[i].append(record)
    clock.last_line, clock.last_line_step = time.time(), step
    if evaluate:
        _log_evaluation(job, epoch, step, [r[-1] for r in records], reference)
    return bn_stats


def _log_evaluation(job, epoch, step, last, reference) -> None:
    errors = ", ".join(f"{100 * r['test_error']:.2f}%" for r in last)
    val = "" if "val_error" not in last[0] else ", validation error " + ", ".join(
        f"{100 * r['val_error']:.2f}%" for r in last)
    ref = ""
    if reference:
        known = [e for e in sorted(reference) if e <= epoch]
        if known:
            ref = f" (reference at epoch {known[-1]}: {reference[known[-1]]:.2f}%)"
    logging.info("epoch %.2f step %d: test error %s%s%s", epoch, step, errors, val, ref)


def _log_progress(job: job_lib.Job, state: TrainState, losses, speed: float) -> None:
    """One progress line: epoch, step, running losses, speed and ETA."""
    sched, step = job.schedule, job_lib.current_step(job, state)
    eta = eta_string((sched.end_step - step) / speed if speed > 0 else math.inf)
    epochs = job.cfgs[0].epochs
    where = f"epoch {min(step // sched.steps_per_epoch + 1, epochs)}/{epochs} step " \
            f"{step}/{sched.end_step}"
    if job.stacked:
        last = losses[:, -1]
        logging.info("%d models: %s loss %.4f..%.4f %s per model ETA %s", job.num_models,
                     where, float(last.min()), float(last.max()), speed_string(speed), eta)
        return
    sums, count = parallel.to_host((state.metric_sums, state.metric_count))
    avg = {k: float(v) / max(float(count), 1.0) for k, v in sums.items()}
    logging.info("%s loss %.4f (class %.4f, denoise %.4f) train_err %.2f%% %s ETA %s", where,
                 avg["loss"], avg["class_cost"], avg["denoise_cost"], 100 * avg["train_error"],
                 speed_string(speed), eta)


def speed_string(steps_per_s: float) -> str:
    """'12.3 steps/s', or '4.2 s/step' when slower than a step a second."""
    if steps_per_s >= 1 or steps_per_s <= 0:
        return f"{steps_per_s:.1f} steps/s"
    return f"{1 / steps_per_s:.1f} s/step"


def eta_string(seconds: float) -> str:
    """'1h02m' / '3m05s' style duration."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _prepare(job: job_lib.Job, state_dir: str, run_dirs: list[str], restart: bool) -> None:
    """Each model's config.json and, when the checkpoints live apart from the run dirs (a
    group), the group's replicas.json and in each run dir a pointer to it (replica.json);
    a run dir that once pointed to a group and now trains on its own loses the pointer."""
    apart = any(os.path.abspath(d) != os.path.abspath(state_dir) for d in run_dirs)
    if apart:
        _check_group_dir(job, state_dir, restart)
    for cfg, run_dir in zip(job.cfgs, run_dirs):
        wd.prepare(run_dir, cfg, restart)
        member = os.path.join(run_dir, MEMBER_FILE)
        if not apart and wd.is_writer() and os.path.exists(member):
            os.remove(member)  # once in a group, now trained on its own: load_run reads here
    if apart and wd.is_writer():
        wd.write_json_atomic(os.path.join(state_dir, GROUP_FILE),
                             [c.to_dict() for c in job.cfgs])
        for index, run_dir in enumerate(run_dirs):
            wd.write_json_atomic(os.path.join(run_dir, MEMBER_FILE),
                                 {"group": os.path.abspath(state_dir), "index": index})


def _check_group_dir(job: job_lib.Job, state_dir: str, restart: bool) -> None:
    """ConfigError if ``state_dir`` holds another group (unless ``restart``: then clear it)."""
    try:
        os.makedirs(state_dir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{state_dir} is a file, not a directory") from None
    path = os.path.join(state_dir, GROUP_FILE)
    if os.path.exists(path) and not restart:
        try:
            existing = [TrainConfig.from_dict(d).identity() for d in wd.read_json(path)]
        except (OSError, ValueError, TypeError, AttributeError):
            existing = None
        if existing != [c.identity() for c in job.cfgs]:
            raise ConfigError(f"{state_dir} holds another group of models; pass --restart "
                              "to discard it, or choose another directory")
    if restart:
        wd.clear(state_dir)


def _results(job, state, bn_stats, records, clock, state_dir, run_dirs) -> list[RunResult]:
    """Each model's results.json (or the stored one when nothing was trained now)."""
    sched = job.schedule
    final_step = job_lib.current_step(job, state)
    states = job_lib.split(job, state)
    out = []
    for i, cfg in enumerate(job.cfgs):
        path = os.path.join(run_dirs[i], wd.RESULTS_FILE)
        # nothing trained now: the stored results, or (missing or damaged) written again
        results = wd.read_results(run_dirs[i]) if clock.steps == 0 else None
        if results is None:
            final = records[i][-1] if records[i] else {}
            if "test_error" not in final:
                bn_stats[i], final = job_lib.evaluate_model(job, i, states[i].params)
            results = {
                "final_test_error": final["test_error"],
                "final_val_error": final.get("val_error"),
                "step": final_step,
                "epochs": final_step / sched.steps_per_epoch,
                "wall_time_s": records[i][-1]["wall_time_s"] if records[i] else 0.0,
                "steps_per_s": clock.speed or None,
                "num_labels": cfg.num_labels,
                "seed": cfg.seed,
                "dataset": cfg.dataset,
                **_environment(),
            }
            if job.stacked:
                results.update(num_replicas=job.num_models, replica_group=state_dir)
            if job.mesh is not None:
                results["mesh"] = parallel.describe(job.mesh)
            if wd.is_writer():
                wd.write_json_atomic(path, results)
        out.append(RunResult(TrainState(*states[i]), bn_stats[i], results, records[i]))
    logging.info("final test error: %s", ", ".join(
        f"{100 * r.results['final_test_error']:.2f}%" for r in out))
    return out


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


def load_run(workdir: str, step: int | None = None
             ) -> tuple[TrainConfig, TrainState, models.BnStats]:
    """A run's config, train state and population statistics (default: the newest intact
    checkpoint; the statistics are those of the checkpoint's own parameters). A member of a
    group (a replica, a sweep cell) is read from its group's stacked checkpoint."""
    from ladder_jax.train.state import init_state, make_optimizer

    cfg = wd.read_config(workdir)
    member_file = os.path.join(workdir, MEMBER_FILE)
    if os.path.exists(member_file):
        member = wd.read_json(member_file)
        state_dir, index = member["group"], int(member["index"])
        cfgs = [TrainConfig.from_dict(d) for d in wd.read_json(os.path.join(state_dir,
                                                                           GROUP_FILE))]
    else:
        state_dir, index, cfgs = workdir, 0, [cfg]
    stack = (lambda trees: jax.tree_util.tree_map(lambda *x: jax.numpy.stack(x), *trees)) \
        if len(cfgs) > 1 else (lambda trees: trees[0])
    target = {"state": stack([init_state(c, make_optimizer(c, 1)) for c in cfgs]),
              "bn_stats": stack([eval_lib.stats_to_tree(eval_lib.empty_stats(c.model))
                                 for c in cfgs])}
    restored = _restore(state_dir, cfg.keep_checkpoints, target, step)
    if len(cfgs) > 1:
        restored = jax.tree_util.tree_map(lambda x: x[index], restored)
    elif index != 0:
        raise ConfigError(f"{member_file} names model {index} of a one-model group")
    state = restored["state"]
    if isinstance(state, dict):
        state = TrainState(**state)
    return cfg, state, eval_lib.tree_to_stats(restored["bn_stats"])


def _restore(state_dir: str, keep: int, target: Any, step: int | None) -> Any:
    checkpoints = wd.Checkpoints(state_dir, keep)
    try:
        if step is not None:
            return checkpoints.restore(target, step)
        found = checkpoints.restore_newest_intact(target)
        if found is None:
            raise ConfigError(f"no checkpoint in {state_dir}; train it first")
        return found[0]
    finally:
        checkpoints.close()


def predict_from_workdir(workdir: str, images) -> Any:
    """Predicted classes (int [N]) for uint8 images [N, H, W, C], with a trained run's newest
    model (and its dataset's preprocessing, e.g. CIFAR-10's whitening)."""
    cfg, state, bn_stats = load_run(workdir)
    preprocessing = None
    if datasets.has_preprocessing(cfg.dataset):
        preprocessing = job_lib.load_dataset(cfg).preprocessing
    return eval_lib.predict(state.params, cfg.model, bn_stats, images, preprocessing)
