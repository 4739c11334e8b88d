"""The training loop: a job of K >= 1 models (train.job) trained chunk by chunk, with a
metrics record per epoch, evaluations, checkpoints, and at the end each model's
results.json. ``train_models`` reads top to bottom; the run's state lives in ``_Run``.

Layout: each model writes config.json, metrics.jsonl and results.json into its run
directory; the job's checkpoints (one orbax checkpoint of the whole, possibly stacked,
state) live in its state directory. A single run uses one directory for both; a group's
directory protocol is in train.workdir.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Self

import jax
import numpy as np
from absl import logging

from ladder_jax import datasets, files, models, parallel
from ladder_jax.config import TrainConfig
from ladder_jax.datasets import splits as splits_lib
from ladder_jax.errors import CheckpointError, ConfigError
from ladder_jax.train import evaluate as eval_lib
from ladder_jax.train import interrupt, restore
from ladder_jax.train import job as job_lib
from ladder_jax.train import progress as progress_lib
from ladder_jax.train import workdir as wd
from ladder_jax.train.state import TrainState, learning_rate_schedule, reset_metrics

#: progress(step, end_step), called after every compiled call.
Progress = Callable[[int, int], None]

#: Seconds between two progress lines.
PROGRESS_EVERY_S = 5.0


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
    again resumes from the newest intact checkpoint, or returns the stored results.

    Args:
      cfgs, state_dir, run_dirs: the models, where their checkpoints go, where each one's
        files go.
      restart: discard what the directories hold instead of refusing another run's files.
      dataset: the data (default: loaded as cfgs[0] names it).
      mesh: data/replica parallelism (ladder_jax.parallel).
      reference: epoch -> test error, printed beside each evaluation.
      progress: called as progress(step, end_step) after every compiled call.

    Returns:
      Each model's RunResult.

    Raises:
      ConfigError for directories holding another run (unless ``restart``),
      TrainingDiverged when a loss becomes NaN/inf (the last checkpoint stays),
      Interrupted after SIGINT/SIGTERM (train.interrupt: a checkpoint at the step reached).
    """
    cfgs, run_dirs = list(cfgs), list(run_dirs)
    if len(run_dirs) != len(cfgs) or len(set(map(os.path.abspath, run_dirs))) != len(cfgs):
        raise ConfigError(f"{len(cfgs)} models need {len(cfgs)} distinct run directories, "
                          f"got {run_dirs}")
    job = job_lib.build_job(cfgs, dataset, mesh=mesh)  # bad data fails before any file
    cfgs = job.cfgs  # as they record the data: a user dataset's name and hash (datasets.bind)
    wd.prepare_job_dirs(cfgs, state_dir, run_dirs, restart)
    _write_splits(job, run_dirs)
    sched, cfg = job.schedule, cfgs[0]
    with interrupt.handling(), _Run(job, state_dir, run_dirs, reference) as run:
        while run.step < sched.end_step:
            end = _chunk_end(run.step, sched, cfg)
            run.train(end - run.step)
            if progress is not None:
                progress(end, sched.end_step)
            at_end = end == sched.end_step
            evaluate = at_end
            if end % sched.steps_per_epoch == 0 or at_end:
                evaluate = at_end or (end // sched.steps_per_epoch) % cfg.eval_every == 0
                run.end_epoch(evaluate)
            if evaluate or at_end or (cfg.checkpoint_every and end % cfg.checkpoint_every == 0):
                run.save(fresh_stats=evaluate)
            if interrupt.requested() is not None:
                if run.saved_step != run.step:
                    run.save(fresh_stats=False)
                run.checkpoints.wait()
                interrupt.raise_if_requested(run.step, saved=True)
        run.checkpoints.wait()  # CheckpointError if the last save failed
    return run.results()


def _write_splits(job: job_lib.Job, run_dirs: list[str]) -> None:
    """Each model's split manifest (datasets.splits) in its run directory."""
    if not wd.is_writer():
        return
    for cfg, rows, run_dir in zip(job.cfgs, job.rows, run_dirs):
        labeled = np.asarray(parallel.to_host(rows.labeled))
        files.write_json_atomic(os.path.join(run_dir, splits_lib.FILE), splits_lib.manifest(
            job.dataset, labeled, rows.validation, None if cfg.splits else cfg.seed))


def _chunk_end(step: int, sched: Any, cfg: TrainConfig) -> int:
    """Where the compiled call starting at ``step`` ends: at most steps_per_call steps, and
    never past the epoch's end, the end step or the next checkpoint step."""
    end = min((step // sched.steps_per_epoch + 1) * sched.steps_per_epoch, sched.end_step,
              step + cfg.steps_per_call)
    if cfg.checkpoint_every:
        end = min(end, (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every)
    return end


class _Run:
    """One job's training state on its way through the loop: the (possibly stacked) state
    and each model's population statistics, the step (kept on the host), the metrics
    records and writers, the checkpoints and the clock. A context manager: it restores or
    initialises on entry and closes the checkpoints and writers on exit."""

    def __init__(self, job: job_lib.Job, state_dir: str, run_dirs: list[str],
                 reference: dict[int, float] | None):
        self.job, self.state_dir, self.run_dirs, self.reference = job, state_dir, run_dirs, \
            reference
        self.checkpoints = wd.Checkpoints(state_dir, job.cfgs[0].keep_checkpoints)
        self.writers = [wd.MetricsWriter(d) for d in run_dirs]

    def __enter__(self) -> Self:
        try:
            self._restore_or_init()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, kind, error, tb) -> None:
        if error is not None:
            with contextlib.suppress(CheckpointError):  # the error in flight says more
                self.checkpoints.wait()
            for w in self.writers:
                with contextlib.suppress(OSError):  # e.g. the same full disk
                    w.close()
        self._close()

    def _close(self) -> None:
        try:
            self.checkpoints.close()
        finally:
            for w in self.writers:
                w.close()

    def _restore_or_init(self) -> None:
        job = self.job
        initial = job_lib.place(job, restore.initial_item(job.cfgs, job.optimizer))
        found = self.checkpoints.restore_newest_intact(initial)
        if found is None:
            item, self.step = initial, 0
        else:
            item, self.step = found
            logging.info("resuming %s from the checkpoint at step %d",
                         self.checkpoints.directory, self.step)
        self.state = restore.as_state(item)
        self.bn_stats = [eval_lib.tree_to_stats(t) for t in job_lib.split(job, item["bn_stats"])]
        self.saved_step = None if found is None else self.step
        latest = -1 if found is None else self.step
        self.records = [w.truncate_after(latest) for w in self.writers]
        elapsed = self.records[0][-1]["wall_time_s"] if self.records[0] else 0.0
        self.clock = _Clock(elapsed, self.step)

    def train(self, num_steps: int) -> None:
        """``num_steps`` steps of every model, in one compiled call."""
        t0 = time.time()
        self.state, losses = job_lib.run_steps(self.job, self.state, num_steps,
                                               first_step=self.step)
        self.step += num_steps
        self.clock.add(num_steps, time.time() - t0)
        if time.time() - self.clock.last_progress >= PROGRESS_EVERY_S \
                or self.step == self.job.schedule.end_step:
            progress_lib.log_progress(self.job, self.state, losses, step=self.step,
                                      speed=self.clock.recent_speed())
            self.clock.last_progress = time.time()

    def end_epoch(self, evaluate: bool) -> None:
        """One metrics record per model for the epoch ending now (with test and validation
        error and fresh population statistics when ``evaluate``); the running metrics reset."""
        job, step = self.job, self.step
        epoch = step / job.schedule.steps_per_epoch
        lr = float(learning_rate_schedule(job.cfgs[0], job.schedule.total_steps)(step - 1))
        per_model = job_lib.split(job, (self.state.metric_sums, self.state.metric_count))
        params = job_lib.split(job, self.state.params) if evaluate else None
        now = time.time()
        for i, (sums, counts) in enumerate(per_model):
            count = max(float(counts), 1.0)
            record: dict[str, Any] = {"step": step, "epoch": round(epoch, 4), "lr": lr}
            record.update({k: float(v) / count for k, v in sums.items()})
            if evaluate:
                self.bn_stats[i], errors = job_lib.evaluate_model(job, i, params[i])
                record.update(errors)
            record["steps_per_s"] = (step - self.clock.last_line_step) / max(
                now - self.clock.last_line, 1e-9)
            record["wall_time_s"] = self.clock.elapsed()
            self.writers[i].write(record)
            self.records[i].append(record)
        self.clock.last_line, self.clock.last_line_step = time.time(), step
        if evaluate:
            progress_lib.log_evaluation(epoch, step, [r[-1] for r in self.records],
                                        self.reference)
        self.state = reset_metrics(self.state)

    def save(self, fresh_stats: bool) -> None:
        """A checkpoint at the current step. It carries population statistics of its own
        parameters: those of the evaluation just made (``fresh_stats``), else computed now."""
        job = self.job
        if not fresh_stats:
            params = job_lib.split(job, self.state.params)
            self.bn_stats = [job_lib.evaluate_model(job, i, p, stats_only=True)[0]
                             for i, p in enumerate(params)]
        stats = job_lib.combine(job, [eval_lib.stats_to_tree(s) for s in self.bn_stats])
        self.checkpoints.save(self.step, restore.checkpoint_item(self.state, stats))
        self.saved_step = self.step

    def results(self) -> list[RunResult]:
        """Each model's results.json (or the stored one when nothing was trained now)."""
        job, sched = self.job, self.job.schedule
        states = job_lib.split(job, self.state)
        out = []
        for i, cfg in enumerate(job.cfgs):
            records = self.records[i]
            # nothing trained now: the stored results, or (missing or damaged) written again
            results = wd.read_results(self.run_dirs[i]) if self.clock.steps == 0 else None
            if results is None:
                final = records[-1] if records else {}
                if "test_error" not in final:
                    self.bn_stats[i], final = job_lib.evaluate_model(job, i, states[i].params)
                results = {
                    "final_test_error": final["test_error"],
                    "final_val_error": final.get("val_error"),
                    "step": self.step,
                    "epochs": self.step / sched.steps_per_epoch,
                    "wall_time_s": records[-1]["wall_time_s"] if records else 0.0,
                    "steps_per_s": self.clock.speed or None,
                    "num_labels": cfg.num_labels,
                    "seed": cfg.seed,
                    "dataset": cfg.dataset,
                    **environment(),
                }
                if job.stacked:
                    results.update(num_replicas=job.num_models, replica_group=self.state_dir)
                if job.mesh is not None:
                    results["mesh"] = parallel.describe(job.mesh)
                if wd.is_writer():
                    files.write_json_atomic(os.path.join(self.run_dirs[i], wd.RESULTS_FILE),
                                         results)
            out.append(RunResult(TrainState(*states[i]), self.bn_stats[i], results, records))
        logging.info("final test error: %s", ", ".join(
            f"{100 * r.results['final_test_error']:.2f}%" for r in out))
        return out


class _Clock:
    """Wall time and training speed of this process's part of the run."""

    def __init__(self, elapsed_before: float, step: int):
        self.start = self.last_line = self.last_progress = time.time()
        self.elapsed_before = elapsed_before
        self.last_line_step = step
        self.train_seconds = 0.0
        self.steps = 0
        self._recent_steps, self._recent_seconds = 0, 0.0

    def add(self, steps: int, seconds: float) -> None:
        """One compiled call of ``steps`` steps that took ``seconds``."""
        self.steps += steps
        self.train_seconds += seconds
        self._recent_steps += steps
        self._recent_seconds += seconds

    @property
    def speed(self) -> float:
        """Steps per second of the compiled calls so far (0 before the first): what
        results.json records."""
        return self.steps / self.train_seconds if self.train_seconds else 0.0

    def recent_speed(self) -> float:
        """Steps per second of the calls since the last time this was asked (the last
        progress line), then counting starts again: the progress line's speed and ETA, so
        that the first call's compilation or a pause (SIGSTOP) does not weigh on the lines
        long after."""
        speed = (self._recent_steps / self._recent_seconds if self._recent_seconds
                 else self.speed)
        self._recent_steps, self._recent_seconds = 0, 0.0
        return speed

    def elapsed(self) -> float:
        """Wall time of the run over all its processes' lives so far."""
        return self.elapsed_before + time.time() - self.start


def environment() -> dict[str, Any]:
    """The device, the process layout and the package versions (for results.json)."""
    versions = {}
    for pkg in ("jax", "jaxlib", "optax", "orbax-checkpoint", "numpy", "ladder_jax"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    device = jax.devices()[0]
    return {"device_kind": device.device_kind, "platform": device.platform,
            "num_devices": jax.device_count(), "num_processes": jax.process_count(),
            "versions": versions}
