"""Memory before the device: XLA's own account (``compiled.memory_analysis()``) of the
compiled training call for K = 1 and more models, per preset, compiled on this CPU, and the
largest K that fits a device's memory.

    python -m experiments.measure.memory                       # the three presets below
    python -m experiments.measure.memory --presets=full_100 --replicas=1,2,4 \
        --output=docs/scale_out_memory.json

The data are synthetic arrays of the preset's dataset's shapes (the training set is an
argument of the call: it stays on the device), so nothing is downloaded. Convolutions are
lowered as lax convolutions (what accelerators run). These are CPU-compiled estimates: an
accelerator's compiler assigns buffers its own way, and its runtime reserves memory of its
own (docs/scale_out.md).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags

from experiments import entry
from experiments.measure import output
from ladder_jax import config, datasets
from ladder_jax.config import TrainConfig
from ladder_jax.train import job as job_lib

FLAGS = flags.FLAGS
PRESETS = ("full_100", "conv_small_gamma_100", "conv_large_gamma_4000")
flags.DEFINE_list("presets", list(PRESETS), "Presets to measure.")
flags.DEFINE_list("replicas", ["1", "2", "4"], "Model counts K to compile; the two largest "
                  "(K > 1: the vmapped program) separate what each model adds from what the "
                  "job shares.")
flags.DEFINE_integer("steps_per_call", 100, "Steps per compiled call.", lower_bound=1)
flags.DEFINE_string("output", None, "Write the figures as JSON to this file.")

#: Device memory budgets of the table: a TPU v2 core, a TPU v3 core or a Colab T4, an
#: 80 GB GPU.
BUDGETS_GB = (8, 16, 80)
#: (train rows, test rows, H, W, C) of the built-in datasets.
SHAPES = {"mnist": (60_000, 10_000, 28, 28, 1), "fashion_mnist": (60_000, 10_000, 28, 28, 1),
          "cifar10": (50_000, 10_000, 32, 32, 3)}


def synthetic_dataset(name: str) -> datasets.Dataset:
    """Zeros (labels cycling over 10 classes) of the dataset's shapes, with a whitening of
    the right size where the dataset has one."""
    train_rows, test_rows, *image = SHAPES[name]
    labels = lambda n: np.arange(n, dtype=np.int32) % 10
    preprocessing = None
    if datasets.has_preprocessing(name):
        d = math.prod(image)
        preprocessing = datasets.Preprocessing(1.0, np.zeros(d, np.float32),
                                               np.eye(d, dtype=np.float32))
    return datasets.Dataset(name, np.zeros((train_rows, *image), np.uint8), labels(train_rows),
                            np.zeros((test_rows, *image), np.uint8), labels(test_rows), 10,
                            tuple(map(str, range(10))), preprocessing)


def chunk_memory(cfg: TrainConfig, num_models: int, dataset: datasets.Dataset,
                 steps_per_call: int) -> dict[str, int]:
    """Bytes of the compiled training call of ``num_models`` models shaped like ``cfg``:
    arguments (state, training set, row indices), outputs, temporaries, and their total."""
    cfgs = [cfg.replace(seed=s) for s in range(num_models)]
    job = job_lib.build_job(cfgs, dataset)
    state = job_lib.init_job_state(job)
    rows = job_lib.batch_rows(job, 0, steps_per_call)
    compiled = job.chunk.lower(state, job.data, *rows, job.noise_keys).compile()
    stats = compiled.memory_analysis()
    figures = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
               "temporaries": stats.temp_size_in_bytes, "aliased": stats.alias_size_in_bytes}
    figures["total"] = (figures["arguments"] + figures["outputs"] + figures["temporaries"]
                        - figures["aliased"])
    return figures


def largest_fit(shared: int, per_model: int, budget: int) -> int:
    """The most models whose memory (shared + K * per_model) fits ``budget`` bytes."""
    return max(0, (budget - shared) // per_model) if per_model > 0 else 0


def measure(preset: str, replicas: list[int], steps_per_call: int) -> dict[str, Any]:
    """One preset's memory for each K, what one model adds, and the largest K per budget."""
    cfg = config.preset(preset).replace(model={"conv_lowering": "lax"})
    dataset = synthetic_dataset(cfg.dataset)
    by_k = {k: chunk_memory(cfg, k, dataset, steps_per_call) for k in replicas}
    low, high = replicas[-2], replicas[-1]
    per_model = (by_k[high]["total"] - by_k[low]["total"]) // (high - low)
    shared = by_k[low]["total"] - low * per_model
    return {"preset": preset, "dataset": cfg.dataset, "steps_per_call": steps_per_call,
            "by_replicas": {str(k): v for k, v in by_k.items()},
            "per_model_bytes": per_model, "shared_bytes": shared,
            "largest_k": {f"{gb}GB": largest_fit(shared, per_model, gb * 10**9)
                          for gb in BUDGETS_GB}}


def run(argv: list[str]) -> int:
    del argv
    replicas = sorted({int(k) for k in FLAGS.replicas})
    if len(replicas) < 2 or replicas[0] < 1 or replicas[-2] < 2:
        raise config.ConfigError(f"--replicas={FLAGS.replicas} needs two or more counts "
                                 "above 1 (the vmapped program)")
    rows = [measure(p, replicas, FLAGS.steps_per_call) for p in FLAGS.presets]
    print("| preset | bytes per model | shared | " +
          " | ".join(f"largest K in {gb} GB" for gb in BUDGETS_GB) + " |")
    for row in rows:
        print(f"| {row['preset']} | {row['per_model_bytes'] / 2**20:.1f} MiB | "
              f"{row['shared_bytes'] / 2**20:.1f} MiB | " +
              " | ".join(str(row["largest_k"][f"{gb}GB"]) for gb in BUDGETS_GB) + " |")
    output.write_json_output(FLAGS.output, {
        "what": "compiled.memory_analysis() of the training call, compiled on a CPU "
                "(an estimate for accelerators)",
        "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"), "rows": rows})
    return 0


main = entry.entry_point(run)

if __name__ == "__main__":
    app.run(main)
