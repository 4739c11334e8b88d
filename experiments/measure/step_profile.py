"""Where the training step's time goes: one profiled call of the runner's compiled step.

    python -m experiments.measure.benchmark --profile          # timing, then this profile

Compiles the runner's K-step call (train.Job.chunk), runs it twice, then runs it
once more under jax.profiler and reads the trace back (jax.profiler.ProfileData). XLA:CPU
records one event per executed operation (a "thunk"); the dots it runs asynchronously
(Eigen) record a start event and an "end: <name>" event, so their span runs from one to the
other. Operations are told apart with the compiled HLO: a matmul is a dot, or a fusion
whose computation holds one (YNNPACK's).

Figures (per training step: the traced call's span divided by K; profiling adds a few %):
  step_ms          first to last event of the traced call, / K
  matmul_ms        time during which at least one matmul runs
  other_only_ms    time during which only non-matmul operations run
  idle_ms          time during which nothing runs (step_ms = the three above)
Then the operations with the most summed time (ms per step, runs per step, matmul or not).
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile

import jax

from ladder_jax import train
from ladder_jax.train import job as job_lib


def matmul_ops(hlo_text: str) -> tuple[set[str], set[str]]:
    """(matmuls, dots): names of the instructions of a compiled HLO module that are matmuls
    (dots and convolutions, and fusions whose called computation contains one), and of
    the plain dots (those XLA:CPU may run asynchronously)."""
    computations_with_dot, current = set(), None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(", line)
        if header:
            current = header.group(1)
        elif current and re.search(r"\s(dot|convolution)\(", line):
            computations_with_dot.add(current)
    names, dots = set(), set()
    pattern = r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\s(dot|convolution|fusion)\((.*)$"
    for match in re.finditer(pattern, hlo_text, re.MULTILINE):
        name, opcode, rest = match.groups()
        called = re.search(r"calls=%([\w.\-]+)", rest)
        if opcode != "fusion" or (called and called.group(1) in computations_with_dot):
            names.add(name)
        if opcode == "dot":
            dots.add(name)
    return names, dots


def _union_ns(spans: list[tuple[int, int]]) -> int:
    """Length of the union of [start, end) intervals."""
    total, end = 0, None
    for start, stop in sorted(spans):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def op_spans(trace_file: str, asynchronous: set[str]) -> list[tuple[int, int, str]]:
    """(start ns, end ns, op name) of every operation XLA:CPU ran in the trace, loops
    excluded (they span their bodies); the ``asynchronous`` ones end at their next
    "end: <name>" event, which comes long after their own event ends."""
    trace = jax.profiler.ProfileData.from_file(trace_file)
    starts, ends = [], collections.defaultdict(list)
    for plane in trace.planes:
        for line in plane.lines:
            for event in line.events:
                name, start = event.name, event.start_ns
                if name.startswith("end: "):
                    ends[name[5:]].append(start + event.duration_ns)
                elif (re.fullmatch(r"[\w\-]+(\.\d+)?", name)
                      and not name.startswith(("$", "while", "conditional", "call"))):
                    starts.append((start, start + event.duration_ns, name))
    spans = []
    for start, stop, name in sorted(starts):
        later = [t for t in ends.get(name, ()) if t > start] if name in asynchronous else []
        if later:
            end = min(later)
            ends[name].remove(end)
            stop = max(stop, end)
        spans.append((start, stop, name))
    return spans


def profile(job: job_lib.Job, state: train.TrainState, steps_per_call: int) -> dict:
    """Figures of the module docstring plus 'ops': {name: (ms per step, runs per step,
    is_matmul)} for one traced call of ``steps_per_call`` steps from ``state``.

    The call is compiled here once more (lower().compile()): the profile needs the compiled
    HLO's operation names, which the runner's cached executable does not expose."""
    labeled, unlabeled = job_lib.batch_rows(job, job_lib.current_step(job, state),
                                            steps_per_call)
    args = (job.data, labeled, unlabeled, job.noise_keys)
    compiled = job.chunk.lower(state, *args).compile()
    matmuls, dots = matmul_ops(compiled.as_text())
    for _ in range(2):
        state, losses = compiled(state, *args)
    jax.block_until_ready(losses)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            state, losses = compiled(state, *args)
            jax.block_until_ready(losses)
        trace_file = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
        spans = op_spans(trace_file, dots)
    k = steps_per_call
    span_ns = max(stop for _, stop, _ in spans) - min(start for start, _, _ in spans)
    busy = _union_ns([(a, b) for a, b, _ in spans])
    matmul = _union_ns([(a, b) for a, b, n in spans if n in matmuls])
    per_op: dict[str, list] = collections.defaultdict(lambda: [0.0, 0, False])
    for start, stop, name in spans:
        per_op[name][0] += (stop - start) / 1e6 / k
        per_op[name][1] += 1
        per_op[name][2] = name in matmuls
    return {
        "step_ms": span_ns / 1e6 / k,
        "matmul_ms": matmul / 1e6 / k,
        "other_only_ms": (busy - matmul) / 1e6 / k,
        "idle_ms": (span_ns - busy) / 1e6 / k,
        "ops": {n: (ms, runs / k, mm) for n, (ms, runs, mm) in per_op.items()},
    }


def print_profile(figures: dict, top: int) -> None:
    """The figures, then the ``top`` operations by time."""
    for key in ("step_ms", "matmul_ms", "other_only_ms", "idle_ms"):
        print(f"{key:<14} {figures[key]:8.2f}")
    print(f"\n{'ms/step':>8} {'runs/step':>9}  matmul  op")
    ranked = sorted(figures["ops"].items(), key=lambda kv: -kv[1][0])[:top]
    for name, (ms, runs, is_matmul) in ranked:
        print(f"{ms:8.3f} {runs:9.2f}  {'yes' if is_matmul else '':6}  {name}")
