"""Subprocess side of tests/test_parallel.py (JAX must be configured before it starts).

    python tests/parallel_worker.py devices OUT.npz
        (run with XLA_FLAGS=--xla_force_host_platform_device_count=4) per-step losses and
        final params of: a 1-device run, a 4-device data-parallel run, and a 2-replica
        group (seeds 0 and 1) on a 2 x 2 (replica x data) mesh.
    python tests/parallel_worker.py multihost PORT NUM_PROCESSES PROCESS_ID OUTDIR
        one process of a jax.distributed CPU run, data parallel over every process's
        device: train_and_evaluate in OUTDIR/run, interrupted at step STEPS_A and resumed
        to STEPS_B (checkpoints saved and restored collectively). Process 0 writes the
        final params to OUTDIR/multihost.npz.
    python tests/parallel_worker.py conv_devices OUT.npz
        (4 forced devices, for tests/test_conv_training.py) the tiny conv ladder on 1 and 4
        devices, and K = 2 replicas on a 2 x 2 (replica x data) mesh (see conv_devices).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

_T0 = time.time()


def mark(what: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {what}", file=sys.stderr, flush=True)

WORKER = os.path.abspath(__file__)
TIMEOUT_S = 900  # the machine may be shared; a hung collective must not hang the suite
SIZES = (784, 32, 10)
WEIGHTS = (1000.0, 10.0, 0.1)
STEPS = 50  # per-step loss comparison
CHUNK = 10  # steps per compiled call (one compilation serves every run of a process)
STEPS_A, STEPS_B = 20, 30  # train_and_evaluate: interrupted at A, resumed to B


def worker_env(xla_flags: str = "") -> dict[str, str]:
    """The workers' environment. XLA's backend optimisations are off: compiling dominates
    these short runs, and each comparison tolerates float differences anyway."""
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # processes of one run must compile alike
    repo = os.path.dirname(os.path.dirname(WORKER))
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")])
    env["XLA_FLAGS"] = f"--xla_backend_optimization_level=0 {xla_flags}".strip()
    # The forced host devices are CPU devices; on a GPU machine JAX would default to the GPU.
    env["JAX_PLATFORMS"] = "cpu"
    return env


def tiny_config(seed: int = 0, **changes):
    from ladder_jax import config

    return config.preset("full_100").replace(
        model={"layer_sizes": SIZES, "denoise_weights": WEIGHTS, "noise_std": 0.3}, seed=seed,
        epochs=1, steps_per_call=CHUNK, checkpoint_every=CHUNK, max_steps=STEPS, **changes)


def leaves(tree) -> list[np.ndarray]:
    import jax

    from ladder_jax import parallel

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(parallel.to_host(tree))]


def run_in_chunks(job, state, steps: int, chunk: int = CHUNK):
    """(state, per-model per-step losses [models, steps]) after ``steps`` steps of ``job``,
    ``chunk`` per compiled call."""
    from ladder_jax.train import job as job_lib

    losses = []
    for _ in range(steps // chunk):
        state, step_losses = job_lib.run_steps(job, state, chunk)
        losses.append(step_losses)
        mark(f"{chunk} steps")
    return state, np.concatenate(losses, axis=1)


def run_group(cfgs, mnist, mesh, steps: int):
    """(job, state, losses [models, steps]): ``cfgs`` as one job on ``mesh`` (None: one
    device), run for ``steps`` steps."""
    from ladder_jax import train
    from ladder_jax.train import job as job_lib

    job = train.build_job(cfgs, mnist, mesh=mesh)
    state = job_lib.init_job_state(job)
    mark("state ready")
    return (job, *run_in_chunks(job, state, steps))


def run_solo_or_mesh(cfg, mnist, mesh, steps: int = STEPS):
    """Per-step losses [steps] and final params of ``cfg`` (data parallel on ``mesh``)."""
    _, state, losses = run_group([cfg], mnist, mesh, steps)
    return losses[0], state.params


def devices(out: str) -> None:
    import jax

    from ladder_jax import datasets, parallel, train
    from ladder_jax.train import job as job_lib

    assert jax.device_count() == 4, jax.devices()
    mnist = datasets.load("mnist")
    cfg = tiny_config()
    result = {}
    mark("start")
    solo_losses, solo_params = run_solo_or_mesh(cfg, mnist, None)
    mark("solo done")
    mesh = parallel.make_mesh(4)
    dp_losses, dp_params = run_solo_or_mesh(cfg, mnist, mesh)
    mark("data parallel done")
    # The batch constraint reaches the program: a 4-way split of the leading axis.
    job = train.build_job([cfg], mnist, mesh=mesh)
    state = job_lib.init_job_state(job)
    hlo = job.chunk.lower(state, job.data, *job_lib.batch_rows(job, 0, CHUNK), job.noise_keys)
    text = hlo.as_text()
    result["batch_split_4way"] = ('"data"=4' in text and 'sharding_constraint' in text
                                  and '[{"data"}, {}, {}, {}]' in text)  # images [B, H, W, C]
    result.update(solo_losses=solo_losses, dp_losses=dp_losses)
    for i, (a, b) in enumerate(zip(leaves(solo_params), leaves(dp_params))):
        result[f"solo_param_{i}"], result[f"dp_param_{i}"] = a, b
    # Two replicas on a replica=2 x data=2 mesh; replica 0 must follow the solo run.
    cfgs = [cfg, cfg.replace(seed=1, num_labels=50)]
    mesh2 = parallel.make_mesh(4, num_replicas=2)
    assert dict(mesh2.shape) == {"replica": 2, "data": 2}, mesh2.shape
    result["group_losses"] = run_group(cfgs, mnist, mesh2, STEPS)[2]
    mark("replica group done")
    np.savez(out, **result)


def multihost(port: str, num_processes: str, process_id: str, outdir: str) -> None:
    from ladder_jax import parallel

    parallel.initialize_distributed("manual", coordinator_address=f"127.0.0.1:{port}",
                                    num_processes=int(num_processes),
                                    process_id=int(process_id))
    import jax
    from jax.experimental import multihost_utils

    from ladder_jax import datasets, train

    mnist = datasets.load("mnist")
    mesh = parallel.make_mesh()
    assert mesh.devices.size == jax.device_count() == int(num_processes)
    cfg = tiny_config()
    mark("initialised")
    workdir = os.path.join(outdir, "run")
    first = train.train_and_evaluate(cfg.replace(max_steps=STEPS_A), workdir, dataset=mnist,
                                     mesh=mesh)
    assert first.results["step"] == STEPS_A
    mark("first train_and_evaluate done")
    multihost_utils.sync_global_devices("first part done")
    # The same run with a later stop resumes from the checkpoint at STEPS_A.
    resumed = train.train_and_evaluate(cfg.replace(max_steps=STEPS_B), workdir, dataset=mnist,
                                       mesh=mesh)
    mark("resumed train_and_evaluate done")
    final_params = leaves(resumed.state.params)
    if jax.process_index() == 0:
        out = {f"param_{i}": a for i, a in enumerate(final_params)}
        np.savez(os.path.join(outdir, "multihost.npz"), num_processes=jax.process_count(),
                 **out)
    multihost_utils.sync_global_devices("done")


# ------------------------------------------ conv family (tests/test_conv_training.py)
# A tiny conv ladder on 28x28 MNIST: 28 -> 12x12x8 (strided valid conv) -> 6x6x8 (max pool)
# -> 4x4x10 -> 10 (global mean pool, the softmax top). Every layer type but fc and convf.
CONV_SPEC = "convv:8:5:2:1-maxpool:2:2-convv:10:3:1:1-globalmeanpool:0"
CONV_FULL = (1000.0, 10.0, 0.1, 0.1, 0.1)  # a denoising cost on every layer: full decoder
CONV_GAMMA = (0.0, 0.0, 0.0, 0.0, 1.0)  # the Gamma-model: the top alone
CONV_BATCH = 20  # labeled and unlabeled rows per step; 4 and 2 devices split it evenly
CONV_STEPS = CHUNK  # one compiled call (compiling costs far more than stepping)


def conv_config(weights=CONV_FULL, seed: int = 0, **changes):
    """The tiny conv ladder as a TrainConfig (CONV_STEPS steps of CHUNK)."""
    from ladder_jax import config

    return config.preset("conv_small_gamma_100").replace(
        model={"conv_layers": CONV_SPEC, "denoise_weights": weights, "noise_std": 0.3},
        seed=seed, batch_size=CONV_BATCH, unlabeled_batch_size=CONV_BATCH, epochs=1,
        steps_per_call=CHUNK, checkpoint_every=CHUNK, max_steps=CONV_STEPS, **changes)


def conv_devices(out: str) -> None:
    """(run with XLA_FLAGS=--xla_force_host_platform_device_count=4) the tiny conv ladder,
    per-step losses and final params of: the full decoder on 1 device and data parallel on
    4; the Gamma-model on 1 device for seeds 0 and 1 (labels 100 and 50; one program) and as
    a 2-replica group of both on a 2 x 2 (replica x data) mesh. Keys: <variant>_<run>_losses,
    <variant>_<run>_param_<i> and <variant>_<run>_num_devices (that its params lie on), for
    full_solo0, full_dp, gamma_solo0, gamma_solo1, gamma_group0, gamma_group1."""
    import jax

    from ladder_jax import datasets, parallel
    from ladder_jax.train import job as job_lib

    assert jax.device_count() == 4, jax.devices()
    mnist = datasets.load("mnist")
    result = {}

    def store(name, losses, params):
        result[f"{name}_losses"] = np.asarray(losses)
        first = jax.tree_util.tree_leaves(params)[0]
        result[f"{name}_num_devices"] = len(first.sharding.device_set)
        for i, leaf in enumerate(leaves(params)):
            result[f"{name}_param_{i}"] = leaf

    mark("start")
    cfg = conv_config(CONV_FULL)
    store("full_solo0", *run_solo_or_mesh(cfg, mnist, None, CONV_STEPS))
    mark("full decoder, 1 device done")
    store("full_dp", *run_solo_or_mesh(cfg, mnist, parallel.make_mesh(4), CONV_STEPS))
    mark("full decoder, 4 devices done")
    cfgs = [conv_config(CONV_GAMMA), conv_config(CONV_GAMMA, seed=1, num_labels=50)]
    for i, c in enumerate(cfgs):
        store(f"gamma_solo{i}", *run_solo_or_mesh(c, mnist, None, CONV_STEPS))
        mark(f"gamma, 1 device, seed {i} done")
    mesh2 = parallel.make_mesh(4, num_replicas=2)
    assert dict(mesh2.shape) == {"replica": 2, "data": 2}, mesh2.shape
    group, state, losses = run_group(cfgs, mnist, mesh2, CONV_STEPS)
    for i, params in enumerate(job_lib.split(group, state.params)):
        store(f"gamma_group{i}", losses[i], params)
    mark("gamma, 2 replicas on a 2 x 2 mesh done")
    np.savez(out, **result)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    {"devices": devices, "multihost": multihost, "conv_devices": conv_devices}[sys.argv[1]](
        *sys.argv[2:])
