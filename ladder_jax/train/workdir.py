"""A run's directory: config.json, metrics.jsonl (+ TensorBoard events), orbax checkpoints and
results.json. Every file is written so that a kill at any moment leaves it whole: JSON files
by write-then-rename (ladder_jax.files), metrics by appending whole lines (and trimming lines
past the restored checkpoint on resume), checkpoints by orbax's atomic finalisation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from ladder_jax.config import TrainConfig
from ladder_jax.errors import CheckpointError, ConfigError
from ladder_jax.files import with_filename, write_json_atomic, write_text_atomic

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
    flat_old, flat_new = flatten(old), flatten(new)
    keys = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
    return ", ".join(f"{k}: {flat_old.get(k)} -> {flat_new.get(k)}" for k in keys[:4])


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict with its nested dicts' keys dotted: {'model': {'noise_std': x}} ->
    {'model.noise_std': x}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
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
            raise with_filename(e, self.path) from e
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
                raise with_filename(e, self._events_dir) from e

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


# A group: K > 1 models trained as one job keep one (stacked) checkpoint in the group's
# state directory, beside GROUP_FILE (their configs: the resume check); each model's run
# directory holds its own files and MEMBER_FILE (where its checkpoints are).


def prepare_job_dirs(cfgs: list[TrainConfig], state_dir: str, run_dirs: list[str],
                     restart: bool) -> None:
    """Each model's config.json (``prepare``) and, when the checkpoints live apart from the
    run directories (a group), the group's GROUP_FILE and each member's MEMBER_FILE; a run
    directory that once was a group member and now trains on its own loses MEMBER_FILE.
    ConfigError for a state directory holding another group (unless ``restart``)."""
    apart = any(os.path.abspath(d) != os.path.abspath(state_dir) for d in run_dirs)
    if apart:
        _check_group_dir(cfgs, state_dir, restart)
    for cfg, run_dir in zip(cfgs, run_dirs):
        prepare(run_dir, cfg, restart)
        member = os.path.join(run_dir, MEMBER_FILE)
        if not apart and is_writer() and os.path.exists(member):
            os.remove(member)
    if apart and is_writer():
        write_json_atomic(os.path.join(state_dir, GROUP_FILE), [c.to_dict() for c in cfgs])
        for index, run_dir in enumerate(run_dirs):
            write_json_atomic(os.path.join(run_dir, MEMBER_FILE),
                              {"group": os.path.abspath(state_dir), "index": index})


def _check_group_dir(cfgs: list[TrainConfig], state_dir: str, restart: bool) -> None:
    """ConfigError if ``state_dir`` holds another group (unless ``restart``: then clear it)."""
    try:
        os.makedirs(state_dir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{state_dir} is a file, not a directory") from None
    path = os.path.join(state_dir, GROUP_FILE)
    if os.path.exists(path) and not restart:
        try:
            existing = [TrainConfig.from_dict(d).identity() for d in read_json(path)]
        except (OSError, ValueError, TypeError, AttributeError):
            existing = None
        if existing != [c.identity() for c in cfgs]:
            raise ConfigError(f"{state_dir} holds another group of models; pass --restart "
                              "to discard it, or choose another directory")
    if restart:
        clear(state_dir)


def checkpoint_location(run_dir: str) -> tuple[str, int, list[TrainConfig]]:
    """Where a run's checkpoints are: (state directory, the model's index in it, the configs
    of the job that wrote them). A group member points to its group (MEMBER_FILE)."""
    member_file = os.path.join(run_dir, MEMBER_FILE)
    if not os.path.exists(member_file):
        return run_dir, 0, [read_config(run_dir)]
    member = read_json(member_file)
    state_dir, index = member["group"], int(member["index"])
    cfgs = [TrainConfig.from_dict(d) for d in read_json(os.path.join(state_dir, GROUP_FILE))]
    if not 0 <= index < len(cfgs):
        raise ConfigError(f"{member_file} names model {index} of a {len(cfgs)}-model group")
    return state_dir, index, cfgs
