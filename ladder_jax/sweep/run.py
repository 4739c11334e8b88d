"""Running a sweep: every cell in its own workdir under one sweep directory, the seeds of one
row (cells of equal ``Cell.row_key``) as one job of K models, finished cells skipped, failed
cells recorded while the others go on, and progress over the whole grid (cells done / total,
the running cell, an ETA).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging

from ladder_jax import datasets, train
from ladder_jax.config import ConfigError
from ladder_jax.sweep.grid import Cell
from ladder_jax.train import interrupt
from ladder_jax.train import workdir as wd

FINISHED, FAILED, PENDING = "finished", "failed", "pending"


@dataclasses.dataclass(frozen=True)
class CellResult:
    """What became of a cell. test_error and val_error (None without a validation split) are
    its final errors, as fractions (as in results.json); ``ran`` says
    whether this sweep called train_and_evaluate for it (False: skipped as finished).
    test_size and train_size are the image counts of the dataset's test and training sets
    (None when the sweep could not read the dataset)."""

    cell: Cell
    workdir: str
    status: str  # 'finished', 'failed' or 'pending'
    _: dataclasses.KW_ONLY
    test_error: float | None = None
    val_error: float | None = None
    steps: int | None = None
    wall_time_s: float | None = None
    error: str | None = None
    ran: bool = False
    test_size: int | None = None
    train_size: int | None = None


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The results of every cell (grid order) and the files written."""

    results: list[CellResult]
    outputs: dict[str, str]
    wall_time_s: float

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if r.status == FAILED]

    @property
    def ran(self) -> list[str]:
        """Names of the cells this sweep trained (or tried to)."""
        return [r.cell.name for r in self.results if r.ran]


#: Trains a group of cells of one row_key (given with their workdirs) on the loaded data and
#: returns one CellResult per cell, in order. It should record a failing cell as failed and
#: go on; if it raises, run_sweep records every cell of the group as failed.
RunGroup = Callable[[Sequence[tuple[Cell, str]], datasets.Dataset], list[CellResult]]


def finished_result(cell: Cell, workdir: str) -> CellResult | None:
    """The stored result when ``workdir`` holds results.json for ``cell``'s run (the same
    ``TrainConfig.identity()``; bookkeeping fields may differ)."""
    try:
        if wd.read_config(workdir).identity() != cell.config.identity():
            return None
        results = wd.read_results(workdir)
        if results is None or not _reached_end(cell.config, results):
            return None  # finished an earlier, shorter request (e.g. a smaller max_steps)
        return _result_from(cell, workdir, results, ran=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reached_end(cfg, results: dict[str, Any]) -> bool:
    """Whether a stored result covers ``cfg``'s stop point (max_steps, else all epochs)."""
    whole_schedule = results["epochs"] >= cfg.epochs - 1e-9
    return whole_schedule or bool(cfg.max_steps and results["step"] >= cfg.max_steps)


def _result_from(cell: Cell, workdir: str, results: dict[str, Any], ran: bool) -> CellResult:
    val = results.get("final_val_error")
    return CellResult(cell, workdir, FINISHED, test_error=float(results["final_test_error"]),
                      val_error=None if val is None else float(val),
                      steps=int(results["step"]), wall_time_s=float(results["wall_time_s"]),
                      ran=ran)


def _check_workdir(cell: Cell, workdir: str) -> None:
    if not os.path.exists(os.path.join(workdir, wd.CONFIG_FILE)):
        return
    try:
        same = wd.read_config(workdir).identity() == cell.config.identity()
    except ConfigError:
        same = False
    if not same:
        raise ConfigError(
            f"{workdir} holds a run with another config (other training flags?); delete that "
            "directory or give the sweep another directory (--sweep_dir, --table_dir)")


def run_cell(cell: Cell, workdir: str, dataset: datasets.Dataset) -> CellResult:
    """Trains (or resumes) one cell; an exception becomes a 'failed' result with its message."""
    logging.info("cell %s: training in %s", cell.name, workdir)
    try:
        _check_workdir(cell, workdir)
        run = train.train_and_evaluate(cell.config, workdir, dataset=dataset)
    except Exception as e:  # noqa: BLE001 - a failing cell must not stop the sweep
        message = f"{type(e).__name__}: {e}".splitlines()[0]
        expected = (ConfigError, datasets.DataError, train.TrainingDiverged,
                    train.CheckpointError)
        log = logging.error if isinstance(e, expected) else logging.exception  # + traceback
        log("cell %s FAILED: %s", cell.name, message)
        return CellResult(cell, workdir, FAILED, error=message, ran=True)
    result = _result_from(cell, workdir, run.results, ran=True)
    logging.info("cell %s: test error %.2f%% after %d steps", cell.name,
                 100 * result.test_error, result.steps)
    return result


def run_cells_sequentially(cells: Sequence[tuple[Cell, str]],
                           dataset: datasets.Dataset) -> list[CellResult]:
    """The default RunGroup: one cell after another."""
    results = []
    for cell, workdir in cells:
        interrupt.raise_if_requested()
        results.append(run_cell(cell, workdir, dataset))
    return results


def run_cells_as_replicas(cells: Sequence[tuple[Cell, str]],
                          dataset: datasets.Dataset) -> list[CellResult]:
    """A RunGroup that trains the cells of one row_key as replicas in ONE compiled program.

    Each cell still writes config.json/metrics.jsonl/results.json into its own workdir; the
    group's stacked checkpoint lives in <sweep_dir>/groups/<hash of the member names>, so
    re-running the same unfinished cells resumes it. A single cell trains on its own. The
    whole group fails or finishes together.
    """
    if len(cells) == 1:
        return run_cells_sequentially(cells, dataset)
    names = ",".join(cell.name for cell, _ in cells)
    group_dir = os.path.join(os.path.dirname(cells[0][1]), "groups",
                             hashlib.sha256(names.encode()).hexdigest()[:12])
    for cell, workdir in cells:
        logging.info("cell %s: training in %s (one of %d replicas, group %s)", cell.name,
                     workdir, len(cells), group_dir)
        _check_workdir(cell, workdir)
    runs = train.train_group([cell.config for cell, _ in cells], group_dir, dataset,
                             run_dirs=[workdir for _, workdir in cells])
    return [_result_from(cell, workdir, run.results, ran=True)
            for (cell, workdir), run in zip(cells, runs)]


#: Writes the sweep's outputs for the current results; ``final`` says whether to draw plots.
Report = Callable[[list[CellResult], bool], dict[str, str]]


def run_sweep(cells: Sequence[Cell], sweep_dir: str, *, dataset: datasets.Dataset | None = None,
              run_group: RunGroup | None = None, report: Report | None = None) -> SweepResult:
    """Runs every cell in ``sweep_dir/<cell.name>``; ``report`` writes the outputs after
    every group of cells and at the end.

    Finished cells (results.json of the same run) are skipped; the data is loaded once
    (from the first cell's dataset/source, unless ``dataset`` is given) and shared by all
    cells; every result carries its test- and training-set sizes. Cells of one row_key go to
    ``run_group`` together (default: one after another). Returns every cell's result;
    failed cells are in ``.failed``. Raises DataError only when cells need training and
    the data cannot be loaded at all.
    """
    start = time.time()
    os.makedirs(sweep_dir, exist_ok=True)
    run_group = run_group or run_cells_sequentially
    report = report or (lambda results, final: {})
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError("two cells of the sweep share a workdir name; drop the duplicates")
    results, groups = _pending_groups(cells, sweep_dir)
    if dataset is None:
        dataset = _load_data(cells[0], required=bool(groups))
    current = lambda: [_with_sizes(results[c.name], dataset) for c in cells]
    report(current(), False)
    progress = _GridProgress(len(cells), len(cells) - sum(len(g) for g in groups.values()))
    for group in groups.values():
        progress.starting(group)
        for r in _run_group_safely(run_group, group, dataset):
            results[r.cell.name] = r
        progress.finished(group)
        report(current(), False)
    outputs = report(current(), True)
    final = current()
    failed = [r.cell.name for r in final if r.status == FAILED]
    logging.info("sweep done in %.0f s: %d finished, %d failed%s", time.time() - start,
                 len(final) - len(failed), len(failed), f" ({', '.join(failed)})" if failed else "")
    return SweepResult(final, outputs, time.time() - start)


def report_sweep(cells: Sequence[Cell], sweep_dir: str, report: Report) -> SweepResult:
    """Writes ``report``'s outputs (plots included) for what ``sweep_dir`` holds now and
    trains nothing: finished cells with their results, the others pending with the progress
    in their metrics. The dataset is read (from its cache) only for the sizes of its test
    and training sets. Safe beside the sweep running there (every output is written
    atomically; that sweep rewrites them after its next group)."""
    start = time.time()
    if not os.path.isdir(sweep_dir):
        raise ConfigError(f"{sweep_dir} does not exist, so there is nothing to report; start "
                          "the sweep first, or name the directory it runs in")
    results, groups = _pending_groups(cells, sweep_dir)
    for group in groups.values():
        for cell, workdir in group:
            _check_workdir(cell, workdir)  # another run's progress is not this cell's
    dataset = _load_data(cells[0], required=False) if cells else None
    final = [_with_sizes(results[c.name], dataset) for c in cells]
    return SweepResult(final, report(final, True), time.time() - start)


def _load_data(cell: Cell, required: bool) -> datasets.Dataset | None:
    """The dataset ``cell`` names. When it cannot be loaded: DataError if ``required``
    (cells need training), else None with a warning (the report then names no sizes)."""
    try:
        return train.load_dataset(cell.config)
    except (datasets.DataError, OSError) as e:
        if required:
            raise
        logging.warning("the dataset %s could not be read (%s); the report gives no "
                        "test-set size", cell.config.dataset,
                        (str(e).splitlines() or [type(e).__name__])[0])
        return None


def _with_sizes(result: CellResult, dataset: datasets.Dataset | None) -> CellResult:
    """``result`` with the test- and training-set sizes of ``dataset`` (kept if None)."""
    if dataset is None:
        return result
    return dataclasses.replace(result, test_size=len(dataset.test_labels),
                               train_size=len(dataset.train_labels))


def _pending_groups(cells: Sequence[Cell], sweep_dir: str):
    """({name: result so far}, {row_key: [(cell, workdir)] still to train})."""
    results: dict[str, CellResult] = {}
    groups: dict[object, list[tuple[Cell, str]]] = {}
    for cell in cells:
        workdir = os.path.join(sweep_dir, cell.name)
        done = finished_result(cell, workdir)
        if done is not None:
            results[cell.name] = done
            logging.info("cell %s: finished before (test error %.2f%%), skipped", cell.name,
                         100 * done.test_error)
        else:
            results[cell.name] = CellResult(cell, workdir, PENDING)
            groups.setdefault(cell.row_key, []).append((cell, workdir))
    return results, groups


def _run_group_safely(run_group: RunGroup, group: list[tuple[Cell, str]],
                      dataset: datasets.Dataset) -> list[CellResult]:
    interrupt.raise_if_requested()  # a stop request between cells: before the next one
    try:
        group_results = run_group(group, dataset)
        if len(group_results) != len(group):
            raise RuntimeError(f"run_group returned {len(group_results)} results for "
                               f"{len(group)} cells")
        return group_results
    except Exception as e:  # noqa: BLE001 - the other groups still run
        message = f"{type(e).__name__}: {e}".splitlines()[0]
        logging.exception("group of %s FAILED: %s", [c.name for c, _ in group], message)
        return [CellResult(c, w, FAILED, error=message, ran=True) for c, w in group]


class _GridProgress:
    """Progress over the whole grid: cells done / total, the running cells, an ETA from the
    time the cells trained so far took."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.trained = total, done, 0
        self.start = time.time()
        logging.info("sweep: %d cells, %d finished before, %d to train", total, done,
                     total - done)

    def starting(self, group: list[tuple[Cell, str]]) -> None:
        names = ", ".join(cell.name for cell, _ in group)
        logging.info("sweep: %d/%d cells done; now training %s%s", self.done, self.total,
                     names, self._eta())

    def finished(self, group: list[tuple[Cell, str]]) -> None:
        self.done += len(group)
        self.trained += len(group)
        logging.info("sweep: %d/%d cells done, %s so far%s", self.done, self.total,
                     train.eta_string(time.time() - self.start), self._eta())

    def _eta(self) -> str:
        if not self.trained:
            return ""
        per_cell = (time.time() - self.start) / self.trained
        return f", ETA for the grid {train.eta_string(per_cell * (self.total - self.done))}"
