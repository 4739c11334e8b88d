"""Two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives) train one model
together, data parallel over one device each, with a checkpointed interruption and a
collective resume; the result must match a single-process run of the same steps.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import jax
import numpy as np
import parallel_worker as worker  # tests/ is on sys.path under pytest

from ladder_jax import train
from ladder_jax.train import job as job_lib
from ladder_jax.train import workdir as wd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path, mnist):
    port = _free_port()
    procs = []
    for i in range(2):
        with open(tmp_path / f"process{i}.log", "w") as log:  # the child keeps its own fd
            procs.append(subprocess.Popen(
                [sys.executable, worker.WORKER, "multihost", str(port), "2", str(i),
                 str(tmp_path)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                env=worker.worker_env()))
    try:
        # Meanwhile, the single-process reference: the same steps, one device.
        cfg = worker.tiny_config()
        job = train.build_job([cfg], mnist)
        state = job_lib.init_job_state(job)
        state, losses_a = job_lib.run_steps(job, state, worker.STEPS_A)
        state, losses_b = job_lib.run_steps(job, state, worker.STEPS_B - worker.STEPS_A)
        _, errors = job_lib.evaluate_model(job, 0, state.params)
        for p in procs:
            p.wait(timeout=worker.TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    output = "\n".join((tmp_path / f"process{i}.log").read_text()[-3000:] for i in range(2))
    assert [p.returncode for p in procs] == [0, 0], output

    run = tmp_path / "run"
    records = wd.read_metrics(str(run))
    assert [r["step"] for r in records] == [worker.STEPS_A, worker.STEPS_B]
    # Each line averages the steps since the previous one (the resumed part: 21..30).
    np.testing.assert_allclose(records[0]["loss"], losses_a.mean(), rtol=1e-5)
    np.testing.assert_allclose(records[1]["loss"], losses_b.mean(), rtol=1e-5)
    results = json.loads((run / "results.json").read_text())
    assert results["num_processes"] == 2 and results["step"] == worker.STEPS_B
    assert "data=2" in results["mesh"]
    # float reordering may flip the argmax of a borderline test image or two
    assert abs(results["final_test_error"] - errors["test_error"]) <= 3e-4
    final = np.load(tmp_path / "multihost.npz")
    ref = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]
    for i, leaf in enumerate(ref):
        np.testing.assert_allclose(final[f"param_{i}"], leaf, rtol=1e-4, atol=1e-5)
    # Only process 0 wrote files other than checkpoints: one metrics line per record.
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
