"""The conv ladder family through the training engine, on real MNIST with a tiny conv net
(tests/parallel_worker.py: CONV_SPEC, 28 -> 12x12x8 -> 6x6x8 -> 4x4x10 -> 10, batches of
20 + 20; the full decoder and the Gamma-model):

- data parallel on 4 host devices gives the numbers of 1 device, and K = 2 replicas
  (other seed, other label count) on a replica x data mesh equal their solo runs (a
  subprocess with 4 forced CPU devices, as tests/test_parallel.py);
- a run of the general runner (python -m experiments.train --conv_layers=...) killed with
  SIGKILL and resumed ends with exactly the params, population statistics and metrics of
  an uninterrupted one;
- the benchmark's FLOP count (experiments.measure.benchmark.step_flops) equals the
  convolutions and matmuls of the traced training step (benchmark.step_contractions).

Compiling dominates (about 20 s for the tiny full-decoder step on this 2-core machine,
more for the 4-device and 2-replica programs), so every subprocess compiles with XLA's
backend optimisations off (parallel_worker.worker_env), the runner's processes share one
persistent compilation cache, and the 4-device worker starts with the module so that it
compiles while the runner's processes do.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import contractions
import jax
import numpy as np
import parallel_worker as worker  # tests/ is on sys.path under pytest
import pytest
from processes import checkpoint_steps, signal_after_checkpoint

from experiments.measure import benchmark
from ladder_jax import config, train
from ladder_jax.train import job as job_lib
from ladder_jax.train import workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES_TEST = "test_four_devices_and_two_replicas_match_one_device_runs"


# ------------------------------------------------ the 4-device worker, started with the module


@pytest.fixture(scope="module", autouse=True)
def devices_worker(request, tmp_path_factory):
    """The conv_devices worker as a running process (or None when DEVICES_TEST is not
    selected): started before this module's first test, read by DEVICES_TEST (the last)."""
    selected = any(item.nodeid.endswith(f"{os.path.basename(__file__)}::{DEVICES_TEST}")
                   for item in request.session.items)
    if not selected:
        yield None
        return
    tmp = tmp_path_factory.mktemp("conv_devices")
    out, log = tmp / "conv_devices.npz", open(tmp / "stderr.txt", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, worker.WORKER, "conv_devices", str(out)], cwd=tmp,
        stdout=subprocess.DEVNULL, stderr=log,
        env=worker.worker_env("--xla_force_host_platform_device_count=4"))
    try:
        yield proc, out, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


# ------------------------------------------------ FLOPs: the benchmark's count = the traced step

# Every conv layer type: a strided valid conv, a full conv, a max pool with a partial border
# window (7 -> 4), a strided full conv, a global mean pool and an fc top.
FLOPS_SPEC = "convv:4:3:2:1-convf:4:2:1:1-maxpool:2:2-convf:3:2:2:1-globalmeanpool:0-fc:10"


@pytest.mark.parametrize("weights, num_ops", [
    ((1.0,) * 7, 3 * 4 - 1 + 3 * 4),  # full decoder: 4 convs/dots, each with a transpose V
    ((0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0), 3 * 4 - 1 + 3 * 2),  # decoded down to layer 3
    ((0.0,) * 6 + (1.0,), 3 * 4 - 1),  # Gamma: the top's combinator only
    (0.0, 3 * 4 - 1),  # supervised baseline: labeled rows only
])
def test_benchmark_flops_count_the_traced_conv_steps_convolutions_and_matmuls(
        weights, num_ops, mnist):
    """Per encoder conv/fc layer: forward, weight gradient and input gradient (none for the
    lowest, whose input is data); per decoder transpose V the same three. Convolutions as
    lax.conv_general_dilated on every platform: their padding is explicit in the equations."""
    cfg = config.preset("conv_small_gamma_100").replace(
        model={"conv_layers": FLOPS_SPEC, "denoise_weights": weights, "noise_std": 0.3,
               "conv_lowering": "lax"},
        batch_size=20, unlabeled_batch_size=30)
    assert cfg.model.layer_shapes == [(28, 28, 1), (13, 13, 4), (14, 14, 4), (7, 7, 4),
                                      (4, 4, 3), (3,), (10,)]
    job = train.build_job([cfg], mnist)
    state = jax.eval_shape(lambda: job_lib.init_job_state(job))  # shapes are all it needs
    ops = benchmark.step_contractions(job, state)  # found inside the scan's body
    names = {eqn.primitive.name for eqn in ops}
    assert names == {"conv_general_dilated", "dot_general"}, names
    assert len(ops) == num_ops
    assert sum(contractions.contraction_flops(eqn) for eqn in ops) == benchmark.step_flops(cfg)


# ------------------------------------------------ SIGKILL and resume through the runner CLI

CLI_FLAGS = [
    "--preset=conv_small_gamma_100", f"--conv_layers={worker.CONV_SPEC}",
    "--denoise_weights=" + ",".join(str(w) for w in worker.CONV_GAMMA), "--noise_std=0.3",
    f"--batch_size={worker.CONV_BATCH}", "--num_labels=100",
    # 6000 unlabeled images (the least a class-balanced hold-out leaves): each checkpoint's
    # population statistics are cheap; the 54000 held out are evaluated once, at the end
    "--num_validation=54000", "--epochs=1", "--max_steps=30",
    "--steps_per_call=10", "--checkpoint_every=10",
]
END_STEP = 30
KILL_AFTER = 10  # the run is killed once a checkpoint at or after this step exists
TIMING_KEYS = {"steps_per_s", "wall_time_s"}


@pytest.fixture(scope="module")
def cli_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("xla_cache"))


def cli_command(work: str, cache: str) -> list[str]:
    return [sys.executable, "-m", "experiments.train", f"--workdir={work}",
            f"--compilation_cache_dir={cache}", *CLI_FLAGS]


def cli_env() -> dict[str, str]:
    """XLA's backend optimisations off; every program, however quick to compile, cached."""
    return {**worker.worker_env(), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def numeric_records(work: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in workdir.read_metrics(work)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cli_cache) -> str:
    """The conv run trained start to finish (it fills the compilation cache)."""
    work = str(tmp_path_factory.mktemp("conv_uninterrupted"))
    proc = subprocess.run(cli_command(work, cli_cache), cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test error" in proc.stdout, proc.stdout
    return work


def test_conv_run_through_the_cli_writes_every_artifact(uninterrupted):
    stored = workdir.read_config(uninterrupted)
    assert stored.model.family == "conv" and stored.model.conv_layers == worker.CONV_SPEC
    assert stored.model.denoise_weights == worker.CONV_GAMMA
    assert stored.batch_size == stored.unlabeled_batch_size == worker.CONV_BATCH
    [record] = workdir.read_metrics(uninterrupted)  # at the stop, before an epoch ends
    assert record["step"] == END_STEP and record["epoch"] == END_STEP / 300
    assert 0 <= record["test_error"] <= 1 and 0 <= record["val_error"] <= 1
    assert np.isfinite(record["loss"]) and record["denoise_cost"] > 0
    results = workdir.read_json(os.path.join(uninterrupted, workdir.RESULTS_FILE))
    assert results["step"] == END_STEP
    assert results["final_test_error"] == record["test_error"]
    assert checkpoint_steps(uninterrupted)[-1] == END_STEP


def test_sigkill_and_resume_of_a_conv_run_give_the_same_params_and_metrics(
        uninterrupted, cli_cache, tmp_path):
    """One kill (tests/test_runner.py kills an MLP run twice; a resumed run resumes alike)."""
    work = str(tmp_path / "killed")
    cmd = cli_command(work, cli_cache)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=cli_env())
    signal_after_checkpoint(proc, work, KILL_AFTER, [signal.SIGKILL])
    proc.wait()
    assert max(checkpoint_steps(work)) < END_STEP
    assert not os.path.exists(os.path.join(work, workdir.RESULTS_FILE))
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False, env=cli_env())
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = re.search(r"from the checkpoint at step (\d+)", done.stderr)
    assert resumed and KILL_AFTER <= int(resumed[1]) < END_STEP, done.stderr[-3000:]
    assert numeric_records(work) == numeric_records(uninterrupted)
    assert (workdir.read_json(os.path.join(work, workdir.RESULTS_FILE))["final_test_error"]
            == workdir.read_json(os.path.join(uninterrupted, workdir.RESULTS_FILE))
            ["final_test_error"])
    _, state_a, stats_a = train.load_run(work)
    _, state_b, stats_b = train.load_run(uninterrupted)
    assert int(state_a.step) == int(state_b.step) == END_STEP
    leaves_a = jax.tree_util.tree_leaves((state_a, stats_a))
    leaves_b = jax.tree_util.tree_leaves((state_b, stats_b))
    assert len(leaves_a) == len(leaves_b) > 0
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------ 4 devices and 2 replicas against 1 device


def test_four_devices_and_two_replicas_match_one_device_runs(devices_worker):
    proc, out, log = devices_worker
    try:
        rc = proc.wait(timeout=worker.TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    log.seek(0)
    assert rc == 0, log.read()[-4000:]
    r = np.load(out)

    def params(name):
        keys = sorted((k for k in r.files if k.startswith(f"{name}_param_")),
                      key=lambda k: int(k.rsplit("_", 1)[1]))
        assert keys, name
        return [r[k] for k in keys]

    def assert_same_run(name, reference):
        np.testing.assert_allclose(r[f"{name}_losses"], r[f"{reference}_losses"], rtol=2e-5,
                                   err_msg=f"{name} vs {reference}")
        got, want = params(name), params(reference)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} vs {reference}")

    for name in ("full_solo0", "gamma_solo0", "gamma_solo1"):
        losses = r[f"{name}_losses"]
        assert losses.shape == (worker.CONV_STEPS,) and np.all(np.isfinite(losses))
        assert not np.allclose(losses[:-1], losses[1:])  # the losses do move
    # the full decoder, data parallel over 4 devices
    assert int(r["full_dp_num_devices"]) == 4
    assert_same_run("full_dp", "full_solo0")
    # the Gamma-model, 2 replicas (seeds 0 and 1, 100 and 50 labels) on a 2 x 2 mesh
    assert_same_run("gamma_group0", "gamma_solo0")
    assert_same_run("gamma_group1", "gamma_solo1")
    assert not np.allclose(r["gamma_solo0_losses"], r["gamma_solo1_losses"])
