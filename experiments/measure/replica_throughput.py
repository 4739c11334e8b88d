"""Throughput of K replicas in one compiled program vs K solo runs, timed in one process.

    python -m experiments.measure.replica_throughput                       # paper widths, K=3
    python -m experiments.measure.replica_throughput --num_replicas=3 --steps=300 --rounds=2

Each round times ``steps`` training steps of every solo run (seeds 0..K-1, one after the
other) and then ``steps`` steps of the K-model job (ladder_jax.train.job), after a
compile/warm-up chunk that is not timed. Rounds alternate so a shared machine's load hits
both; the ratio of the two, measured in the same run, is the number to quote.
"""

from __future__ import annotations

import datetime
import json
import time

import jax
from absl import app, flags

from experiments import entry
from experiments.measure import output
from ladder_jax import config as config_lib
from ladder_jax import train
from ladder_jax.train import job as job_lib

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_replicas", 3, "K: models in the group / solo runs.", lower_bound=1)
flags.DEFINE_integer("steps", 300, "Timed steps per model per round.", lower_bound=1)
flags.DEFINE_integer("rounds", 2, "Alternating solo/group rounds.", lower_bound=1)
flags.DEFINE_integer("steps_per_call", 100, "Steps per compiled call.", lower_bound=1)
flags.DEFINE_list("layer_sizes", None, "Widths (default: the paper's 784-1000-500-250-250-"
                  "250-10); the preset's lambdas are kept per layer when the depth matches.")
flags.DEFINE_string("preset", "full_100", "Preset the runs start from.")
flags.DEFINE_string("output", None, "Also write the numbers as JSON here.")
flags.DEFINE_bool("solo", True, "Also time the K solo runs (--nosolo: the group alone, e.g. "
                  "for large K on an accelerator).")


def _config(seed: int) -> config_lib.TrainConfig:
    cfg = config_lib.preset(FLAGS.preset).replace(seed=seed, steps_per_call=FLAGS.steps_per_call)
    if FLAGS.layer_sizes:
        sizes = tuple(int(s) for s in FLAGS.layer_sizes)
        w = cfg.model.denoise_weights
        weights = w if len(w) == len(sizes) else (w[:len(sizes) - 1] + w[-1:])
        cfg = cfg.replace(model={"layer_sizes": sizes, "denoise_weights": weights,
                                 "noise_std": cfg.model.noise_std[0]})
    return cfg


def _run_chunks(step_fn, state, steps: int, per_call: int):
    done = 0
    while done < steps:
        n = min(per_call, steps - done)
        state, losses = step_fn(state, n)
        done += n
    jax.block_until_ready(state)
    return state, losses


def _warm_and_time(jobs, steps: int, per_call: int, rounds: int) -> tuple[float, float]:
    """(warm-up seconds, timed seconds of ``rounds`` x ``steps`` steps) of running ``jobs``
    one after the other; the compile and a first chunk of each are not timed."""
    states = [job_lib.init_job_state(j) for j in jobs]
    step_fns = [lambda s, n, j=j: job_lib.run_steps(j, s, n) for j in jobs]
    t0 = time.time()
    states = [_run_chunks(f, s, per_call, per_call)[0] for f, s in zip(step_fns, states)]
    warm = time.time() - t0
    t0 = time.time()
    for _ in range(rounds):
        states = [_run_chunks(f, s, steps, per_call)[0] for f, s in zip(step_fns, states)]
    return warm, time.time() - t0


def run(argv: list[str]) -> int:
    del argv
    k, steps, per_call, rounds = (FLAGS.num_replicas, FLAGS.steps, FLAGS.steps_per_call,
                                  FLAGS.rounds)
    cfgs = [_config(seed) for seed in range(k)]
    dataset = train.load_dataset(cfgs[0])
    total = steps * rounds
    group_warm, group_time = _warm_and_time([train.build_job(cfgs, dataset)], steps, per_call,
                                            rounds)
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "layer_sizes": list(cfgs[0].model.layer_sizes),
        "num_replicas": k, "timed_steps_per_model": total, "steps_per_call": per_call,
        "group_steps_per_s_per_model": round(total / group_time, 3),  # every model's speed
        "group_model_steps_per_s": round(k * total / group_time, 3),
        "warmup_s": {"group": round(group_warm, 1)},
        "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
    }
    if FLAGS.solo:  # K single runs one after the other, alternating with nothing else
        solo_warm, solo_time = _warm_and_time([train.build_job([c], dataset) for c in cfgs],
                                              steps, per_call, rounds)
        result |= {
            "solo_steps_per_s_each_run": round(total / (solo_time / k), 3),
            "solo_model_steps_per_s_sequential": round(k * total / solo_time, 3),
            "group_vs_sequential_solo_speedup": round(solo_time / group_time, 3),
        }
        result["warmup_s"]["solo_all"] = round(solo_warm, 1)
    print(json.dumps(result, indent=2))
    output.write_json_output(FLAGS.output, result)
    return 0


main = entry.entry_point(run)

if __name__ == "__main__":
    app.run(main)
