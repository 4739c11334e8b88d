"""A run's directory: config.json, metrics.jsonl (+ TensorBoard events), orbax checkpoints and
results.json. Every file is written so that a kill at any moment leaves it whole: JSON files
by write-then-rename, metrics by appending whole lines (and trimming lines past the restored
checkpoint on resume), checkpoints by orbax's atomic finalisation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ladder_jax.config import ConfigError, TrainConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"


def is_writer() -> bool:
    """Only process 0 writes files other than checkpoints (orbax coordinates those)."""
    return jax.process_index() == 0


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` via a temporary file and os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def prepare(workdir: str, cfg: TrainConfig, restart: bool) -> None:
    """Creates ``workdir`` and its config.json, or checks the existing one matches ``cfg``.

    A workdir holding a different config and some progress is refused (ConfigError) unless
    ``restart``, which deletes the old run's files first. A config alone (a run that failed
    before its first step) is simply replaced.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(path):
        try:
            existing = read_json(path)
        except (OSError, json.JSONDecodeError):
            existing = None
        if existing != cfg.to_dict() and not restart and has_progress(workdir):
            differing = _differences(existing, cfg.to_dict())
            raise ConfigError(
                f"workdir {workdir} holds a run with another config ({differing}); pass "
                "--restart to discard it, or choose another --workdir"
            )
        if restart:
            clear(workdir)
    if is_writer():
        write_json_atomic(path, cfg.to_dict())


def has_progress(workdir: str) -> bool:
    """Whether a run in ``workdir`` has trained anything (a checkpoint, metrics or results)."""
    ckpt = os.path.join(workdir, CHECKPOINT_DIR)
    return (any(name.isdigit() for name in os.listdir(ckpt)) if os.path.isdir(ckpt) else False) \
        or os.path.exists(os.path.join(workdir, METRICS_FILE)) \
        or os.path.exists(os.path.join(workdir, RESULTS_FILE))


def _differences(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "unreadable config.json"
    flat_old, flat_new = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
    return ", ".join(f"{k}: {flat_old.get(k)} -> {flat_new.get(k)}" for k in keys[:4])


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def clear(workdir: str) -> None:
    """Removes a previous run's files (checkpoints, metrics, events, results)."""
    if not is_writer():
        return
    for name in (CONFIG_FILE, METRICS_FILE, RESULTS_FILE):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            os.remove(path)
    for name in (CHECKPOINT_DIR, TENSORBOARD_DIR):
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl and mirrors scalars to TensorBoard
    when tensorboardX is installed. Only process 0 writes."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, METRICS_FILE)
        self.enabled = is_writer()
        self._tb = None
        if self.enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Drops lines with a step beyond ``step`` (written after the restored checkpoint)
        and returns the kept records."""
        records = read_metrics(os.path.dirname(self.path))
        kept = [r for r in records if r["step"] <= step]
        if self.enabled and len(kept) != len(records):
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(tmp, self.path)
        return kept

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, record["step"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of metrics.jsonl (a torn last line, from a kill mid-write, is ignored)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


class Checkpoints:
    """orbax CheckpointManager over {'state': TrainState, 'bn_stats': ...} keyed by step."""

    def __init__(self, workdir: str, keep: int):
        self.manager = ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, item: Any) -> None:
        """Starts an atomic save (asynchronous; finalised in the background)."""
        self.manager.save(step, args=ocp.args.StandardSave(item))

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Restores the checkpoint at ``step`` (default latest) into ``target``'s structure."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def to_python(value: Any) -> Any:
    """numpy/jax scalars -> Python floats/ints for JSON."""
    if isinstance(value, np.generic | jax.Array):
        return value.item()
    return value
