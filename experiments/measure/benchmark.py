"""Speed of one training step through the runner's own compiled code, against this machine's
measured matmul peak, in one run.

    python -m experiments.measure.benchmark            # the paper's MNIST-100 full ladder
    python -m experiments.measure.benchmark --preset=conv_small_gamma_100 --output=bench.json

Figures (all from this one process):
  compile_s        time to trace and compile the K-step training call: the first call's
                   time minus K steady-state steps
  ms_per_step      median over --repeats calls of K = --steps_per_call steps, divided by K
  examples_per_s   (labeled + unlabeled examples per step) / step time
  matmul_gflop     matmul and convolution FLOPs of one step, counted by the model family's
                   formula (ladder_jax.models.flops.step_flops)
  achieved_gflops  matmul_gflop / step time
  peak_gflops      best of a large float32 matmul in jax and in numpy, timed here and now
  fraction_of_peak achieved_gflops / peak_gflops (the peak is float32's, also for
                   --matmul_dtype=bfloat16, which is not the default computation)
  matmuls_alone_ms the step's matmuls and convolutions (each dot_general and
                   conv_general_dilated of the traced step), each compiled
                   and timed alone, summed: the step's time if all else were free
  fraction_if_only_matmuls  matmul_gflop / matmuls_alone_ms / peak_gflops: the most
                   fraction_of_peak this step's matmul shapes allow here
  peak_rss_mib     the process's peak resident memory
  population_stats_s  with --evaluation: one computation of the exact population
                   statistics over the unlabeled set (evaluation_rows rows) as the loop
                   runs it before each evaluation, compiled (a second call);
                   population_stats_first_s is the first call, compiles included

--profile then traces one more call and prints where the step's time goes
(experiments/measure/step_profile.py explains its figures).
"""

from __future__ import annotations

import functools
import resource
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.extend import core as jax_core

from experiments import entry, shared_flags
from experiments.measure import output, step_profile
from ladder_jax import config, train
from ladder_jax.config import TrainConfig
from ladder_jax.models import flops as model_flops
from ladder_jax.train import job as job_lib

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps_per_call", 100, "Steps per compiled call (K).", lower_bound=1)
flags.DEFINE_integer("repeats", 5, "Timed calls after a warm-up call; the median counts.",
                     lower_bound=1)
flags.DEFINE_integer("peak_size", 2048, "Side of the square matmul that measures the peak.",
                     lower_bound=128)
flags.DEFINE_string("output", None, "Write the figures as JSON to this file.")
flags.DEFINE_bool("profile", False, "Also profile one call: time with a matmul running, time "
                  "with only other operations, idle time, and the costliest operations.")
flags.DEFINE_bool("matmuls_alone", True, "Also time each matmul/convolution of the step alone "
                  "(matmuls_alone_ms, fraction_if_only_matmuls; ~20 s).")
flags.DEFINE_integer("top", 25, "With --profile, how many operations to list.", lower_bound=0)
flags.DEFINE_bool("evaluation", False, "Also time the population statistics an evaluation "
                  "computes over the unlabeled set (twice: the first call compiles; "
                  "--num_validation shrinks the set).")
shared_flags.define_model_flags()
shared_flags.define_data_flags(per_run=False)
shared_flags.install_grouped_help()

CONTRACTIONS = ("dot_general", "conv_general_dilated")


def step_flops(cfg: TrainConfig) -> int:
    """Counted matmul/convolution FLOPs of one training step of ``cfg``."""
    unlabeled = cfg.unlabeled_batch_size if cfg.uses_unlabeled else 0
    return model_flops.step_flops(cfg.model, cfg.batch_size, unlabeled)


def matmul_peak_gflops(size: int, repeats: int = 10) -> dict[str, float]:
    """Best observed float32 GFLOP/s of a size x size matmul in jax and in numpy."""
    flops = 2 * size**3
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32))
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    best_jax = min(_timed(lambda: mm(a).block_until_ready()) for _ in range(repeats))
    b = np.asarray(a)
    b @ b
    best_np = min(_timed(lambda: b @ b) for _ in range(repeats))
    return {"jax": flops / best_jax / 1e9, "numpy": flops / best_np / 1e9}


def step_contractions(job: job_lib.Job, state: train.TrainState) -> list:
    """The dot_general and conv_general_dilated equations of one traced training step
    (sub-jaxprs included)."""
    labeled, unlabeled = job_lib.batch_rows(job, 0, 1)
    closed = jax.make_jaxpr(job.chunk)(state, job.data, labeled, unlabeled, job.noise_keys)

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in CONTRACTIONS:
                yield eqn
            for sub in jax_core.jaxprs_in_params(eqn.params):
                yield from walk(sub)

    return list(walk(closed.jaxpr))


def matmuls_alone_ms(dots: list, calls: int = 20, repeats: int = 5) -> float:
    """Sum over ``dots`` of each one's time compiled and run alone (its shapes, dtypes and
    parameters; median of ``repeats`` x ``calls`` calls): the step's time if everything
    but its matmuls were free."""
    key = jax.random.key(0)
    total = 0.0
    for eqn in dots:
        lhs, rhs = (jax.random.normal(key, v.aval.shape).astype(v.aval.dtype)
                    for v in eqn.invars)
        dot = jax.jit(functools.partial(eqn.primitive.bind, **eqn.params))
        dot(lhs, rhs).block_until_ready()

        def run(dot=dot, lhs=lhs, rhs=rhs):
            for _ in range(calls):
                out = dot(lhs, rhs)
            out.block_until_ready()

        total += statistics.median(_timed(run) for _ in range(repeats)) / calls
    return 1000 * total


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def benchmark(cfg: TrainConfig, steps_per_call: int, repeats: int, peak_size: int,
              dataset=None, *, profile: bool = False,
              matmuls_alone: bool = True, evaluation: bool = False) -> dict[str, Any]:
    """Times the runner's training call (job.run_steps) and the matmul peak; returns the
    figures described in this module's docstring. With ``profile``, 'profile' holds
    step_profile.profile of one more call of the same job; ``evaluation`` adds the
    population statistics' times."""
    job = train.build_job([cfg], dataset)
    state = job_lib.init_job_state(job)
    start = time.perf_counter()
    state, _ = job_lib.run_steps(job, state, steps_per_call)  # compiles, then runs K steps
    first_call_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, losses = job_lib.run_steps(job, state, steps_per_call)
        times.append((time.perf_counter() - start) / steps_per_call)
    step_s = statistics.median(times)
    compile_s = first_call_s - steps_per_call * step_s
    flops = step_flops(cfg)
    peak = matmul_peak_gflops(peak_size)
    peak_best = max(peak.values())
    achieved = flops / step_s / 1e9
    examples = cfg.batch_size + (cfg.unlabeled_batch_size if cfg.uses_unlabeled else 0)
    figures: dict[str, Any] = {
        "model": cfg.model.conv_layers if cfg.model.family == "conv"
        else "-".join(map(str, cfg.model.layer_sizes)),
        "matmul_dtype": cfg.model.matmul_dtype,
        "device_kind": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
        "steps_per_call": steps_per_call,
        "compile_s": compile_s,
        "ms_per_step": 1000 * step_s,
        "ms_per_step_min": 1000 * min(times),
        "ms_per_step_max": 1000 * max(times),
        "steps_per_s": 1 / step_s,
        "examples_per_s": examples / step_s,
        "matmul_gflop": flops / 1e9,
        "achieved_gflops": achieved,
        "peak_gflops_jax": peak["jax"],
        "peak_gflops_numpy": peak["numpy"],
        "peak_gflops": peak_best,
        "fraction_of_peak": achieved / peak_best,
    }
    if matmuls_alone:
        alone_ms = matmuls_alone_ms(step_contractions(job, state))
        figures["matmuls_alone_ms"] = alone_ms
        figures["fraction_if_only_matmuls"] = flops / (alone_ms / 1000) / 1e9 / peak_best
    if evaluation:
        params = job_lib.split(job, state.params)[0]
        stats = functools.partial(job_lib.evaluate_model, job, 0, params, stats_only=True)
        figures["evaluation_rows"] = len(job.rows[0].unlabeled)
        figures["population_stats_first_s"] = _timed(stats)
        figures["population_stats_s"] = _timed(stats)
    figures |= {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss_finite": bool(np.all(np.isfinite(losses))),
    }
    if profile:
        figures["profile"] = step_profile.profile(job, state, steps_per_call)
    return figures


def run(argv: list[str]) -> int:
    del argv
    cfg = shared_flags.config_from_flags(config.preset(FLAGS.preset))
    figures = benchmark(cfg, FLAGS.steps_per_call, FLAGS.repeats, FLAGS.peak_size,
                        profile=FLAGS.profile, matmuls_alone=FLAGS.matmuls_alone,
                        evaluation=FLAGS.evaluation)
    profile = figures.pop("profile", None)
    figures["preset"] = FLAGS.preset
    figures["date"] = time.strftime("%Y-%m-%d")
    width = max(map(len, figures))
    for key, value in figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if profile is not None:
        print("\nprofile of one more call (ms per step):")
        step_profile.print_profile(profile, FLAGS.top)
        figures["profile"] = {k: v for k, v in profile.items() if k != "ops"}
    output.write_json_output(FLAGS.output, figures)
    return 0


main = entry.entry_point(run)

if __name__ == "__main__":
    app.run(main)
