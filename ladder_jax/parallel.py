"""Scaling out with jax.sharding: multi-host start-up, the device mesh and array placement.

One mesh with two axes serves every layout:

* ``'data'``: the training batch is split along its first axis over these devices. The
  loss is jitted over the *global* batch, so batch-norm statistics are those of the whole
  batch and the numbers equal a one-device run up to float reordering (the noise is
  sharding-invariant because ``jax_threefry_partitionable`` is on, the default in jax 0.10).
* ``'replica'``: independent models trained in one program (``ladder_jax.train.job``) are
  split over these devices along their leading (replica) axis.

Parameters, optimiser state and the resident uint8 training set are replicated over the
mesh. Global arrays are built with ``jax.make_array_from_callback`` from host values that
every process holds identically, which works when the mesh spans several processes (a
plain ``device_put`` of host numpy onto devices of other processes does not).

With one device and one replica nothing here is used: ``train.train_and_evaluate`` keeps
its single-device path, numerically identical to a run without this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ladder_jax.config import ConfigError

REPLICA_AXIS = "replica"
DATA_AXIS = "data"
DISTRIBUTED_MODES = ("off", "auto", "manual")


# ----------------------------------------------------------------------------------------
# Multi-host start-up.


def initialize_distributed(mode: str = "off", *, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           ) -> bool:
    """Starts jax.distributed before any other JAX call; returns whether it did.

    mode 'off': single process (nothing happens). 'auto': ``jax.distributed.initialize()``
    with no arguments, which detects Cloud TPU pods, SLURM and other managed clusters.
    'manual': the coordinator address ('host:port' of process 0), the number of processes
    and this process's id must be given. On CPU, collectives across processes use gloo.
    """
    if mode not in DISTRIBUTED_MODES:
        raise ConfigError(f"distributed={mode!r}: choose one of {', '.join(DISTRIBUTED_MODES)}")
    if mode == "off":
        return False
    # Only affects the CPU backend; TPU/GPU use their own interconnect collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if mode == "auto":
        jax.distributed.initialize()
    else:
        missing = [name for name, value in (("coordinator_address", coordinator_address),
                                            ("num_processes", num_processes),
                                            ("process_id", process_id)) if value is None]
        if missing:
            raise ConfigError(f"--distributed=manual needs --{', --'.join(missing)}")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"process_id={process_id} must be in [0, {num_processes})")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return True


# ----------------------------------------------------------------------------------------
# The mesh.


def mesh_shape(num_devices: int, num_replicas: int = 1) -> tuple[int, int]:
    """(replica, data) sizes for ``num_devices`` devices and ``num_replicas`` models.

    The replica axis takes the largest share of devices that divides both numbers (each
    device then holds whole replicas); the rest of the devices split each batch.
    """
    replica = math.gcd(num_devices, max(num_replicas, 1))
    return replica, num_devices // replica


def choose_num_devices(requested: int, batch_sizes: tuple[int, ...], num_replicas: int = 1,
                       ) -> int:
    """The device count to use. ``requested`` 0 means all devices (of all processes).

    Every batch size must divide evenly over the data axis. An explicit request that does
    not fit raises ConfigError; with the default (0) in a single process, the most devices
    that fit are used (logged), while a multi-process run must use every device.
    """
    available = jax.device_count()
    if requested < 0 or requested > available:
        raise ConfigError(f"num_devices={requested}: this run has {available} device(s); "
                          "use 0 (all) or a number up to that")

    def fits(n: int) -> bool:
        _, data = mesh_shape(n, num_replicas)
        return all(b % data == 0 for b in batch_sizes)

    if requested and requested != available and jax.process_count() > 1:
        raise ConfigError(f"num_devices={requested}: a multi-process run uses all {available} "
                          "devices (leave --num_devices at 0)")
    if requested:
        if not fits(requested):
            _, data = mesh_shape(requested, num_replicas)
            raise ConfigError(
                f"num_devices={requested} splits each batch over {data} devices, but batch "
                f"sizes {batch_sizes} are not multiples of {data}; pick another --num_devices "
                "or --batch_size")
        return requested
    if fits(available):
        return available
    if jax.process_count() > 1:
        _, data = mesh_shape(available, num_replicas)
        raise ConfigError(
            f"a multi-process run uses all {available} devices, splitting each batch over "
            f"{data}; batch sizes {batch_sizes} must be multiples of {data}")
    n = max(k for k in range(1, available + 1) if fits(k))
    logging.warning("batch sizes %s do not split over all %d devices; using %d",
                    batch_sizes, available, n)
    return n


def make_mesh(num_devices: int | None = None, num_replicas: int = 1) -> Mesh:
    """A ('replica', 'data') mesh over the first ``num_devices`` devices (default: all).

    In a multi-process run the devices are those of every process (``jax.devices()``).
    """
    devices = jax.devices()
    n = len(devices) if not num_devices else num_devices
    if n > len(devices):
        raise ConfigError(f"num_devices={n} but only {len(devices)} device(s) exist")
    shape = mesh_shape(n, num_replicas)
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh(shape, (REPLICA_AXIS, DATA_AXIS), auto, devices=devices[:n])


def needs_mesh(num_devices: int) -> bool:
    """Whether a run needs the mesh path: more than one device, or more than one process."""
    return num_devices > 1 or jax.process_count() > 1


def is_main_process() -> bool:
    """Process 0: the one that logs and writes metrics and results."""
    return jax.process_index() == 0


def describe(mesh: Mesh) -> str:
    """'replica=1 x data=4 over 4 cpu devices (1 process)' style summary."""
    shape = dict(mesh.shape)
    kind = mesh.devices.flat[0].platform
    procs = len({d.process_index for d in mesh.devices.flat})
    return (f"{REPLICA_AXIS}={shape[REPLICA_AXIS]} x {DATA_AXIS}={shape[DATA_AXIS]} over "
            f"{mesh.devices.size} {kind} device(s), {procs} process(es)")


# ----------------------------------------------------------------------------------------
# Shardings and global arrays.


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis split over 'data' (a batch), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replica_sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis split over 'replica' (stacked models), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(REPLICA_AXIS))


def batch_constraint(mesh: Mesh) -> Callable[[jax.Array], jax.Array]:
    """Inside jit: pins an array's leading (batch) axis to the 'data' mesh axis.

    Under ``jax.vmap(..., spmd_axis_name='replica')`` the vmapped axis goes to 'replica'.
    """
    sharding = batch_sharded(mesh)
    return lambda x: jax.lax.with_sharding_constraint(x, sharding)


def to_global(tree: Any, sharding: NamedSharding | Callable[[Any], NamedSharding]) -> Any:
    """Host (or single-device) values -> global jax.Arrays with ``sharding``.

    Every process must pass the same values. ``sharding`` may be a function of the leaf.
    PRNG key arrays are not supported (pass ``jax.random.key_data``).
    """

    def put(leaf: Any) -> jax.Array:
        value = np.asarray(leaf)
        value = value.astype(jax.dtypes.canonicalize_dtype(value.dtype), copy=False)
        s = sharding(leaf) if callable(sharding) else sharding
        return jax.make_array_from_callback(value.shape, s, lambda index: value[index])

    return jax.tree_util.tree_map(put, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``to_global`` with every leaf replicated over ``mesh``."""
    return to_global(tree, replicated(mesh))


def to_host(tree: Any) -> Any:
    """Global arrays (fully replicated or not) -> numpy, on every process."""
    from jax.experimental import multihost_utils

    def get(leaf: Any) -> np.ndarray:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable \
                and not leaf.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree_util.tree_map(get, tree)


def process_banner() -> str:
    """'process 0/2 (pid 123)' for log lines of multi-process runs."""
    return f"process {jax.process_index()}/{jax.process_count()} (pid {os.getpid()})"
