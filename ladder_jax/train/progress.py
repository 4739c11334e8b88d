"""The loop's log lines: progress (epoch, step, losses, speed, ETA) and evaluations."""

from __future__ import annotations

import math
from typing import Any

from absl import logging

from ladder_jax import parallel


def speed_string(steps_per_s: float) -> str:
    """'12.3 steps/s', or '4.2 s/step' when slower than a step a second."""
    if steps_per_s >= 1 or steps_per_s <= 0:
        return f"{steps_per_s:.1f} steps/s"
    return f"{1 / steps_per_s:.1f} s/step"


def eta_string(seconds: float) -> str:
    """'1h02m' / '3m05s' style duration ('?' when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def log_progress(job: Any, state: Any, losses: Any, *, step: int, speed: float) -> None:
    """One progress line for a job (train.job.Job) at ``step``: epoch, running losses
    (one model) or the range of the last losses (several), speed per model and ETA."""
    sched, epochs = job.schedule, job.cfgs[0].epochs
    eta = eta_string((sched.end_step - step) / speed if speed > 0 else math.inf)
    where = (f"epoch {min(step // sched.steps_per_epoch + 1, epochs)}/{epochs} step "
             f"{step}/{sched.end_step}")
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


def log_evaluation(epoch: float, step: int, records: list[dict[str, Any]],
                   reference: dict[int, float] | None) -> None:
    """One line with every model's test (and validation) error from its newest metrics
    record, and the reference curve's value at the latest epoch it has, if any."""
    errors = ", ".join(f"{100 * r['test_error']:.2f}%" for r in records)
    val = "" if "val_error" not in records[0] else ", validation error " + ", ".join(
        f"{100 * r['val_error']:.2f}%" for r in records)
    ref = ""
    if reference:
        known = [e for e in sorted(reference) if e <= epoch]
        if known:
            ref = f" (reference at epoch {known[-1]}: {reference[known[-1]]:.2f}%)"
    logging.info("epoch %.2f step %d: test error %s%s%s", epoch, step, errors, val, ref)
