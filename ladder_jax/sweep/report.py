"""Reporting a sweep or a table: results.csv, summary.md and a plot, all written atomically so
an interrupted sweep still leaves readable files.

Both reports give the same figures (the protocol their summary.md states): per seed the final
test error (the headline), the median test error over its last LAST_EVALUATIONS evaluations
and, with a validation split, the test error at the evaluation of lowest validation error;
per row (a sweep's label count x family, a table's preset: cells that differ only in their
seed) each as mean ± sample std over the finished seeds, with n. ``row_stats`` computes
them for both. The dataset, its test-set size
and the published figures shown are those of the cells actually run.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence

from ladder_jax import datasets, files
from ladder_jax.errors import ConfigError
from ladder_jax.references import Published, published_for
from ladder_jax.sweep import plots
from ladder_jax.sweep.grid import Cell
from ladder_jax.sweep.plots import CURVES_PNG, PLOT_PNG
from ladder_jax.sweep.run import FAILED, FINISHED, PENDING, CellResult
from ladder_jax.train import workdir as wd

RESULTS_CSV = "results.csv"
SUMMARY_MD = "summary.md"
#: How many of a run's last evaluations the median figure takes.
LAST_EVALUATIONS = 10
#: Error columns are fractions (as in results.json and metrics.jsonl), '' when not known.
#: labeled_examples: what num_labels means in examples ('all': the training images less the
#: validation split; '' when the dataset could not be read); model: the model family (mlp,
#: conv); test_size and train_size: the dataset's test and training images; val_error: the
#: final validation error ('' without a validation split); splits_file and splits_sha256:
#: the split manifest the cell trained on (the path as given and the file's sha256), '' when
#: its seed drew its rows.
CSV_COLUMNS = ("preset", "num_labels", "labeled_examples", "seed", "status", "dataset", "model",
               "test_size", "train_size", "splits_file", "splits_sha256", "test_error",
               "val_error", "test_error_median_last10", "test_error_at_best_val", "evaluations",
               "steps", "wall_time_s", "workdir", "error")


# ----------------------------------------------------------------------------- statistics


@dataclasses.dataclass(frozen=True)
class SeedFigures:
    """One finished cell's figures, as fractions: its final test error, the median test
    error over its last LAST_EVALUATIONS evaluations (all of them when it has fewer), the
    test error at the first evaluation of lowest validation error (None without a
    validation split), and how many evaluations its metrics hold."""

    final: float
    median_last: float | None
    at_best_val: float | None
    evaluations: int


def seed_figures(result: CellResult) -> SeedFigures:
    """The figures of a finished cell: the final error from its results, the others from the
    evaluations in its metrics.jsonl up to its final step."""
    evals = [r for r in wd.read_metrics(result.workdir) if "test_error" in r
             and (result.steps is None or r["step"] <= result.steps)]
    last = [r["test_error"] for r in evals[-LAST_EVALUATIONS:]]
    validated = [r for r in evals if "val_error" in r]
    best = min(validated, key=lambda r: r["val_error"]) if validated else None  # the first
    return SeedFigures(result.test_error, statistics.median(last) if last else None,
                       None if best is None else best["test_error"], len(evals))


@dataclasses.dataclass(frozen=True)
class Stat:
    """One figure (test error %) over a row's seeds: mean and sample std (ddof=1; None for
    fewer than 2 values) over the n seeds that have it."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, fractions: Sequence[float | None]) -> Stat:
        values = [100 * v for v in fractions if v is not None]
        return cls(statistics.fmean(values) if values else None,
                   statistics.stdev(values) if len(values) > 1 else None, len(values))

    def text(self) -> str:
        """'1.23 ± 0.45', '1.23 ± -' (one seed) or '-' (none)."""
        if self.mean is None:
            return "-"
        return f"{self.mean:.2f} ± {'-' if self.std is None else f'{self.std:.2f}'}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RowStats:
    """A row's finished seeds (seed order) with their figures, its failed cells, and each
    figure over the seeds."""

    seeds: list[tuple[CellResult, SeedFigures]]
    failed: int
    cells: int  # finished, failed and pending
    final: Stat
    median_last: Stat
    at_best_val: Stat

    @property
    def n(self) -> int:
        """Finished seeds."""
        return len(self.seeds)


def row_stats(results: Sequence[CellResult],
              row_of: Callable[[Cell], Hashable]) -> dict[Hashable, RowStats]:
    """{row: RowStats} in first-seen order, a row being the cells of equal ``row_of(cell)``
    (a sweep: (num_labels, preset); a table: the preset)."""
    rows: dict[Hashable, list[CellResult]] = {}
    for r in results:
        rows.setdefault(row_of(r.cell), []).append(r)
    out = {}
    for row, mine in rows.items():
        seeds = [(r, seed_figures(r)) for r in sorted(mine, key=lambda r: r.cell.seed)
                 if r.status == FINISHED]
        out[row] = RowStats(seeds=seeds, failed=sum(r.status == FAILED for r in mine),
                            cells=len(mine), final=Stat.of([f.final for _, f in seeds]),
                            median_last=Stat.of([f.median_last for _, f in seeds]),
                            at_best_val=Stat.of([f.at_best_val for _, f in seeds]))
    return out


# ----------------------------------------------------------------------------- shared parts


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}"


def _data_lines(results: Sequence[CellResult]) -> list[str]:
    """'Dataset: Fashion-MNIST (`fashion_mnist`), 10,000 test images ...', from the cells'
    configs and the sizes their results carry."""
    seen = dict.fromkeys((r.cell.config.dataset, r.test_size, r.train_size) for r in results)
    parts = []
    for name, test_size, train_size in seen:
        if test_size is None:
            sizes = "test-set size unknown (the dataset could not be read)"
        else:
            sizes = f"{test_size:,} test images (every error is over all of them)"
            if train_size is not None:
                sizes += f", {train_size:,} training images"
        title = (f"{datasets.TITLES[name]} (`{name}`)" if name in datasets.TITLES
                 else f"`{name}`")
        parts.append(f"{title}, {sizes}")
    return [("Dataset: " if len(parts) == 1 else "Datasets: ") + "; ".join(parts) + ".", ""]


def _manifest_fields(cell: Cell) -> tuple[str, str]:
    """results.csv's splits_file and splits_sha256 of a cell ('' without a manifest)."""
    cfg = cell.config
    return (cfg.splits, cfg.splits_sha256 or "") if cfg.splits else ("", "")


def _splits_lines(results: Sequence[CellResult], row_label: Callable[[Cell], str]
                  ) -> list[str]:
    """Which training rows each report row (``row_label`` of its cells) labeled and held
    out: the split manifest its cells trained on (file name, sha256, list lengths; the same
    rows for every seed) or the rows each seed drew. One line when no row has a manifest."""
    rows: dict[str, dict[tuple[str, str], Cell]] = {}
    for r in results:
        rows.setdefault(row_label(r.cell), {}).setdefault(_manifest_fields(r.cell), r.cell)
    if not any(path for row in rows.values() for path, _ in row):
        return [("Splits: labeled rows drawn by each seed (class-balanced), in every row; no "
                 "split manifest (--splits)."), ""]
    lines = ["Splits (the labeled and validation rows of each row):", ""]
    for label, found in rows.items():
        for (path, sha), cell in found.items():
            if not path:
                lines.append(f"- {label}: labeled rows drawn by each seed (class-balanced)")
                continue
            lines.append(f"- {label}: manifest `{os.path.basename(path)}` (sha256 {sha}), "
                         f"{cell.config.num_labels} labeled and {cell.config.num_validation} "
                         "validation rows, the same for every seed")
    return lines + [""]


def _protocol_lines(with_validation: bool) -> list[str]:
    """What each figure is."""
    best = ("the test error at the evaluation of lowest validation error (the first such "
            "evaluation)" + ("" if with_validation else
                             "; '-' here: no run holds out a validation split "
                             "(--num_validation=0)"))
    return [
        "Protocol (test error in %):",
        "",
        ("- **final**: the test error of the model at the end of its run (the headline "
         "figure)."),
        (f"- **median last {LAST_EVALUATIONS}**: the median of the test errors at the run's "
         f"last {LAST_EVALUATIONS} evaluations (all of them when it had fewer; a run "
         "evaluates every --eval_every epochs and at its end)."),
        f"- **at best val**: {best}.",
        ("- Each figure is computed per seed, then given per row as mean ± sample standard "
         "deviation (ddof=1; '± -' for a single seed) over the n finished seeds."),
        "",
    ]


def _published_text(figure: Published) -> str:
    """'1.06 ± 0.37 (Rasmus 2015 Table 1)', or '1.00 (source)' without a std."""
    std = "" if figure.std is None else f" ± {figure.std:.2f}"
    return f"{figure.mean:.2f}{std} ({figure.source})"


def _has_validation(stats: Mapping[Hashable, RowStats]) -> bool:
    return any(s.at_best_val.n for s in stats.values())


def _per_seed_lines(stats: Mapping[Hashable, RowStats], row_label: Callable[[Cell], str],
                    with_validation: bool) -> list[str]:
    """A table of every finished seed's figures, rows in order, seeds in seed order."""
    lines = ["Per seed:", "",
             f"| row | seed | final | median last {LAST_EVALUATIONS} | "
             + ("at best val | " if with_validation else "") + "evaluations | steps |",
             "|---|---|---|---|" + ("---|" if with_validation else "") + "---|---|"]
    for row in stats.values():
        for r, f in row.seeds:
            best = f" {_percent(f.at_best_val)} |" if with_validation else ""
            lines.append(f"| {row_label(r.cell)} | {r.cell.seed} | {_percent(f.final)} | "
                         f"{_percent(f.median_last)} |{best} {f.evaluations} | {r.steps} |")
    return lines + [""]


def _failed_lines(results: Sequence[CellResult]) -> list[str]:
    failed = [r for r in results if r.status == FAILED]
    if not failed:
        return []
    return ["Failed cells:", "", *[f"- `{r.cell.name}`: {r.error}" for r in failed], ""]


def _command_lines(command: str | None) -> list[str]:
    return ["Command:", "", "```", command, "```", ""] if command else []


def _text(value: float | None) -> str:
    """A CSV field: '' for None, else the value's repr (floats exactly)."""
    return "" if value is None else repr(value)


def write_csv(results: Sequence[CellResult], path: str) -> None:
    """results.csv: a row per cell with its figures (CSV_COLUMNS)."""
    def write(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in results:
            mine = seed_figures(r) if r.status == FINISHED else None
            median, best, evaluations = (None, None, None) if mine is None else (
                mine.median_last, mine.at_best_val, mine.evaluations)
            writer.writerow([
                r.cell.preset, r.cell.num_labels,
                _text(plots.labeled_examples(r.cell, r.train_size)), r.cell.seed, r.status,
                r.cell.config.dataset, r.cell.config.model.family, _text(r.test_size),
                _text(r.train_size), *_manifest_fields(r.cell), _text(r.test_error),
                _text(r.val_error),
                _text(median), _text(best), _text(evaluations), _text(r.steps),
                "" if r.wall_time_s is None else f"{r.wall_time_s:.1f}",
                r.workdir, r.error or "",
            ])
    files.write_file_atomic(path, write)


def read_csv(path: str) -> list[dict[str, str]]:
    """The rows of a results.csv as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def points_from_csv(path: str) -> list[plots.Point]:
    """The finished cells of a sweep's or table's results.csv as label-efficiency points.
    ConfigError (one line) for a file that is missing or not such a CSV."""
    def number(text):
        return None if text == "" else int(text)
    try:
        return [plots.Point(row["dataset"], number(row["train_size"]), row["preset"],
                            row["num_labels"] if row["num_labels"] == "all"
                            else int(row["num_labels"]), number(row["labeled_examples"]),
                            int(row["seed"]), float(row["test_error"]), number(row["steps"]),
                            row["model"] == "mlp")
                for row in read_csv(path) if row["status"] == FINISHED]
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; name a sweep or table directory that holds "
                          "results.csv (run it, or its --report_only, first)") from None
    except (KeyError, ValueError, TypeError, csv.Error) as e:
        raise ConfigError(f"{path} is not a results.csv of this ladder_jax ({type(e).__name__}: "
                          f"{e}); rewrite it with the sweep's or table's --report_only"
                          ) from None


# ----------------------------------------------------------------------------- label sweep


def _sweep_row(cell: Cell) -> tuple[int | str, str]:
    return cell.num_labels, cell.preset


def _sweep_row_label(cell: Cell) -> str:
    """How summary.md names a sweep's row: 'full @ 100'."""
    return f"{cell.preset} @ {cell.num_labels}"


def _sorted_labels(results: Sequence[CellResult]) -> list[int | str]:
    """The label counts of the cells, ascending, 'all' last."""
    return sorted(dict.fromkeys(r.cell.num_labels for r in results),
                  key=lambda n: (n == "all", 0 if n == "all" else n))


def _sweep_published(results: Sequence[CellResult]) -> dict[tuple[int | str, str], Published]:
    """{(labels, family): published figure} for the sweep's families on its datasets, at
    every label count a figure is published for."""
    families = dict.fromkeys(r.cell.preset for r in results)
    out = {}
    for dataset in dict.fromkeys(r.cell.config.dataset for r in results):
        for key, figure in plots.published_points(families, dataset).items():
            out.setdefault(key, figure)
    return out


def _grid_lines(stats: Mapping[Hashable, RowStats], labels: Sequence[int | str],
                presets: Sequence[str], figure: str) -> list[str]:
    """One labels x presets table of ``figure`` ('final', 'median_last', 'at_best_val')."""
    lines = ["| labels | " + " | ".join(presets) + " |", "|---|" + "---|" * len(presets)]
    for n in labels:
        texts = []
        for p in presets:
            s = stats.get((n, p))
            if s is None:
                texts.append("")
                continue
            stat = getattr(s, figure)
            failed = f", {s.failed} failed" if s.failed else ""
            texts.append(f"{stat.text()} (n={stat.n}{failed})")
        lines.append(f"| {n} | " + " | ".join(texts) + " |")
    return lines + [""]


def summary_markdown(results: Sequence[CellResult], command: str | None = None) -> str:
    """summary.md of a label sweep: the dataset and the protocol, then per figure a table
    label count x preset family (mean ± sample std, n), each seed's figures, progress and
    failures, and the published figures for that dataset."""
    stats = row_stats(results, _sweep_row)
    labels = _sorted_labels(results)
    presets = list(dict.fromkeys(r.cell.preset for r in results))
    with_val = _has_validation(stats)
    lines = ["# Label-efficiency sweep", "", *_data_lines(results),
             *_splits_lines(results, _sweep_row_label), *_protocol_lines(with_val),
             "Final test error (%):", "", *_grid_lines(stats, labels, presets, "final"),
             f"Median over the last {LAST_EVALUATIONS} evaluations (%):", "",
             *_grid_lines(stats, labels, presets, "median_last")]
    if with_val:
        lines += ["At the lowest validation error (%):", "",
                  *_grid_lines(stats, labels, presets, "at_best_val")]
    lines += _per_seed_lines(stats, _sweep_row_label, with_val)
    lines += _pending_lines(results, lambda c: f"{c.preset} at {c.num_labels} labels")
    lines += _failed_lines(results)
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
    ]
    published = _sweep_published(results)
    if published:
        lines += ["Published test errors (%) for this dataset (the papers' full schedules): "
                  + "; ".join(f"{p} at {n} labels: {_published_text(f)}"
                              for (n, p), f in published.items()) + ".", ""]
    else:
        lines += ["Published test errors: none for these families on this dataset.", ""]
    lines += _command_lines(command)
    return "\n".join(lines)


def _epoch(epoch: float) -> str:
    """9.0 -> '9', 0.0333 -> '0.03'."""
    return f"{epoch:.0f}" if float(epoch).is_integer() else f"{epoch:.2f}"


def _pending_lines(results: Sequence[CellResult], row_of: Callable[[Cell], str]) -> list[str]:
    """'k of n cells are still pending.' and, per row (``row_of`` a cell), how far its pending
    cells have trained (from their metrics.jsonl), so that a long sweep can be read before
    it ends; [] when nothing is pending."""
    pending = [r for r in results if r.status == PENDING]
    if not pending:
        return []
    lines = [f"{len(pending)} of {len(results)} cells are still pending.", ""]
    groups: dict[str, list[CellResult]] = {}
    for r in pending:
        groups.setdefault(row_of(r.cell), []).append(r)
    for row, group in groups.items():
        curves = [c for c in (plots.test_error_curve(r.workdir) for r in group) if c]
        if not curves:
            continue
        epochs = [max(c) for c in curves]
        errors = [c[max(c)] for c in curves]
        reached = (f"epoch {_epoch(min(epochs))}" if min(epochs) == max(epochs)
                   else f"epochs {_epoch(min(epochs))}-{_epoch(max(epochs))}")
        error = f"{errors[0]:.2f} %" if len(errors) == 1 else \
            f"{min(errors):.2f}-{max(errors):.2f} %"
        if len(errors) > 1 and min(epochs) == max(epochs):  # a mean of one epoch's errors
            error += f" (mean {statistics.fmean(errors):.2f})"
        cfg = group[0].cell.config
        end = f"{cfg.epochs}" + (f" (stops at step {cfg.max_steps})" if cfg.max_steps else "")
        lines.append(f"- in progress, {row}: {len(curves)} of {len(group)} pending seeds "
                     f"evaluated, at {reached} of {end}; latest test error {error}")
    return lines + ([""] if lines[-1] else [])


def write_outputs(results: Sequence[CellResult], sweep_dir: str, *, command: str | None = None,
                  plot: bool = True) -> dict[str, str]:
    """Writes results.csv, summary.md and (if ``plot`` and matplotlib is there) the plot."""
    return _write_all(results, sweep_dir, summary_markdown(results, command),
                      {"plot": (PLOT_PNG, _draw_label_efficiency)} if plot else {})


def _draw_label_efficiency(results: Sequence[CellResult], path: str) -> bool:
    return plots.plot_label_efficiency(plots.points_of(results), path)


# ----------------------------------------------------------------------------- results table


def _table_row(cell: Cell) -> str:
    return cell.source_preset


def table_markdown(results: Sequence[CellResult], paper: Mapping[str, Published],
                   command: str | None = None, title: str = "Results table") -> str:
    """summary.md of a table: the dataset and the protocol, then per row the figures (mean
    ± sample std, n), the figure published for that row on that dataset (from ``paper``:
    preset -> Published) and the final mean minus it, then each seed's figures, progress
    and failures."""
    stats = row_stats(results, _table_row)
    with_val = _has_validation(stats)
    dataset_of = {_table_row(r.cell): r.cell.config.dataset for r in results}
    published = {row: published_for(row, dataset_of[row], paper) for row in stats}
    shown = any(published.values())
    lines = [f"# {title}", "", *_data_lines(results), *_splits_lines(results, _table_row),
             *_protocol_lines(with_val),
             ("n: the row's finished seeds ('k of m' while some of its m cells are pending "
              "or failed)."), ""]
    if shown:
        lines += [("Published: the figure published for the row's preset on this dataset "
                   "(mean ± std where the paper gives one); final - published: our final "
                   "mean minus its mean."), ""]
    else:
        lines += ["Published test errors: none for these rows on this dataset.", ""]
    head = ["row", "final", "n", f"median last {LAST_EVALUATIONS}"]
    head += ["at best val"] if with_val else []
    head += ["published", "final - published"] if shown else []
    lines += ["| " + " | ".join(head + ["steps"]) + " |", "|" + "---|" * (len(head) + 1)]
    for row, stat in stats.items():
        n = f"{stat.n}" + ("" if stat.n == stat.cells else f" of {stat.cells}")
        cells = [row, stat.final.text(), n + (f" ({stat.failed} failed)" if stat.failed else ""),
                 stat.median_last.text()]
        cells += [stat.at_best_val.text()] if with_val else []
        if shown:
            ref = published[row]
            cells += ["-", "-"] if ref is None else [
                _published_text(ref),
                "-" if stat.final.mean is None else f"{stat.final.mean - ref.mean:+.2f}"]
        steps = sorted({r.steps for r in results
                        if _table_row(r.cell) == row and r.steps is not None})
        lines.append("| " + " | ".join(cells + [", ".join(map(str, steps)) or "-"]) + " |")
    lines += [""] + _per_seed_lines(stats, _table_row, with_val)
    lines += _pending_lines(results, _table_row)
    lines += _failed_lines(results)
    lines += _command_lines(command)
    return "\n".join(lines)


def write_table_outputs(results: Sequence[CellResult], sweep_dir: str,
                        paper: Mapping[str, Published], *, command: str | None = None,
                        plot: bool = True, title: str = "Results table") -> dict[str, str]:
    """Writes results.csv, summary.md (table_markdown) and, if ``plot``, the curves PNG and
    the label-efficiency PNG of the rows' families."""
    drawings = {"curves": (CURVES_PNG, lambda r, path: plots.plot_curves(r, path, _table_row)),
                "plot": (PLOT_PNG, _draw_label_efficiency)}
    return _write_all(results, sweep_dir, table_markdown(results, paper, command, title),
                      drawings if plot else {})


def _write_all(results: Sequence[CellResult], sweep_dir: str, summary: str,
               drawings: Mapping[str, tuple[str, Callable[..., bool]]]) -> dict[str, str]:
    """results.csv, summary.md (``summary``) and the figures (kind -> file name and drawing
    function, which says whether it drew: not before there is something to draw); returns
    the paths written by kind."""
    paths = {"csv": os.path.join(sweep_dir, RESULTS_CSV),
             "summary": os.path.join(sweep_dir, SUMMARY_MD)}
    write_csv(results, paths["csv"])
    files.write_text_atomic(paths["summary"], summary)
    for kind, (name, draw) in drawings.items():
        if draw(results, os.path.join(sweep_dir, name)):
            paths[kind] = os.path.join(sweep_dir, name)
    return paths
