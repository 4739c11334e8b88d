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

from experiments import common
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


def run(argv: list[str]) -> int:
    del argv
    k, steps, per_call = FLAGS.num_replicas, FLAGS.steps, FLAGS.steps_per_call
    cfgs = [_config(seed) for seed in range(k)]
    dataset = train.load_dataset(cfgs[0])
    solos = [train.build_job([c], dataset) for c in cfgs]
    solo_states = [job_lib.init_job_state(j) for j in solos]
    group = train.build_job(cfgs, dataset)
    group_state = job_lib.init_job_state(group)

    def solo_step(i):
        return lambda s, n: job_lib.run_steps(solos[i], s, n)

    def group_step(s, n):
        return job_lib.run_steps(group, s, n)

    t0 = time.time()  # compile + one warm-up chunk each (not timed)
    for i in range(k):
        solo_states[i], _ = _run_chunks(solo_step(i), solo_states[i], per_call, per_call)
    solo_warm = time.time() - t0
    t0 = time.time()
    group_state, _ = _run_chunks(group_step, group_state, per_call, per_call)
    group_warm = time.time() - t0

    solo_time = group_time = 0.0
    for r in range(FLAGS.rounds):
        t0 = time.time()
        for i in range(k):
            solo_states[i], _ = _run_chunks(solo_step(i), solo_states[i], steps, per_call)
        solo_time += time.time() - t0
        t0 = time.time()
        group_state, _ = _run_chunks(group_step, group_state, steps, per_call)
        group_time += time.time() - t0
        print(f"round {r + 1}: solo {solo_time:.1f}s, group {group_time:.1f}s (cumulative)")

    total = steps * FLAGS.rounds
    solo_per_model = total / (solo_time / k)  # each solo run alone on the machine
    solo_aggregate = k * total / solo_time  # K runs one after the other
    group_per_model = total / group_time  # every replica advances this many steps/s
    group_aggregate = k * total / group_time
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "layer_sizes": list(cfgs[0].model.layer_sizes),
        "num_replicas": k, "timed_steps_per_model": total, "steps_per_call": per_call,
        "solo_steps_per_s_each_run": round(solo_per_model, 3),
        "solo_model_steps_per_s_sequential": round(solo_aggregate, 3),
        "group_steps_per_s_per_model": round(group_per_model, 3),
        "group_model_steps_per_s": round(group_aggregate, 3),
        "group_vs_sequential_solo_speedup": round(group_aggregate / solo_aggregate, 3),
        "warmup_s": {"solo_all": round(solo_warm, 1), "group": round(group_warm, 1)},
        "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
    }
    print(json.dumps(result, indent=2))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0


main = common.entry_point(run)

if __name__ == "__main__":
    app.run(main)
