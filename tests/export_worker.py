"""Subprocess side of tests/test_export.py: exports the compiled programs of a training run
for accelerator platforms with jax.export, from this CPU, and prints one JSON line per
program (what the test checks), so each process starts with JAX's lowering rules fresh.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/export_worker.py \
        PLATFORMS [--no-setup]

PLATFORMS: comma-separated (e.g. cuda,tpu or cpu). --no-setup skips platform.setup() (the
CPU's threefry registration), to show that it leaves accelerator programs as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys

import jax
import numpy as np
from jax import export

from ladder_jax import config, datasets, parallel, platform
from ladder_jax.train import evaluate as eval_lib
from ladder_jax.train import job as job_lib

STEPS = 4  # steps per exported chunk
ROWS = 256  # rows of the small data set the programs are traced on


def describe(name: str, exported: export.Exported) -> dict:
    text = exported.mlir_module()
    return {
        "name": name,
        "platforms": list(exported.platforms),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "custom_calls": sorted(set(re.findall(r"stablehlo\.custom_call @([\w.]+)", text))
                               | set(re.findall(r'call_target_name = "([^"]+)"', text))),
        "convolutions": len(re.findall(r"stablehlo\.convolution", text)),
        "dot_generals": len(re.findall(r"stablehlo\.dot_general", text)),
        # products left at JAX's default precision (TF32 on recent GPUs, bfloat16 on TPUs)
        "below_float32": sum(1 for line in text.splitlines()
                             if re.search(r"stablehlo\.(dot_general|convolution)\b", line)
                             and "HIGHEST" not in line),
        "num_devices": exported.nr_devices,
    }


def small_dataset(shape) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (ROWS, *shape), dtype=np.uint8)
    labels = np.arange(ROWS, dtype=np.int32) % 10
    return datasets.Dataset("export-check", images, labels, images[:64], labels[:64], 10,
                            tuple(str(i) for i in range(10)))


def programs(platforms: tuple[str, ...]):
    mlp = config.preset("full_100").replace(batch_size=20, unlabeled_batch_size=20,
                                            num_labels=100, steps_per_call=STEPS)
    conv = config.preset("conv_small_gamma_100").replace(
        batch_size=10, unlabeled_batch_size=10, num_labels=100, steps_per_call=STEPS)
    to = lambda f: export.export(f, platforms=platforms)
    for family, cfg in (("mlp", mlp), ("conv", conv)):
        data = small_dataset(cfg.model.input_shape if family == "conv" else (28, 28, 1))
        jobs = {"chunk": job_lib.build_job([cfg], data)}
        if family == "mlp":
            jobs["chunk_4_replicas"] = job_lib.build_job(
                [cfg.replace(seed=s) for s in range(4)], data)
            jobs["chunk_data_parallel_4_devices"] = job_lib.build_job(
                [cfg], data, mesh=parallel.make_mesh(4))
        for name, job in jobs.items():
            state = job_lib.init_job_state(job)
            rows = job_lib.batch_rows(job, 0, STEPS)
            yield f"{family}_{name}", to(job.chunk)(state, job.data, *rows, job.noise_keys)
        job = jobs["chunk"]
        params = job_lib.split(job, job_lib.init_job_state(job).params)[0]
        images, labels = job.local.images[:64], job.local.labels[:64]
        stats = eval_lib.population_stats(params, cfg.model, job.local.images,
                                          job.rows[0].unlabeled[:64])
        yield f"{family}_population_stats", to(eval_lib._population_stats_one_batch)(
            params, cfg.model, job.local.images, job.rows[0].unlabeled[:64], None)
        yield f"{family}_evaluation", to(eval_lib._count_wrong)(
            params, cfg.model, stats, images, labels, None)
        yield f"{family}_prediction", to(eval_lib._predict_jit)(
            params, cfg.model, stats, images, None)


def main(argv: list[str]) -> None:
    platforms = tuple(argv[1].split(","))
    if "--no-setup" in argv:  # build_job calls platform.setup() too: make it install nothing
        platform.use_unrolled_threefry = lambda: False
    platform.setup()
    assert len(jax.devices()) == 4, "run with --xla_force_host_platform_device_count=4"
    for name, exported in programs(platforms):
        print(json.dumps(describe(name, exported)), flush=True)


if __name__ == "__main__":
    main(sys.argv)
