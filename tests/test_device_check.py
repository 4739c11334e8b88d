"""scripts/device_check.sh end to end on this CPU, shrunk (DEVICE_CHECK_TINY=1): every step
runs, writes its figures under $OUT and reports its exit code in summary.txt;
DEVICE_CHECK_SKIP leaves out the stages it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_shrunk(out, **env_changes) -> str:
    """Runs the script shrunk into ``out``; returns its summary.txt."""
    env = dict(os.environ, OUT=str(out), DEVICE_CHECK_TINY="1", PYTHON=sys.executable,
               DEVICE_CHECK_BUDGET_S="900", **env_changes)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    proc = subprocess.run(["bash", "scripts/device_check.sh"], cwd=REPO, env=env, check=False,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (out / "summary.txt").read_text()


@pytest.mark.slow  # ~3 minutes here: `bash scripts/test.sh -m slow tests/test_device_check.py`
def test_device_check_runs_end_to_end_when_shrunk(tmp_path, mnist):
    del mnist  # the data is in the cache before the script starts
    out = tmp_path / "out"
    summary = run_shrunk(out)
    for step in ("devices", "tests", "benchmark", "memory", "replicas_1", "replicas_2",
                 "table_mnist",
                 "table_mnist_report", "table_fashion", "table_fashion_report"):
        assert f"== {step} exit 0" in summary, summary
    assert "cpu" in (out / "devices.log").read_text().lower()
    assert json.loads((out / "benchmark.json").read_text())["ms_per_step"] > 0
    memory = json.loads((out / "memory.json").read_text())["rows"][0]
    assert memory["preset"] == "full_100" and memory["per_model_bytes"] > 0
    assert "== replica counts 1 2 " in summary  # from docs/scale_out_memory.json, capped at 2
    for k in (1, 2):
        figures = json.loads((out / f"replicas_{k}.json").read_text())
        assert figures["num_replicas"] == k and figures["group_model_steps_per_s"] > 0
    for table, rows in (("table_mnist", 2), ("table_fashion", 2)):
        lines = (out / table / "results.csv").read_text().splitlines()
        assert len(lines) == 1 + rows and all(",finished," in line for line in lines[1:])
        assert "| full_100 |" in (out / table / "summary.md").read_text()
        assert (out / table / "test_error_curves.png").stat().st_size > 0


@pytest.mark.slow  # ~1 minute here
def test_device_check_skips_the_stages_named(tmp_path, mnist):
    del mnist
    out = tmp_path / "out"
    summary = run_shrunk(out, DEVICE_CHECK_SKIP="benchmark,memory,replicas,table_fashion")
    for step in ("benchmark", "memory", "replicas", "table_fashion"):
        assert f"== {step} skipped (DEVICE_CHECK_SKIP)" in summary, summary
    assert not (out / "benchmark.json").exists() and not (out / "replicas_1.json").exists()
    assert not (out / "table_fashion").exists()
    for step in ("devices", "tests", "table_mnist", "table_mnist_report"):
        assert f"== {step} exit 0" in summary, summary
    assert "== done" in summary
