"""Jobs of K > 1 models (replicas): K models in one compiled program equal K single runs
(one device here; tests/test_parallel.py runs a group on a replica x data mesh)."""

from __future__ import annotations

import os

import jax
import numpy as np
import parallel_worker as worker  # tests/ is on sys.path under pytest
import pytest

from ladder_jax import config, train
from ladder_jax.train import job as job_lib
from ladder_jax.train import workdir as wd

CHUNK = 10
STEPS_A, STEPS_B = 20, 30  # the group run is interrupted at A and resumed to B


def _cfgs() -> list[config.TrainConfig]:
    base = config.preset("full_100").replace(
        model={"layer_sizes": (784, 32, 10), "denoise_weights": (1000.0, 10.0, 0.1),
               "noise_std": 0.3},
        epochs=1, steps_per_call=CHUNK, checkpoint_every=CHUNK, max_steps=STEPS_B)
    # different seeds and different label counts, one program
    return [base, base.replace(seed=1, num_labels=50), base.replace(seed=2, num_labels=1000)]


@pytest.fixture(scope="module")
def solo(mnist):
    """Per replica: per-step losses [STEPS_B], final params and test error of a solo run."""
    out = []
    for cfg in _cfgs():
        job, state, losses = worker.run_group([cfg], mnist, None, STEPS_B)
        _, errors = job_lib.evaluate_model(job, 0, state.params)
        out.append((losses[0], state.params, errors["test_error"]))
    return out


def _assert_params_close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_group_steps_match_solo_runs(mnist, solo):
    group, state, losses = worker.run_group(_cfgs(), mnist, None, STEPS_B)
    assert losses.shape == (3, STEPS_B)
    for i, (solo_losses, solo_params, _) in enumerate(solo):
        np.testing.assert_allclose(losses[i], solo_losses, rtol=2e-5)
        _assert_params_close(job_lib.split(group, state.params)[i], solo_params)
    assert not np.allclose(losses[0], losses[1])


def test_train_group_resumes_and_reports_each_replica(tmp_path, mnist, solo):
    workdir = str(tmp_path / "group")
    short = [c.replace(max_steps=STEPS_A) for c in _cfgs()]
    first = train.train_group(short, workdir, mnist)
    assert [r.results["step"] for r in first] == [STEPS_A] * 3
    cfgs = _cfgs()  # the same runs with a later stop: they resume at A
    results = train.train_group(cfgs, workdir, mnist)

    assert sorted(os.listdir(workdir)) == sorted(
        ["checkpoints", wd.GROUP_FILE]
        + [os.path.basename(train.replica_workdir(workdir, c)) for c in cfgs])
    for cfg, run, (solo_losses, solo_params, solo_error) in zip(cfgs, results, solo):
        rdir = train.replica_workdir(workdir, cfg)
        assert wd.read_config(rdir) == cfg
        records = wd.read_metrics(rdir)
        assert [r["step"] for r in records] == [STEPS_A, STEPS_B]
        assert records == run.metrics
        # each metrics line averages the steps since the previous line
        np.testing.assert_allclose(records[0]["loss"], solo_losses[:STEPS_A].mean(), rtol=1e-5)
        np.testing.assert_allclose(records[1]["loss"], solo_losses[STEPS_A:].mean(), rtol=1e-5)
        stored = wd.read_json(os.path.join(rdir, wd.RESULTS_FILE))
        assert stored == run.results
        assert stored["seed"] == cfg.seed and stored["num_labels"] == cfg.num_labels
        assert stored["num_replicas"] == 3 and stored["step"] == STEPS_B
        assert abs(stored["final_test_error"] - solo_error) <= 3e-4  # an argmax may flip
        _assert_params_close(run.state.params, solo_params)
        assert int(run.state.step) == STEPS_B

    again = train.train_group(cfgs, workdir, mnist)  # finished: stored
    assert [r.results for r in again] == [r.results for r in results]
    with pytest.raises(config.ConfigError, match="another group"):
        train.train_group(cfgs[:2], workdir, mnist)


def test_group_rules():
    cfgs = _cfgs()
    train.check_models(cfgs)
    assert len({train.job_key(c) for c in cfgs}) == 1
    with pytest.raises(config.ConfigError, match="lr"):
        train.check_models([cfgs[0], cfgs[1].replace(lr=0.001)])
    with pytest.raises(config.ConfigError, match="more than once"):
        train.check_models([cfgs[0], cfgs[0]])
    with pytest.raises(config.ConfigError):
        train.check_models([])
    assert os.path.basename(train.replica_workdir("w", cfgs[1])) == "replica_seed1_labels50"


def test_replica_dirs_put_each_replica_where_the_caller_wants(tmp_path, mnist):
    cfgs = [c.replace(max_steps=CHUNK) for c in _cfgs()]  # the same program as above
    dirs = [str(tmp_path / "cells" / f"cell{i}") for i in range(3)]
    runs = train.train_group(cfgs, str(tmp_path / "group"), mnist, run_dirs=dirs)
    for cfg, d, run in zip(cfgs, dirs, runs):
        assert wd.read_config(d) == cfg
        assert wd.read_json(os.path.join(d, wd.RESULTS_FILE)) == run.results
        assert [r["step"] for r in wd.read_metrics(d)] == [CHUNK]
    assert os.listdir(tmp_path / "group") != []  # checkpoints + replicas.json stay there
    assert int(train.load_run(dirs[0])[1].step) == CHUNK  # from the group's checkpoint
    # A member trained again on its own (a sweep re-run with one pending seed) is loaded
    # from its own checkpoints, not from the group's older ones.
    os.remove(os.path.join(dirs[0], wd.RESULTS_FILE))
    alone = train.train_and_evaluate(cfgs[0].replace(max_steps=2 * CHUNK), dirs[0],
                                     dataset=mnist)
    assert not os.path.exists(os.path.join(dirs[0], wd.MEMBER_FILE))
    _, state, _ = train.load_run(dirs[0])
    assert int(state.step) == 2 * CHUNK
    _assert_params_close(state.params, alone.state.params)
    with pytest.raises(config.ConfigError, match="distinct"):
        train.train_group(cfgs, str(tmp_path / "g2"), mnist, run_dirs=[dirs[0], dirs[1], dirs[0]])
