"""Replica groups: K models in one compiled program equal K solo runs (one device here;
tests/test_parallel.py runs a group on a replica x data mesh)."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from ladder_jax import config, replicas, train
from ladder_jax import workdir as wd

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
        exp = train.build_experiment(cfg, mnist)
        state = train.init_state(cfg, exp.optimizer)
        losses = []
        for _ in range(STEPS_B // CHUNK):
            state, step_losses = train.run_steps(exp, state, CHUNK)
            losses.append(step_losses)
        _, errors = train.evaluate(exp, state.params)
        out.append((np.concatenate(losses), state.params, errors["test_error"]))
    return out


def _assert_params_close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_group_steps_match_solo_runs(mnist, solo):
    group = replicas.build_group(_cfgs(), mnist)
    state = replicas.init_group_state(group)
    losses = []
    for _ in range(STEPS_B // CHUNK):
        state, step_losses = replicas.run_group_steps(group, state, CHUNK)
        losses.append(step_losses)
    losses = np.concatenate(losses, axis=1)
    assert losses.shape == (3, STEPS_B)
    for i, (solo_losses, solo_params, _) in enumerate(solo):
        np.testing.assert_allclose(losses[i], solo_losses, rtol=2e-5)
        _assert_params_close(replicas.unstack(state.params, i), solo_params)
    assert not np.allclose(losses[0], losses[1])


def _extend(workdir: str, cfgs: list[config.TrainConfig], max_steps: int
            ) -> list[config.TrainConfig]:
    """Stand-in for an interrupted group: the same run with a later stop (config rewrite)."""
    longer = [c.replace(max_steps=max_steps) for c in cfgs]
    wd.write_json_atomic(os.path.join(workdir, replicas.GROUP_FILE),
                         [c.to_dict() for c in longer])
    for c in longer:
        wd.write_json_atomic(os.path.join(replicas.replica_workdir(workdir, c),
                                          wd.CONFIG_FILE), c.to_dict())
    return longer


def test_train_replicas_and_evaluate_resumes_and_reports_each_replica(tmp_path, mnist, solo):
    workdir = str(tmp_path / "group")
    short = [c.replace(max_steps=STEPS_A) for c in _cfgs()]
    first = replicas.train_replicas_and_evaluate(short, workdir, mnist)
    assert [r.results["step"] for r in first] == [STEPS_A] * 3
    cfgs = _extend(workdir, short, STEPS_B)
    results = replicas.train_replicas_and_evaluate(cfgs, workdir, mnist)  # resumes at A

    assert sorted(os.listdir(workdir)) == sorted(
        ["checkpoints", replicas.GROUP_FILE] + [replicas.replica_name(c) for c in cfgs])
    for cfg, run, (solo_losses, solo_params, solo_error) in zip(cfgs, results, solo):
        rdir = replicas.replica_workdir(workdir, cfg)
        assert wd.read_json(os.path.join(rdir, wd.CONFIG_FILE)) == cfg.to_dict()
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

    again = replicas.train_replicas_and_evaluate(cfgs, workdir, mnist)  # finished: stored
    assert [r.results for r in again] == [r.results for r in results]
    with pytest.raises(config.ConfigError, match="another replica group"):
        replicas.train_replicas_and_evaluate(cfgs[:2], workdir, mnist)


def test_group_rules():
    cfgs = _cfgs()
    replicas.check_group(cfgs)
    assert len({replicas.shape_key(c) for c in cfgs}) == 1
    with pytest.raises(config.ConfigError, match="lr"):
        replicas.check_group([cfgs[0], cfgs[1].replace(lr=0.001)])
    with pytest.raises(config.ConfigError, match="more than once"):
        replicas.check_group([cfgs[0], cfgs[0]])
    with pytest.raises(config.ConfigError):
        replicas.check_group([])
    assert replicas.replica_name(cfgs[1]) == "replica_seed1_labels50"


def test_replica_dirs_put_each_replica_where_the_caller_wants(tmp_path, mnist):
    cfgs = [c.replace(max_steps=CHUNK) for c in _cfgs()]  # the same program as above
    dirs = [str(tmp_path / "cells" / f"cell{i}") for i in range(3)]
    runs = replicas.train_replicas_and_evaluate(cfgs, str(tmp_path / "group"), mnist,
                                                replica_dirs=dirs)
    for cfg, d, run in zip(cfgs, dirs, runs):
        assert wd.read_json(os.path.join(d, wd.CONFIG_FILE)) == cfg.to_dict()
        assert wd.read_json(os.path.join(d, wd.RESULTS_FILE)) == run.results
        assert [r["step"] for r in wd.read_metrics(d)] == [CHUNK]
    assert os.listdir(tmp_path / "group") != []  # checkpoints + replicas.json stay there
    with pytest.raises(config.ConfigError, match="distinct"):
        replicas.train_replicas_and_evaluate(cfgs, str(tmp_path / "g2"), mnist,
                                             replica_dirs=[dirs[0], dirs[1], dirs[0]])
