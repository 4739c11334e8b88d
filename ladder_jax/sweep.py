"""Label-efficiency sweeps: a grid of (preset family x label count x seed) runs, each in its
own workdir under one sweep directory, summarised as results.csv, summary.md and a plot.

    cells = build_grid(["full", "baseline"], [100, 1000, "all"], [0, 1], epochs=10)
    outcome = run_sweep(cells, "runs/label_sweep", command="...")
    outcome.failed  # the cells that raised (the others finished)

A preset *family* ('full', 'gamma', 'baseline', 'bottom') names the paper's model settings
(denoising weights lambda_l, noise std); a cell takes the family's preset for its label count
where the paper gives one (``full_50``, ``full_100``, ``full_1000``, ``full_all``) and the
family's 100-label preset otherwise.

Running a sweep again is cheap and safe: a cell whose workdir holds results.json for the same
config is skipped, an unfinished one resumes from its latest checkpoint, and a cell that raises
is recorded as failed while the others go on. The outputs are rewritten (atomically) after
every group of cells, so an interrupted sweep still leaves a readable results.csv.

Cells whose configs differ only in their seed have the same shape; ``run_sweep`` hands them
to ``run_group`` together (default: ``run_cells_sequentially``), so a runner that trains
several seeds in one compiled program can be plugged in without changing the rest.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging

from ladder_jax import config as config_lib
from ladder_jax import data as data_lib
from ladder_jax import replicas, train
from ladder_jax import workdir as wd
from ladder_jax.config import ConfigError, TrainConfig

RESULTS_CSV = "results.csv"
SUMMARY_MD = "summary.md"
PLOT_PNG = "label_efficiency.png"
CSV_COLUMNS = ("preset", "num_labels", "seed", "status", "test_error", "steps", "wall_time_s",
               "workdir", "error")
ALL_LABELS_X = 60_000  # where num_labels='all' sits on the plot's x axis

#: Published test errors (%) of the full ladder, permutation-invariant MNIST (Rasmus et al.
#: 2015, Table 1), keyed by label count.
PAPER_FULL_LADDER = {100: 1.06, 1000: 0.84, "all": 0.57}

FINISHED, FAILED, PENDING = "finished", "failed", "pending"


# ----------------------------------------------------------------------------- the grid


def preset_families() -> list[str]:
    """Family names of config.PRESETS ('full_100' -> 'full'), in first-seen order."""
    return list(dict.fromkeys(name.rsplit("_", 1)[0] for name in config_lib.PRESETS))


def preset_for(family: str, num_labels: int | str) -> str:
    """The PRESETS name whose model settings a ``family`` cell with ``num_labels`` uses.

    ``f"{family}_{num_labels}"`` when the paper gives that setting, else the family's 100-label
    preset (else its only one). Raises ConfigError for an unknown family.
    """
    families = preset_families()
    if family not in families:
        raise ConfigError(f"unknown preset family {family!r}; choose from {', '.join(families)}")
    exact = f"{family}_{num_labels}"
    if exact in config_lib.PRESETS:
        return exact
    if f"{family}_100" in config_lib.PRESETS:
        return f"{family}_100"
    return next(name for name in config_lib.PRESETS if name.rsplit("_", 1)[0] == family)


def _fit_layers(values: Sequence[float], n: int) -> tuple[float, ...]:
    """Per-layer values for a network of n layers: the bottom n-1 values and the top one
    (the last hidden value repeats if the new network is deeper)."""
    bottom = list(values[:-1])[: n - 1]
    bottom += [bottom[-1] if bottom else values[-1]] * (n - 1 - len(bottom))
    return (*bottom, values[-1])


def _normalise_labels(n: int | str) -> int | str:
    """'100' -> 100, '-1' / -1 / 'ALL' -> 'all'; anything else is left for TrainConfig to judge."""
    if isinstance(n, str):
        text = n.strip().lower()
        n = int(text) if text.lstrip("-").isdigit() else text
    return "all" if n in (-1, "all") else n


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the sweep: a preset family, a label count and a seed, and its full config."""

    preset: str  # the family, e.g. 'full'
    num_labels: int | str
    seed: int
    config: TrainConfig
    source_preset: str  # the PRESETS entry its model settings come from, e.g. 'full_1000'

    @property
    def name(self) -> str:
        """The cell's workdir name inside the sweep directory."""
        return f"{self.preset}_labels{self.num_labels}_seed{self.seed}"

    @property
    def shape_key(self) -> TrainConfig:
        """Cells with equal keys differ only in their seed (they can train as replicas)."""
        return self.config.replace(seed=0)


def build_grid(presets: Sequence[str], num_labels: Sequence[int | str], seeds: Sequence[int],
               *, layer_sizes: Sequence[int] | None = None, **train_changes: Any) -> list[Cell]:
    """The cells of presets x num_labels x seeds (duplicates dropped), label counts outermost.

    Each cell's config is its family's preset (see ``preset_for``) with the cell's num_labels
    and seed and ``train_changes`` (TrainConfig fields, e.g. epochs=1, max_steps=300)
    applied. ``layer_sizes`` replaces the network widths; the preset's per-layer lambdas and
    noise keep their bottom layers and their top layer. Raises ConfigError for a bad value
    (e.g. a label count that is not a multiple of the class count), before anything runs.
    """
    if not presets or not num_labels or not seeds:
        raise ConfigError("a sweep needs at least one preset, one label count and one seed")
    for name in ("model", "num_labels", "seed"):
        if name in train_changes:
            raise ConfigError(f"{name} is set per cell; pass it as an argument of build_grid")
    labels = list(dict.fromkeys(_normalise_labels(n) for n in num_labels))
    cells = []
    for n in labels:
        for family in dict.fromkeys(presets):
            source = preset_for(family, n)
            base = config_lib.preset(source)
            model_changes: dict[str, Any] = {}
            if layer_sizes is not None:
                sizes = tuple(int(s) for s in layer_sizes)
                model_changes = {
                    "layer_sizes": sizes,
                    "denoise_weights": _fit_layers(base.model.denoise_weights, len(sizes)),
                    "noise_std": _fit_layers(base.model.noise_std, len(sizes)),
                }
            for seed in dict.fromkeys(int(s) for s in seeds):
                cfg = base.replace(model=model_changes, num_labels=n, seed=seed, **train_changes)
                cells.append(Cell(family, cfg.num_labels, seed, cfg, source))
    return cells


# ----------------------------------------------------------------------------- running


@dataclasses.dataclass(frozen=True)
class CellResult:
    """What became of a cell. test_error is a fraction (as in results.json); ``ran`` says
    whether this sweep called train_and_evaluate for it (False: skipped as finished)."""

    cell: Cell
    workdir: str
    status: str  # 'finished', 'failed' or 'pending'
    test_error: float | None = None
    steps: int | None = None
    wall_time_s: float | None = None
    error: str | None = None
    ran: bool = False


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


#: Trains a group of same-shape cells (given with their workdirs) on the loaded data and
#: returns one CellResult per cell, in order. It should record a failing cell as failed and
#: go on; if it raises, run_sweep records every cell of the group as failed.
RunGroup = Callable[[Sequence[tuple[Cell, str]], data_lib.Mnist], list[CellResult]]


def finished_result(cell: Cell, workdir: str) -> CellResult | None:
    """The stored result when ``workdir`` holds results.json for exactly ``cell``'s config."""
    results_path = os.path.join(workdir, wd.RESULTS_FILE)
    config_path = os.path.join(workdir, wd.CONFIG_FILE)
    try:
        if wd.read_json(config_path) != cell.config.to_dict():
            return None
        return _result_from(cell, workdir, wd.read_json(results_path), ran=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _result_from(cell: Cell, workdir: str, results: dict[str, Any], ran: bool) -> CellResult:
    return CellResult(cell, workdir, FINISHED, test_error=float(results["final_test_error"]),
                      steps=int(results["step"]), wall_time_s=float(results["wall_time_s"]),
                      ran=ran)


def _check_workdir(cell: Cell, workdir: str) -> None:
    path = os.path.join(workdir, wd.CONFIG_FILE)
    if not os.path.exists(path):
        return
    try:
        same = wd.read_json(path) == cell.config.to_dict()
    except (OSError, ValueError):
        same = False
    if not same:
        raise ConfigError(
            f"{workdir} holds a run with another config (other training flags?); delete that "
            "directory or use another --sweep_dir")


def run_cell(cell: Cell, workdir: str, mnist: data_lib.Mnist) -> CellResult:
    """Trains (or resumes) one cell; an exception becomes a 'failed' result with its message."""
    logging.info("cell %s: training in %s", cell.name, workdir)
    try:
        _check_workdir(cell, workdir)
        run = train.train_and_evaluate(cell.config, workdir, mnist=mnist)
    except Exception as e:  # noqa: BLE001 - a failing cell must not stop the sweep
        message = f"{type(e).__name__}: {e}".splitlines()[0]
        expected = (ConfigError, data_lib.DataError, train.TrainingDiverged)
        log = logging.error if isinstance(e, expected) else logging.exception  # + traceback
        log("cell %s FAILED: %s", cell.name, message)
        return CellResult(cell, workdir, FAILED, error=message, ran=True)
    result = _result_from(cell, workdir, run.results, ran=True)
    logging.info("cell %s: test error %.2f%% after %d steps", cell.name,
                 100 * result.test_error, result.steps)
    return result


def run_cells_sequentially(cells: Sequence[tuple[Cell, str]],
                           mnist: data_lib.Mnist) -> list[CellResult]:
    """The default RunGroup: one cell after another."""
    return [run_cell(cell, workdir, mnist) for cell, workdir in cells]


def run_cells_as_replicas(cells: Sequence[tuple[Cell, str]],
                          mnist: data_lib.Mnist) -> list[CellResult]:
    """A RunGroup that trains same-shape cells as replicas in ONE compiled program.

    Each cell still writes config.json/metrics.jsonl/results.json into its own workdir; the
    group's stacked checkpoint lives in <sweep_dir>/groups/<hash of the member names>, so
    re-running the same unfinished cells resumes it. A single cell trains on its own. The
    whole group fails or finishes together.
    """
    if len(cells) == 1:
        return run_cells_sequentially(cells, mnist)
    names = ",".join(cell.name for cell, _ in cells)
    group_dir = os.path.join(os.path.dirname(cells[0][1]), "groups",
                             hashlib.sha256(names.encode()).hexdigest()[:12])
    for cell, workdir in cells:
        logging.info("cell %s: training in %s (one of %d replicas, group %s)", cell.name,
                     workdir, len(cells), group_dir)
        _check_workdir(cell, workdir)
    runs = replicas.train_replicas_and_evaluate(
        [cell.config for cell, _ in cells], group_dir, mnist,
        replica_dirs=[workdir for _, workdir in cells])
    return [_result_from(cell, workdir, run.results, ran=True)
            for (cell, workdir), run in zip(cells, runs)]


def run_sweep(cells: Sequence[Cell], sweep_dir: str, *, mnist: data_lib.Mnist | None = None,
              run_group: RunGroup | None = None, command: str | None = None,
              plot: bool = True) -> SweepResult:
    """Runs every cell in ``sweep_dir/<cell.name>`` and writes the sweep's outputs.

    Finished cells (results.json with the same config) are skipped; the data is loaded once
    (from the first cell's data_source/data_dir, unless ``mnist`` is given, and only if some
    cell needs training) and shared by all cells. Same-shape cells go to ``run_group``
    together. ``command`` is quoted in summary.md. Returns every cell's result; failed cells
    are in ``.failed``. Raises DataError only when the data cannot be loaded at all.
    """
    start = time.time()
    os.makedirs(sweep_dir, exist_ok=True)
    run_group = run_group or run_cells_sequentially
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError("two cells of the sweep share a workdir name; drop the duplicates")
    results: dict[str, CellResult] = {}
    groups: dict[TrainConfig, list[tuple[Cell, str]]] = {}
    for cell in cells:
        workdir = os.path.join(sweep_dir, cell.name)
        done = finished_result(cell, workdir)
        if done is not None:
            results[cell.name] = done
            logging.info("cell %s: finished before (test error %.2f%%), skipped", cell.name,
                         100 * done.test_error)
        else:
            results[cell.name] = CellResult(cell, workdir, PENDING)
            groups.setdefault(cell.shape_key, []).append((cell, workdir))

    def current() -> list[CellResult]:
        return [results[c.name] for c in cells]

    write_outputs(current(), sweep_dir, command=command, plot=False)
    todo = sum(len(g) for g in groups.values())
    logging.info("sweep %s: %d cells, %d finished before, %d to train", sweep_dir, len(cells),
                 len(cells) - todo, todo)
    if groups and mnist is None:
        first = cells[0].config
        mnist = data_lib.load_mnist(first.data_source, data_dir=first.data_dir)
    done_count = len(cells) - todo
    for group in groups.values():
        try:
            group_results = run_group(group, mnist)
            if len(group_results) != len(group):
                raise RuntimeError(f"run_group returned {len(group_results)} results for "
                                   f"{len(group)} cells")
        except Exception as e:  # noqa: BLE001 - the other groups still run
            message = f"{type(e).__name__}: {e}".splitlines()[0]
            logging.exception("group of %s FAILED: %s", [c.name for c, _ in group], message)
            group_results = [CellResult(c, w, FAILED, error=message, ran=True) for c, w in group]
        for r in group_results:
            results[r.cell.name] = r
        done_count += len(group)
        logging.info("sweep: %d/%d cells done, %.0f s so far", done_count, len(cells),
                     time.time() - start)
        write_outputs(current(), sweep_dir, command=command, plot=False)
    outputs = write_outputs(current(), sweep_dir, command=command, plot=plot)
    final = current()
    failed = [r.cell.name for r in final if r.status == FAILED]
    logging.info("sweep done in %.0f s: %d finished, %d failed%s", time.time() - start,
                 len(final) - len(failed), len(failed), f" ({', '.join(failed)})" if failed else "")
    return SweepResult(final, outputs, time.time() - start)


def enable_compilation_cache(path: str) -> None:
    """Keeps compiled programs in ``path`` (JAX's persistent compilation cache).

    A sweep compiles one training program per cell, which dominates short cells; cells whose
    programs are identical (same model settings and seed, any label count: e.g. every
    'gamma' or 'baseline' cell of a seed) and re-runs then load it instead. Call it before
    anything is compiled in the process; later calls have no effect.
    """
    import jax

    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))


# ----------------------------------------------------------------------------- outputs


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str, write: Callable[[io.IOBase], None], binary: bool = False) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _label_x(n: int | str) -> float:
    return ALL_LABELS_X if n == "all" else float(n)


def write_csv(results: Sequence[CellResult], path: str) -> None:
    """results.csv: a row per cell (test_error as a fraction, '' when not finished)."""
    def write(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in results:
            writer.writerow([
                r.cell.preset, r.cell.num_labels, r.cell.seed, r.status,
                "" if r.test_error is None else repr(r.test_error),
                "" if r.steps is None else r.steps,
                "" if r.wall_time_s is None else f"{r.wall_time_s:.1f}",
                r.workdir, r.error or "",
            ])
    _atomic_write(path, write)


def read_csv(path: str) -> list[dict[str, str]]:
    """The rows of a results.csv as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@dataclasses.dataclass(frozen=True)
class Stat:
    """Test error % over the finished seeds of one (label count, preset) entry."""

    mean: float | None
    std: float | None  # sample std (ddof=1); None when fewer than 2 seeds finished
    n: int
    failed: int

    def format(self) -> str:
        if self.n == 0:
            text = "-"
        else:
            std = "-" if self.std is None else f"{self.std:.2f}"
            text = f"{self.mean:.2f} ± {std}"
        extra = f", {self.failed} failed" if self.failed else ""
        return f"{text} (n={self.n}{extra})"


def aggregate(results: Sequence[CellResult]) -> tuple[list[int | str], list[str],
                                                      dict[tuple[int | str, str], Stat]]:
    """(label counts ascending, presets in order, {(labels, preset): Stat}) in percent."""
    labels = sorted(dict.fromkeys(r.cell.num_labels for r in results), key=_label_x)
    presets = list(dict.fromkeys(r.cell.preset for r in results))
    stats = {}
    for n in labels:
        for p in presets:
            mine = [r for r in results if r.cell.num_labels == n and r.cell.preset == p]
            errors = [100 * r.test_error for r in mine if r.status == FINISHED]
            failed = sum(r.status == FAILED for r in mine)
            if not mine:
                continue
            stats[(n, p)] = Stat(
                statistics.fmean(errors) if errors else None,
                statistics.stdev(errors) if len(errors) > 1 else None,
                len(errors), failed)
    return labels, presets, stats


def summary_markdown(results: Sequence[CellResult], command: str | None = None) -> str:
    """summary.md: test error % (mean ± sample std over seeds, n) per label count x preset."""
    labels, presets, stats = aggregate(results)
    lines = ["# Label-efficiency sweep", "",
             ("Test error (%) on the 10,000 MNIST test images: mean ± sample standard deviation "
              "(ddof=1; '-' for a single seed) over n finished seeds."), ""]
    lines.append("| labels | " + " | ".join(presets) + " |")
    lines.append("|---|" + "---|" * len(presets))
    for n in labels:
        row = [stats[(n, p)].format() if (n, p) in stats else "" for p in presets]
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    pending = sum(r.status == PENDING for r in results)
    failed = [r for r in results if r.status == FAILED]
    lines += [""]
    if pending:
        lines += [f"{pending} of {len(results)} cells are still pending.", ""]
    if failed:
        lines += ["Failed cells:", ""]
        lines += [f"- `{r.cell.name}`: {r.error}" for r in failed]
        lines += [""]
    presets_used = dict.fromkeys(f"{r.cell.preset}@{r.cell.num_labels} -> {r.cell.source_preset}"
                                 for r in results)
    steps = sorted({r.steps for r in results if r.steps is not None})
    train_time = sum(r.wall_time_s or 0.0 for r in results)
    lines += [
        "Model settings per cell (preset family @ labels -> paper preset): "
        + ", ".join(presets_used) + ".",
        "",
        (f"Training steps per cell: {', '.join(map(str, steps)) or '-'}; training wall time "
         f"summed over cells: {train_time / 60:.1f} min."),
        "",
        "Published full-ladder errors (Rasmus et al. 2015): "
        + ", ".join(f"{n} labels {e:.2f}%" for n, e in PAPER_FULL_LADDER.items()) + ".",
        "",
    ]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    return "\n".join(lines)


def plot_label_efficiency(results: Sequence[CellResult], path: str) -> bool:
    """label_efficiency.png: test error % vs labels (log x), mean ± std per preset, with the
    paper's full-ladder points. Returns False (and logs how to install it) without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        logging.warning("matplotlib is not installed, so %s was not drawn: "
                        "pip install 'ladder_jax[plots]'", os.path.basename(path))
        return False
    labels, presets, stats = aggregate(results)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = "osD^v<>"
    offsets = [1.0, 1.07, 0.935, 1.14, 0.875]
    plotted = []
    for i, p in enumerate(presets):
        pts = [(n, stats[(n, p)]) for n in labels if (n, p) in stats and stats[(n, p)].n]
        if not pts:
            continue
        xs = [_label_x(n) * offsets[i % len(offsets)] for n, _ in pts]
        ys = [s.mean for _, s in pts]
        errs = [s.std or 0.0 for _, s in pts]
        ax.errorbar(xs, ys, yerr=errs, marker=markers[i % len(markers)], capsize=3,
                    label=p, linewidth=1.5, markersize=5)
        plotted += ys
    paper_x = [_label_x(n) for n in PAPER_FULL_LADDER]
    ax.scatter(paper_x, list(PAPER_FULL_LADDER.values()), marker="*", s=140, color="black",
               zorder=5, label="full ladder, Rasmus et al. 2015 (150 epochs)")
    plotted += list(PAPER_FULL_LADDER.values())
    ax.set_xscale("log")
    positive = [y for y in plotted if y > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
        low, high = min(positive) / 1.5, max(positive) * 1.5
        ax.set_yticks([t for t in (0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if low <= t <= high])
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ticks = sorted({_label_x(n) for n in labels} | set(paper_x))
    ax.set_xticks(ticks)
    ax.set_xticklabels(["all\n(60k)" if t == ALL_LABELS_X else f"{int(t)}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labeled examples")
    ax.set_ylabel("test error (%)")
    steps = {r.steps for r in results if r.status == FINISHED}
    subtitle = f"\n{steps.pop()} training steps per run" if len(steps) == 1 else ""
    ax.set_title("Permutation-invariant MNIST: test error vs. labels" + subtitle)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        _atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    finally:
        plt.close(fig)
    return True


def write_outputs(results: Sequence[CellResult], sweep_dir: str, *, command: str | None = None,
                  plot: bool = True) -> dict[str, str]:
    """Writes results.csv, summary.md and (if ``plot`` and matplotlib is there) the plot."""
    paths = {"csv": os.path.join(sweep_dir, RESULTS_CSV),
             "summary": os.path.join(sweep_dir, SUMMARY_MD)}
    write_csv(results, paths["csv"])
    text = summary_markdown(results, command)
    _atomic_write(paths["summary"], lambda f: f.write(text))
    if plot and any(r.status == FINISHED for r in results):
        png = os.path.join(sweep_dir, PLOT_PNG)
        if plot_label_efficiency(results, png):
            paths["plot"] = png
    return paths

