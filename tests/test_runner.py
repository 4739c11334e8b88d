"""The experiment runner end to end: resume after SIGKILL, refusals, NaN stop, flag errors,
the demo path and the notebook API, all on real MNIST with a small network."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from processes import checkpoint_steps, signal_after_checkpoint

from ladder_jax import config, train
from ladder_jax.train import job as job_lib
from ladder_jax.train import loop, progress, workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small ladder: 784-32-10, 600-example batches -> 100 steps per epoch, cheap on a CPU.
TINY_FLAGS = [
    "--layer_sizes=784,32,10", "--denoise_weights=1000,10,0.1", "--batch_size=600",
    "--num_labels=100", "--epochs=3", "--steps_per_call=10", "--checkpoint_every=20",
]
TIMING_KEYS = {"steps_per_s", "wall_time_s"}


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.mnist_100labels", *args], check=False, cwd=REPO,
        capture_output=True, text=True, timeout=timeout,
    )


def numeric_records(work: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in workdir.read_metrics(work)]


def assert_same_params(work_a: str, work_b: str) -> None:
    _, state_a, stats_a = train.load_run(work_a)
    _, state_b, stats_b = train.load_run(work_b)
    assert int(state_a.step) == int(state_b.step)
    for a, b in zip(jax_leaves((state_a, stats_a)), jax_leaves((state_b, stats_b))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist) -> str:
    """The tiny run trained start to finish without interruption."""
    work = str(tmp_path_factory.mktemp("uninterrupted"))
    proc = run_cli(f"--workdir={work}", *TINY_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_uninterrupted_run_writes_every_artifact(uninterrupted):
    names = set(os.listdir(uninterrupted))
    assert {"config.json", "metrics.jsonl", "results.json", "checkpoints"} <= names
    # A checkpoint every 20 steps, the newest 3 kept (keep_checkpoints' default).
    assert checkpoint_steps(uninterrupted) == [260, 280, 300]
    records = workdir.read_metrics(uninterrupted)
    assert [r["step"] for r in records] == [100, 200, 300]
    assert all("test_error" in r and 0.0 <= r["test_error"] <= 1.0 for r in records)
    assert records[-1]["lr"] < records[0]["lr"]  # the decay happened in the last third
    results = workdir.read_json(os.path.join(uninterrupted, "results.json"))
    assert results["step"] == 300
    assert results["final_test_error"] == records[-1]["test_error"]
    # A 784-32-10 ladder on 100 labels learns something real within 3 short epochs.
    assert results["final_test_error"] < 0.5
    assert results["device_kind"] and results["versions"]["jax"]


def read_events(path: str) -> list:
    """The Event records of a TensorBoard file (TFRecord framing: length, its CRC, data,
    the data's CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    events, data = [], pathlib.Path(path).read_bytes()
    while data:
        length = int.from_bytes(data[:8], "little")
        events.append(Event.FromString(data[12:12 + length]))
        data = data[12 + length + 4:]
    return events


def test_tensorboard_events_hold_the_metrics_scalars(uninterrupted):
    pytest.importorskip("tensorboardX")
    events_dir = os.path.join(uninterrupted, workdir.TENSORBOARD_DIR)
    (name,) = os.listdir(events_dir)
    events = [e for e in read_events(os.path.join(events_dir, name)) if e.HasField("summary")]
    records = workdir.read_metrics(uninterrupted)
    assert [e.step for e in events] == [r["step"] for r in records]
    for event, record in zip(events, records, strict=True):
        scalars = {v.tag: v.simple_value for v in event.summary.value}
        assert scalars.keys() == {k for k, v in record.items()
                                  if k != "step" and isinstance(v, int | float)}
        assert scalars["test_error"] == pytest.approx(record["test_error"], rel=1e-6)
        assert scalars["lr"] == pytest.approx(record["lr"], rel=1e-6)


def test_sigkill_and_resume_give_the_same_params_and_metrics(uninterrupted, tmp_path):
    work = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "experiments.mnist_100labels", f"--workdir={work}",
           *TINY_FLAGS]
    # Killed mid-epoch, after several checkpoints and an evaluation exist.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    signal_after_checkpoint(proc, work, 140, [signal.SIGKILL])
    proc.wait()
    assert not os.path.exists(os.path.join(work, "results.json"))
    done = run_cli(f"--workdir={work}", *TINY_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 140 <= resumed_from(done.stderr) < 300  # not trained again from step 0
    assert numeric_records(work) == numeric_records(uninterrupted)
    assert_same_params(work, uninterrupted)


def resumed_from(stderr: str) -> int:
    """The step a run's log says it resumed from."""
    found = re.search(r"from the checkpoint at step (\d+)", stderr)
    assert found, stderr[-3000:]
    return int(found[1])


def test_finished_workdir_is_not_retrained_and_flagfiles_are_read(uninterrupted, tmp_path):
    """The same flags from a --flagfile (a different config would be refused) find the
    finished run: it reports its result and trains nothing."""
    before = os.path.getmtime(os.path.join(uninterrupted, "results.json"))
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text("\n".join([f"--workdir={uninterrupted}", *TINY_FLAGS]))
    again = run_cli(f"--flagfile={flagfile}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert os.path.getmtime(os.path.join(uninterrupted, "results.json")) == before
    assert "test error" in again.stdout


def test_workdir_with_another_config_is_refused_unless_restart(uninterrupted, tmp_path):
    work = str(tmp_path / "w")
    shutil.copytree(uninterrupted, work)
    refused = run_cli(f"--workdir={work}", *TINY_FLAGS, "--max_steps=10", "--lr=0.001")
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    error_lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "--restart" in error_lines[0] and "lr" in error_lines[0]
    assert checkpoint_steps(work) == checkpoint_steps(uninterrupted)  # the old run is untouched
    restarted = run_cli(f"--workdir={work}", *TINY_FLAGS, "--max_steps=10", "--lr=0.001",
                        "--restart")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert workdir.read_json(os.path.join(work, "config.json"))["lr"] == 0.001
    assert checkpoint_steps(work) == [10]


def test_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    work = str(tmp_path / "nan")
    proc = run_cli(f"--workdir={work}", *TINY_FLAGS, "--lr=1e30", "--steps_per_call=1",
                   "--checkpoint_every=1")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "at step" in line and "checkpoint" in line
    failed_step = int(line.split("at step ")[1].split(";")[0])
    steps = checkpoint_steps(work)
    assert steps and max(steps) < failed_step
    assert not os.path.exists(os.path.join(work, "results.json"))
    _, state, _ = train.load_run(work)  # the kept checkpoint restores
    assert int(state.step) == max(steps)


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--num_labels=105", "divisible"),
        ("--num_labels=0", "num_labels"),
        ("--denoise_weights=1,2", "denoise_weights"),
        ("--noise_std=-1", "noise_std"),
        ("--combinator=foo", "combinator"),
        ("--matmul_dtype=float16", "matmul_dtype"),
        ("--epochs=0", "epochs"),
        ("--no_such_flag=1", "no_such_flag"),
        ("--data_source=idx", "data_dir"),
        ("--data_source=idx --data_dir=/nonexistent", "nonexistent"),
        ("--seed=-1", "seed"),
        ("--batch_size=70000", "batch_size"),
        ("--num_validation=60000", "num_validation"),
        ("--lr=nan", "lr"),
        ("--noise_std=inf", "noise_std"),
        ("--conv_layers=convv:32:99:1:1-fc:10", "convv"),
        ("--dataset=fashion_mnist --data_source=pypi", "data_source"),
    ],
)
def test_bad_flags_fail_in_one_line(flag, expected, tmp_path):
    proc = run_cli(f"--workdir={tmp_path / 'w'}", *flag.split(), "--max_steps=1", timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    problem = [line for line in proc.stderr.splitlines()
               if line.startswith(("error:", "FATAL"))]
    assert len(problem) == 1 and expected in problem[0], proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "w" / "results.json")


def test_helpfull_documents_every_flag():
    proc = run_cli("--helpfull", timeout=120)
    for name in ("workdir", "preset", "num_labels", "seed", "epochs", "max_steps", "batch_size",
                 "lr", "noise_std", "denoise_weights", "combinator", "matmul_dtype",
                 "data_source", "data_dir", "eval_every", "checkpoint_every", "steps_per_call",
                 "restart", "flagfile"):
        assert f"--{name}" in proc.stdout or f"--[no]{name}" in proc.stdout, name


def test_notebook_api_trains_and_predicts(mnist, tmp_path):
    cfg = config.preset("full_100").replace(
        model={"layer_sizes": (784, 32, 10), "denoise_weights": (1000.0, 10.0, 0.1),
               "noise_std": 0.3},
        batch_size=600, unlabeled_batch_size=600, epochs=1, steps_per_call=25,
    )
    work = str(tmp_path / "nb")
    result = train.train_and_evaluate(cfg, work, dataset=mnist)
    assert int(result.state.step) == 100
    assert len(result.metrics) == 1 and result.metrics[0]["step"] == 100
    predicted = train.predict_from_workdir(work, mnist.test_images)
    error = float(np.mean(predicted != mnist.test_labels))
    assert error == pytest.approx(result.results["final_test_error"], abs=1e-6)
    assert workdir.read_json(os.path.join(work, "results.json"))["step"] == 100


@pytest.mark.slow
def test_readme_demo_command(tmp_path):
    """The README's demo: the paper's network for 2 epochs (a few minutes here)."""
    proc = run_cli(f"--workdir={tmp_path / 'demo'}", "--epochs=2", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = workdir.read_json(str(tmp_path / "demo" / "results.json"))
    assert results["final_test_error"] < 0.10


def test_steps_split_into_calls_any_way_give_the_same_params(mnist):
    """Noise is drawn per block of steps (train.noise_block_size); 12 steps as one call
    (one block of 12) or as 5 + 7 (blocks of 5 and 7) give the same state."""
    cfg = config.preset("full_100").replace(
        model={"layer_sizes": (784, 32, 10), "denoise_weights": (1000.0, 10.0, 0.1),
               "noise_std": 0.3},
        batch_size=100, unlabeled_batch_size=100, epochs=1)
    job = train.build_job([cfg], mnist)
    assert [train.noise_block_size(k) for k in (12, 7, 100, 600, 101)] == [12, 7, 100, 100, 1]

    def params_after(splits):
        state = job_lib.init_job_state(job)
        for k in splits:
            state, _ = job_lib.run_steps(job, state, k)
        assert int(state.step) == 12
        return ravel_pytree(state.params)[0]

    whole = params_after([12])
    np.testing.assert_allclose(params_after([5, 7]), whole, rtol=1e-5, atol=1e-6)
    assert np.abs(whole - ravel_pytree(job_lib.init_job_state(job).params)[0]).max() > 1e-3


def test_workdir_that_is_a_file_fails_in_one_line(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    proc = run_cli(f"--workdir={path}", *TINY_FLAGS, "--max_steps=1", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert str(path) in line and "directory" in line


def _damage(checkpoint_dir: str) -> None:
    """Truncates every file of a checkpoint, as a disk fault would."""
    for root, _, files in os.walk(checkpoint_dir):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(0, os.path.getsize(f.name) // 3))


def test_damaged_newest_checkpoint_then_a_larger_max_steps_give_the_longer_run(uninterrupted,
                                                                              tmp_path):
    """140 steps; the newest checkpoint (140) damaged; the same command with --max_steps=300
    (and another checkpoint interval) resumes from 120 and ends with the numbers of the
    uninterrupted 300-step run; config.json keeps the bookkeeping history."""
    work = str(tmp_path / "damaged")
    first = run_cli(f"--workdir={work}", *TINY_FLAGS, "--max_steps=140")
    assert first.returncode == 0, first.stderr[-3000:]
    assert workdir.read_json(os.path.join(work, "results.json"))["step"] == 140
    assert checkpoint_steps(work)[-2:] == [120, 140]
    _damage(os.path.join(work, workdir.CHECKPOINT_DIR, "140"))
    done = run_cli(f"--workdir={work}", *TINY_FLAGS, "--max_steps=300", "--checkpoint_every=50")
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if "cannot be read" in line]
    assert len(warnings) == 1 and "140" in warnings[0]
    assert resumed_from(done.stderr) == 120
    assert numeric_records(work) == numeric_records(uninterrupted)
    assert_same_params(work, uninterrupted)
    assert os.path.isdir(os.path.join(work, workdir.CHECKPOINT_DIR, "damaged-140"))
    history = workdir.read_json(os.path.join(work, "config.json"))["bookkeeping_history"]
    assert history[-1]["changed"] == {"max_steps": [140, 300], "checkpoint_every": [20, 50]}


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs: too small for the first checkpoint (needs root; skipped elsewhere)."""
    path = tmp_path / "small_disk"
    path.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(path)],
                           capture_output=True, text=True, check=False)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_full_disk_is_one_error_and_the_same_command_resumes(uninterrupted, small_disk):
    del uninterrupted  # its compiled programs are in the cache
    work = str(small_disk / "w")
    flags = [f"--workdir={work}", *TINY_FLAGS, "--max_steps=40"]
    full = run_cli(*flags)
    assert full.returncode == 1
    last = full.stderr.strip().splitlines()[-1]
    # The save fails; which write sees the full disk first (the save's wait, or a metrics
    # line beside the save in flight) depends on timing, so either line is right.
    assert last.startswith("error: ") and "No space left on device" in last and \
        "run the same command to resume" in last, last
    assert not os.path.exists(os.path.join(work, "results.json"))
    subprocess.run(["mount", "-o", "remount,size=50m", str(small_disk)], check=True)
    again = run_cli(*flags)
    assert again.returncode == 0, again.stderr[-3000:]
    assert workdir.read_json(os.path.join(work, "results.json"))["step"] == 40
    assert checkpoint_steps(work) == [20, 40]


def fill(disk) -> None:
    """Writes a file until the disk has no byte left."""
    with open(disk / "filler", "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(bytes(size))


def test_a_full_disk_before_any_checkpoint_is_one_error_naming_the_file(uninterrupted,
                                                                        small_disk):
    """Disk full when the same run goes on with a larger --max_steps: its config.json
    (bookkeeping history) cannot be written; one line names it, config.json is as it was,
    and the same command resumes once there is space."""
    del uninterrupted  # its compiled programs are in the cache
    subprocess.run(["mount", "-o", "remount,size=50m", str(small_disk)], check=True)
    work = str(small_disk / "w")
    assert run_cli(f"--workdir={work}", *TINY_FLAGS, "--max_steps=20").returncode == 0
    config = pathlib.Path(work, "config.json")
    config_before = config.read_text()
    fill(small_disk)
    flags = [f"--workdir={work}", *TINY_FLAGS, "--max_steps=40"]
    full = run_cli(*flags)
    assert full.returncode == 1
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    assert full.stderr.strip().splitlines()[-1] == (
        f"error: No space left on device ({os.path.join(work, 'config.json')}); the "
        "checkpoints written so far are intact: free disk space and run the same command to "
        "resume")
    assert config.read_text() == config_before
    assert [n for n in os.listdir(work) if n.startswith(".tmp-")] == []
    os.remove(small_disk / "filler")
    again = run_cli(*flags)
    assert again.returncode == 0, again.stderr[-3000:]
    assert workdir.read_json(os.path.join(work, "results.json"))["step"] == 40
    assert checkpoint_steps(work) == [20, 40]


@pytest.mark.parametrize("tail", [
    b'{"step": 30, "wall_',          # a kill or a full disk mid-line
    b'{"step": 30}',                 # a whole record but not its newline
    b'[1, 2]\n{"step": 40}\n',       # not a record, and what follows it
    b'\xff\xfe{"step": 30}\n',       # bytes that are not UTF-8
])
def test_a_torn_metrics_tail_is_dropped_when_the_run_resumes(tmp_path, tail):
    path = tmp_path / workdir.METRICS_FILE
    path.write_bytes(b'{"step": 10, "loss": 1.5}\n{"step": 20, "loss": 1.25}\n' + tail)
    whole = [{"step": 10, "loss": 1.5}, {"step": 20, "loss": 1.25}]
    if tail == b'{"step": 30}':
        whole.append({"step": 30})
    assert workdir.read_metrics(str(tmp_path)) == whole
    writer = workdir.MetricsWriter(str(tmp_path))
    assert writer.truncate_after(30) == whole  # resumed from the step-30 checkpoint
    writer.write({"step": 40, "loss": 1.0})
    writer.close()
    assert [r["step"] for r in workdir.read_metrics(str(tmp_path))] == \
        [r["step"] for r in whole] + [40]


def test_a_damaged_results_file_of_a_finished_run_is_written_again(uninterrupted, tmp_path):
    work = str(tmp_path / "w")
    shutil.copytree(uninterrupted, work)
    path = os.path.join(work, workdir.RESULTS_FILE)
    stored = workdir.read_json(path)
    with open(path, "r+b") as f:  # an interrupted copy
        f.truncate(os.path.getsize(path) // 2)
    again = run_cli(f"--workdir={work}", *TINY_FLAGS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "results.json cannot be read" in again.stderr
    rewritten = workdir.read_json(path)
    assert rewritten["final_test_error"] == stored["final_test_error"]
    assert rewritten["step"] == stored["step"] == 300
    assert checkpoint_steps(work) == checkpoint_steps(uninterrupted)  # nothing trained


def test_every_checkpoint_damaged_is_one_error_suggesting_restart(uninterrupted, tmp_path):
    work = str(tmp_path / "all_damaged")
    shutil.copytree(uninterrupted, work)
    os.remove(os.path.join(work, "results.json"))  # as if killed before the end
    for step in checkpoint_steps(work):
        _damage(os.path.join(work, workdir.CHECKPOINT_DIR, str(step)))
    proc = run_cli(f"--workdir={work}", *TINY_FLAGS)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "no intact checkpoint" in line and "--restart" in line


def test_progress_line_speed_and_eta_read_well_for_fast_and_slow_runs():
    assert progress.speed_string(12.34) == "12.3 steps/s"
    assert progress.speed_string(0.25) == "4.0 s/step"  # a conv step on a CPU: not "0.2 steps/s"
    assert progress.eta_string(3725) == "1h02m" and progress.eta_string(185) == "3m05s"
    assert progress.eta_string(float("inf")) == "?"


def test_progress_speed_forgets_a_slow_call_but_results_keep_the_whole_average():
    """The first call compiles and a SIGSTOP can pause one for minutes: the progress line's
    speed (and ETA) counts the calls since the last line; results.json keeps the mean."""
    clock = loop._Clock(0.0, 0)
    clock.add(100, 50.0)  # compiled, or paused, in this call
    assert clock.recent_speed() == pytest.approx(2.0)
    clock.add(100, 1.0)
    clock.add(100, 1.0)
    assert clock.recent_speed() == pytest.approx(100.0)
    assert clock.speed == pytest.approx(300 / 52)
    assert clock.recent_speed() == pytest.approx(300 / 52)  # no call since: the mean


INTERRUPTED = re.compile(r"^interrupted at step (\d+); checkpoint saved; the same command "
                         r"resumes$")


def interrupt_after(cmd: list[str], work: str, signals: list[int], *, after_step: int = 100
                    ) -> subprocess.CompletedProcess:
    """Starts ``cmd``, sends ``signals`` once a checkpoint at ``after_step`` or later exists
    in ``work``, and returns the finished process (stdout, stderr captured)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    signal_after_checkpoint(proc, work, after_step, signals)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_the_step_reached_and_the_same_command_resumes_exactly(
        uninterrupted, tmp_path, signum, code):
    work = str(tmp_path / "interrupted")
    cmd = [sys.executable, "-m", "experiments.mnist_100labels", f"--workdir={work}",
           *TINY_FLAGS]
    stopped = interrupt_after(cmd, work, [signum])
    assert stopped.returncode == code, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    match = INTERRUPTED.match(stopped.stderr.strip().splitlines()[-1])
    assert match, stopped.stderr[-3000:]
    step = int(match[1])
    assert 100 <= step < 300 and step % 10 == 0  # the end of a compiled call (10 steps)
    assert max(checkpoint_steps(work)) == step
    assert not os.path.exists(os.path.join(work, "results.json"))
    done = run_cli(f"--workdir={work}", *TINY_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert resumed_from(done.stderr) == step
    assert numeric_records(work) == numeric_records(uninterrupted)
    assert_same_params(work, uninterrupted)


def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(mnist, tmp_path):
    """Both signals arrive inside the loop (from its progress callback at step 130, between
    the regular checkpoints at 120 and 140): the run stops there without saving."""
    cfg = config.preset("full_100").replace(
        model={"layer_sizes": (784, 32, 10), "denoise_weights": (1000, 10, 0.1),
               "noise_std": 0.3},
        batch_size=600, unlabeled_batch_size=600, epochs=3, steps_per_call=10,
        checkpoint_every=20)
    whole = train.train_and_evaluate(cfg, str(tmp_path / "whole"), dataset=mnist)

    def signal_twice(step: int, end_step: int) -> None:
        if step == 130:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    work = str(tmp_path / "stopped")
    # What was installed before (Python's handler, or SIG_IGN in a shell's background job).
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(train.Interrupted) as stopped:
        train.train_and_evaluate(cfg, work, dataset=mnist, progress=signal_twice)
    assert stopped.value.immediate and stopped.value.exit_code == 130
    assert str(stopped.value) == ("stopped at once by a second signal; the last checkpoint "
                                  "is kept; the same command resumes")
    assert checkpoint_steps(work) == [80, 100, 120]
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored
    resumed = train.train_and_evaluate(cfg, work, dataset=mnist)
    assert resumed.results["final_test_error"] == whole.results["final_test_error"]
    for a, b in zip(jax_leaves(resumed.state.params), jax_leaves(whole.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_replica_group_stopped_by_sigterm_resumes_to_the_uninterrupted_numbers(tmp_path):
    def group_cmd(work: str) -> list[str]:
        return [sys.executable, "-m", "experiments.train", f"--workdir={work}",
                "--num_replicas=2", *TINY_FLAGS]

    whole, work = str(tmp_path / "whole"), str(tmp_path / "stopped")
    proc = subprocess.run(group_cmd(whole), cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stopped = interrupt_after(group_cmd(work), work, [signal.SIGTERM])
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    step = int(INTERRUPTED.match(stopped.stderr.strip().splitlines()[-1])[1])
    assert max(checkpoint_steps(work)) == step
    proc = subprocess.run(group_cmd(work), cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert resumed_from(proc.stderr) == step
    replicas = sorted(d for d in os.listdir(whole) if d.startswith("replica_"))
    assert len(replicas) == 2
    for name in replicas:
        assert numeric_records(os.path.join(work, name)) == \
            numeric_records(os.path.join(whole, name))
        assert_same_params(os.path.join(work, name), os.path.join(whole, name))
