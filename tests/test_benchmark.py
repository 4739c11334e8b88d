"""The benchmark's FLOP formula against the matmuls of the traced step, its figures, and the
step profiler's accounting."""

from __future__ import annotations

import math

import pytest

from experiments.measure import benchmark, step_profile
from ladder_jax import config, train
from ladder_jax.train import job as job_lib

TINY = {"layer_sizes": (784, 30, 20, 10), "noise_std": 0.3}


def _dot_flops(dots) -> int:
    """2 * (output size) * (contracted size) summed over dot_general equations."""
    total = 0
    for eqn in dots:
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        contracted = math.prod(lhs[d] for d in lhs_contract)
        total += 2 * math.prod(eqn.outvars[0].aval.shape) * contracted
    return total


@pytest.mark.parametrize("preset", ["full_100", "gamma_100", "baseline_100", "bottom_100"])
def test_matmul_flop_formula_counts_the_dots_of_one_traced_step(preset, mnist):
    base = config.preset(preset)
    weights = base.model.denoise_weights
    cfg = base.replace(model={**TINY, "denoise_weights": (weights[0], weights[1], weights[2],
                                                          weights[-1])},
                       batch_size=50, unlabeled_batch_size=70)
    job = train.build_job([cfg], mnist)
    state = job_lib.init_job_state(job)
    dots = benchmark.step_contractions(job, state)  # found inside the scans' bodies too
    assert dots and {eqn.primitive.name for eqn in dots} == {"dot_general"}  # dense: no convs
    assert _dot_flops(dots) == benchmark.step_flops(cfg)


def test_benchmark_figures_are_consistent(mnist):
    cfg = config.preset("full_100").replace(model=TINY | {"denoise_weights": (1.0,) * 4})
    figures = benchmark.benchmark(cfg, steps_per_call=3, repeats=2, peak_size=256,
                                  dataset=mnist, evaluation=True)
    step_s = figures["ms_per_step"] / 1000
    assert figures["model"] == "784-30-20-10" and figures["matmul_dtype"] == "float32"
    assert figures["matmul_gflop"] == pytest.approx(benchmark.step_flops(cfg) / 1e9)
    assert figures["ms_per_step_min"] <= figures["ms_per_step"] <= figures["ms_per_step_max"]
    assert figures["examples_per_s"] == pytest.approx(200 / step_s)
    assert figures["achieved_gflops"] == pytest.approx(figures["matmul_gflop"] / step_s)
    assert figures["peak_gflops"] == max(figures["peak_gflops_jax"], figures["peak_gflops_numpy"])
    assert figures["fraction_of_peak"] == pytest.approx(
        figures["achieved_gflops"] / figures["peak_gflops"])
    assert figures["peak_gflops"] > 0.1 and figures["final_loss_finite"]
    assert figures["matmuls_alone_ms"] > 0
    assert figures["evaluation_rows"] == len(mnist.train_labels)
    assert figures["population_stats_s"] > 0 and figures["population_stats_first_s"] > 0
    assert figures["fraction_if_only_matmuls"] == pytest.approx(
        figures["matmul_gflop"] / (figures["matmuls_alone_ms"] / 1000) / figures["peak_gflops"])


@pytest.mark.parametrize("preset", ["full_100", "gamma_100"])
def test_profile_finds_every_matmul_of_the_step_once_per_step(preset, mnist):
    """Per step the profile sees one run of each of the model's matmuls, and nothing else
    marked as one: encoder L forward + L weight gradients + L - 1 input gradients (the
    data needs none), 3 per decoder weight V (forward, weight and input gradient)."""
    base = config.preset(preset)
    weights = base.model.denoise_weights
    cfg = base.replace(model={**TINY, "denoise_weights": (weights[0], weights[1], weights[2],
                                                          weights[-1])})
    job = train.build_job([cfg], mnist)
    figures = step_profile.profile(job, job_lib.init_job_state(job), steps_per_call=3)
    num_layers = len(TINY["layer_sizes"]) - 1
    decoder_weights = num_layers - cfg.model.lowest_decoded_layer
    matmul_runs = [runs for _, runs, is_matmul in figures["ops"].values() if is_matmul]
    assert sum(matmul_runs) == pytest.approx(3 * num_layers - 1 + 3 * decoder_weights)
    assert all(runs == pytest.approx(1.0) for runs in matmul_runs)
    assert 0 < figures["matmul_ms"] < figures["step_ms"]
    assert figures["other_only_ms"] > 0 and figures["idle_ms"] >= 0
