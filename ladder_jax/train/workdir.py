"""A run's directory: config.json, metrics.jsonl (+ TensorBoard events), orbax checkpoints and
results.json. Every file is written so that a kill at any moment leaves it whole: JSON files
by write-then-rename, metrics by appending whole lines (and trimming lines past the restored
checkpoint on resume), checkpoints by orbax's atomic finalisation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ladder_jax.config import TrainConfig
from ladder_jax.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
GROUP_FILE = "replicas.json"  # a group's configs, beside its checkpoints
MEMBER_FILE = "replica.json"  # in a group member's run dir: where its checkpoints are


def is_writer() -> bool:
    """Only process 0 writes files other than checkpoints (orbax coordinates those)."""
    return jax.process_index() == 0


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` via a temporary file and os.replace."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` so that a kill or a full disk leaves the old file whole."""
    write_file_atomic(path, lambda f: f.write(text))


def write_file_atomic(path: str, write: Callable[[IO], Any], binary: bool = False) -> None:
    """Calls ``write(f)`` on a temporary file beside ``path`` (text files with newline='':
    the writer's own line ends), syncs it and renames it to ``path``; an OSError names
    ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                               suffix=os.path.splitext(path)[1])
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise _naming(e, path) from e


def _naming(e: BaseException, path: str) -> BaseException:
    """``e``, or for an OSError of a file object (which names no file) one that names
    ``path``: 'No space left on device' alone does not say which disk."""
    if isinstance(e, OSError) and e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror, path)
    return e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


#: What every results.json holds (the loop writes more).
RESULTS_KEYS = ("final_test_error", "step", "epochs", "wall_time_s")


def read_results(workdir: str) -> dict[str, Any] | None:
    """A finished run's results.json, or None when there is none or it is damaged (a torn
    copy: a warning names it)."""
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.exists(path):
        return None
    try:
        results = read_json(path)
    except (OSError, ValueError) as e:
        logging.warning("%s cannot be read (%s); it is made again", path, e)
        return None
    if not isinstance(results, dict) or not all(k in results for k in RESULTS_KEYS):
        logging.warning("%s is not a run's results; it is made again", path)
        return None
    return results


def prepare(workdir: str, cfg: TrainConfig, restart: bool) -> None:
    """Creates ``workdir`` and its config.json, or checks the existing one is the same run.

    A run is identified by ``cfg.identity()``: a workdir holding another run with some
    progress is refused (ConfigError) unless ``restart``, which deletes the old run's files
    first. Bookkeeping fields (config.BOOKKEEPING_FIELDS: max_steps, eval_every, ...) may
    change: the run continues, and config.json's 'bookkeeping_history' records each change.
    A config alone (a run that failed before its first step) is simply replaced.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"workdir {workdir} is a file, not a directory; choose another "
                          "--workdir") from None
    path = os.path.join(workdir, CONFIG_FILE)
    history: list[dict[str, Any]] = []
    if os.path.exists(path) and restart:
        clear(workdir)
    elif os.path.exists(path):
        old, history = _read_run_config(path)
        if (old is None or old.identity() != cfg.identity()) and has_progress(workdir):
            differing = _differences(None if old is None else old.identity(), cfg.identity())
            raise ConfigError(
                f"workdir {workdir} holds a run with another config ({differing}); pass "
                "--restart to discard it, or choose another --workdir")
        if old is not None and old.identity() == cfg.identity():
            changed = {k: [v, cfg.to_dict()[k]] for k, v in old.to_dict().items()
                       if v != cfg.to_dict()[k]}
            if changed:
                history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "changed": changed})
    if is_writer():
        write_json_atomic(path, {**cfg.to_dict(), "bookkeeping_history": history})


def _read_run_config(path: str) -> tuple[TrainConfig | None, list[dict[str, Any]]]:
    """(the config in ``path``, its bookkeeping history); (None, []) if unreadable."""
    try:
        raw = read_json(path)
        return TrainConfig.from_dict(raw), list(raw.get("bookkeeping_history", []))
    except (OSError, ValueError, TypeError, AttributeError):
        return None, []


def read_config(workdir: str) -> TrainConfig:
    """The TrainConfig of the run in ``workdir`` (ConfigError if missing or unreadable)."""
    path = os.path.join(workdir, CONFIG_FILE)
    config, _ = _read_run_config(path)
    if config is None:
        raise ConfigError(f"{path} is missing or unreadable; is {workdir} a ladder_jax run?")
    return config


def has_progress(workdir: str) -> bool:
    """Whether a run in ``workdir`` has trained anything (a checkpoint, metrics or results)."""
    ckpt = os.path.join(workdir, CHECKPOINT_DIR)
    return (any(name.isdigit() for name in os.listdir(ckpt)) if os.path.isdir(ckpt) else False) \
        or os.path.exists(os.path.join(workdir, METRICS_FILE)) \
        or os.path.exists(os.path.join(workdir, RESULTS_FILE))


def _differences(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if old is None:
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
    for name in (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, GROUP_FILE, MEMBER_FILE):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            os.remove(path)
    for name in (CHECKPOINT_DIR, TENSORBOARD_DIR):
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl and mirrors scalars to TensorBoard
    when tensorboardX is installed. Only process 0 writes.

    The events are written in the calling thread (tensorboardX's SummaryWriter writes from a
    thread of its own, whose failure on a full disk is a traceback the run never hears of,
    and whose queue then blocks the next write), so an OSError reaches the caller."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, METRICS_FILE)
        self.enabled = is_writer()
        self._tb = None
        if self.enabled:
            try:
                from tensorboardX.event_file_writer import EventsWriter
            except ImportError:
                return
            self._events_dir = os.path.join(workdir, TENSORBOARD_DIR)
            os.makedirs(self._events_dir, exist_ok=True)
            # named by time (to the second) and host; the pid keeps a resume within the same
            # second from truncating the file before it
            self._tb = EventsWriter(os.path.join(self._events_dir, "events"),
                                    filename_suffix=f".{os.getpid()}")

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Drops lines with a step beyond ``step`` (written after the restored checkpoint)
        and a torn tail (a kill or a full disk mid-write, which the next line would
        otherwise extend), and returns the kept records."""
        records, whole = _read_metrics(self.path)
        kept = [r for r in records if r["step"] <= step]
        if self.enabled and (len(kept) != len(records) or not whole):
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _naming(e, self.path) from e
        if self._tb is not None:
            from tensorboardX.proto.event_pb2 import Event
            from tensorboardX.proto.summary_pb2 import Summary

            scalars = [Summary.Value(tag=key, simple_value=float(value))
                       for key, value in record.items()
                       if key != "step" and isinstance(value, int | float)]
            try:
                self._tb.write_event(Event(wall_time=time.time(), step=record["step"],
                                           summary=Summary(value=scalars)))
                self._tb.flush()
            except OSError as e:
                raise _naming(e, self._events_dir) from e

    def close(self) -> None:
        tb, self._tb = self._tb, None
        if tb is not None:
            tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of metrics.jsonl up to the first line that is not a record (a torn last
    line, from a kill mid-write, is ignored)."""
    return _read_metrics(os.path.join(workdir, METRICS_FILE))[0]


def _read_metrics(path: str) -> tuple[list[dict[str, Any]], bool]:
    """(the records before the first line that is not a record, whether every line of the
    file is a record ending in a newline: False also when only the last newline is
    missing, a record the next append would run into)."""
    if not os.path.exists(path):
        return [], True
    records = []
    with open(path, errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return records, False
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                return records, False
            records.append(record)
            if not line.endswith("\n"):
                return records, False
    return records, True


class Checkpoints:
    """orbax CheckpointManager over {'state': TrainState, 'bn_stats': ...} keyed by step."""

    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, item: Any) -> None:
        """Starts an atomic save (asynchronous; finalised in the background). CheckpointError
        when this or the previous save fails."""
        try:
            self.manager.save(step, args=ocp.args.StandardSave(item))
        except Exception as e:
            raise self._save_failed(e) from e

    def _save_failed(self, e: Exception) -> CheckpointError:
        where = f"a checkpoint could not be written in {self.directory}"
        # tensorstore's messages are long; the OS error they carry says it in a few words
        os_error = re.search(r"os_error_code='?(\d+)", str(e))
        if os_error:
            return CheckpointError(f"{where} ({os.strerror(int(os_error[1]))}); the older "
                                   "checkpoints are intact: free disk space (or fix the "
                                   "directory) and run the same command to resume")
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        return CheckpointError(f"{where} ({type(e).__name__}: {reason}); the older checkpoints "
                               f"are intact (LADDER_JAX_TRACEBACK=1 shows where it failed)")

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Restores the checkpoint at ``step`` (default latest) into ``target``'s structure."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_newest_intact(self, target: Any) -> tuple[Any, int] | None:
        """(restored tree, step) of the newest checkpoint that reads back; None if there are
        none. A checkpoint that cannot be read is reported in one warning line and moved
        aside (``damaged-<step>``, kept for inspection, never overwritten); when every one
        is damaged, ConfigError names the directory and suggests --restart."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                return self.restore(target, step), step
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore/JSON raise many types
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                logging.warning("checkpoint %d in %s cannot be read (%s); using an older one",
                                step, self.directory, reason)
                self._move_aside(step)
        if steps:
            raise ConfigError(f"no intact checkpoint in {self.directory}; pass --restart to "
                              "start the run over")
        return None

    def _move_aside(self, step: int) -> None:
        if not is_writer():
            return
        source = os.path.join(self.directory, str(step))
        target = os.path.join(self.directory, f"damaged-{step}")
        while os.path.exists(target):
            target += "+"
        os.replace(source, target)
        self.manager.reload()

    def wait(self) -> None:
        """Waits for the save in flight; CheckpointError when it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._save_failed(e) from e

    def close(self) -> None:
        self.manager.close()


def to_python(value: Any) -> Any:
    """numpy/jax scalars -> Python floats/ints for JSON."""
    if isinstance(value, np.generic | jax.Array):
        return value.item()
    return value
