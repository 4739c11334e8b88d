"""Cross-platform lowering from this CPU (jax.export): the training chunk (one model, K = 4
replicas, data parallel over a mesh of 4 host devices), the population statistics, the
evaluation and the prediction, for the MLP and Conv-Small, lower for CUDA and TPU with no
custom call and every product at float32 precision (not the GPU's TF32 default); the conv
family lowers to convolutions there (im2col matmuls on the CPU); the
CPU-only threefry registration (platform.setup) leaves the accelerator programs unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "export_worker.py")
PROGRAMS = [f"mlp_{p}" for p in ("chunk", "chunk_4_replicas", "chunk_data_parallel_4_devices",
                                 "population_stats", "evaluation", "prediction")] + \
           [f"conv_{p}" for p in ("chunk", "population_stats", "evaluation", "prediction")]


def export_all(platforms: str, *extra: str) -> dict[str, dict]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(WORKER)),
                                           os.environ.get("PYTHONPATH", "")]))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, WORKER, platforms, *extra], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {row["name"]: row for row in rows}


@pytest.fixture(scope="module")
def accelerators() -> dict[str, dict]:
    return export_all("cuda,tpu")


def test_every_program_exports_for_cuda_and_tpu_without_custom_calls(accelerators):
    assert list(accelerators) == PROGRAMS
    for row in accelerators.values():
        assert row["platforms"] == ["cuda", "tpu"]
        assert row["custom_calls"] == [], row["name"]
        assert row["dot_generals"] > 0, row["name"]  # the real network, not an empty shell
        assert row["below_float32"] == 0, row["name"]  # float32 products on the device too
    assert accelerators["mlp_chunk_data_parallel_4_devices"]["num_devices"] == 4


@pytest.fixture(scope="module")
def cpu() -> dict[str, dict]:
    return export_all("cpu")


def test_conv_lowers_to_convolutions_on_accelerators_and_matmuls_on_the_cpu(accelerators, cpu):
    for name in ("conv_chunk", "conv_evaluation"):
        assert accelerators[name]["convolutions"] > 0
        assert cpu[name]["convolutions"] == 0  # im2col: the CPU's faster form
        assert cpu[name]["custom_calls"] == []
    assert all(row["convolutions"] == 0 for n, row in accelerators.items() if "mlp" in n)


def test_the_cpu_threefry_registration_does_not_reach_accelerator_programs(accelerators, cpu):
    plain = export_all("cuda,tpu", "--no-setup")
    assert {n: r["sha256"] for n, r in plain.items()} == \
        {n: r["sha256"] for n, r in accelerators.items()}
    # ... while on the CPU it is in force: the noise-drawing programs lower differently.
    plain_cpu = export_all("cpu", "--no-setup")
    assert plain_cpu["mlp_chunk"]["sha256"] != cpu["mlp_chunk"]["sha256"]
    assert plain_cpu["mlp_evaluation"]["sha256"] == cpu["mlp_evaluation"]["sha256"]  # no noise
