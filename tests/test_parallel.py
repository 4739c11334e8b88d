"""Data parallelism: the mesh helpers, and 4 forced CPU devices against one device.

JAX reads the device count when it starts, so the 4-device run is a subprocess
(tests/parallel_worker.py). Multi-process training is in tests/test_multihost.py.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import parallel_worker as worker  # tests/ is on sys.path under pytest
import pytest

from ladder_jax import config, parallel


def test_threefry_partitionable_is_on():
    # Noise drawn inside the sharded step is then independent of the sharding.
    assert jax.config.jax_threefry_partitionable


def test_mesh_shape_and_device_choice():
    assert parallel.mesh_shape(4, 1) == (1, 4)
    assert parallel.mesh_shape(4, 2) == (2, 2)
    assert parallel.mesh_shape(4, 3) == (1, 4)
    assert parallel.mesh_shape(8, 4) == (4, 2)
    assert parallel.choose_num_devices(0, (100, 100)) == jax.device_count()
    with pytest.raises(config.ConfigError, match="device"):
        parallel.choose_num_devices(jax.device_count() + 1, (100, 100))


def test_distributed_manual_needs_its_flags():
    with pytest.raises(config.ConfigError, match="--num_processes"):
        parallel.initialize_distributed("manual", coordinator_address="127.0.0.1:1",
                                        process_id=0)
    with pytest.raises(config.ConfigError, match="choose one of"):
        parallel.initialize_distributed("sometimes")
    assert parallel.initialize_distributed("off") is False


def test_four_devices_match_one_device(tmp_path):
    out = tmp_path / "devices.npz"
    proc = subprocess.run(
        [sys.executable, worker.WORKER, "devices", str(out)], cwd=tmp_path,
        capture_output=True, text=True, timeout=worker.TIMEOUT_S, check=False,
        env=worker.worker_env("--xla_force_host_platform_device_count=4"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = np.load(out)
    assert bool(r["batch_split_4way"]), "the batch is not split over the 4 devices"
    solo, dp = r["solo_losses"], r["dp_losses"]
    assert solo.shape == (worker.STEPS,)
    np.testing.assert_allclose(dp, solo, rtol=2e-5)
    assert not np.array_equal(solo[:-1], solo[1:])  # the losses do move
    num_params = len([k for k in r.files if k.startswith("solo_param_")])
    assert num_params > 0
    for i in range(num_params):
        np.testing.assert_allclose(r[f"dp_param_{i}"], r[f"solo_param_{i}"], rtol=1e-4,
                                   atol=1e-5)
    # Replica 0 of a 2-replica group on a replica=2 x data=2 mesh follows the solo run.
    group = r["group_losses"]
    assert group.shape == (2, worker.STEPS)
    np.testing.assert_allclose(group[0], solo, rtol=2e-5)
    assert np.all(np.isfinite(group[1])) and not np.allclose(group[1], solo)
