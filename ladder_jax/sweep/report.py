"""Reporting a sweep: results.csv, summary.md (mean ± sample std over seeds, beside the
published figures) and plots, all written atomically so an interrupted sweep still leaves
readable files.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import statistics
from collections.abc import Callable, Sequence

from absl import logging

from ladder_jax.sweep.grid import Cell
from ladder_jax.sweep.run import FAILED, FINISHED, PENDING, CellResult
from ladder_jax.train import workdir as wd

RESULTS_CSV = "results.csv"
SUMMARY_MD = "summary.md"
PLOT_PNG = "label_efficiency.png"
CSV_COLUMNS = ("preset", "num_labels", "seed", "status", "test_error", "steps", "wall_time_s",
               "workdir", "error")
ALL_LABELS_X = 60_000  # where num_labels='all' sits on the plot's x axis

#: Published test errors (%) of the full ladder, permutation-invariant MNIST (Rasmus et al.
#: 2015, Table 1), keyed by label count.
PAPER_FULL_LADDER = {100: 1.06, 1000: 0.84, "all": 0.57}


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
    wd.write_file_atomic(path, write)


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
    failed = [r for r in results if r.status == FAILED]
    lines += [""] + _pending_lines(results, lambda c: f"{c.preset} at {c.num_labels} labels")
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


def _curve(workdir: str) -> dict[float, float]:
    """{epoch: test error %} of a run's evaluated epochs (empty if it has none yet)."""
    from ladder_jax.train import workdir as wd

    return {r["epoch"]: 100 * r["test_error"] for r in wd.read_metrics(workdir)
            if "test_error" in r}


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
        curves = [c for c in (_curve(r.workdir) for r in group) if c]
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


def _pyplot(path: str):
    """matplotlib.pyplot on the Agg backend, or None (with a warning saying how to install
    it, naming the plot ``path`` that is not drawn)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is not installed, so %s was not drawn: "
                        "pip install 'ladder_jax[plots]'", os.path.basename(path))
        return None
    return plt


def _save(plt, fig, path: str) -> None:
    """Writes ``fig`` as a PNG to ``path`` atomically, then closes it."""
    fig.tight_layout()
    try:
        wd.write_file_atomic(path, lambda f: fig.savefig(f, format="png"), binary=True)
    finally:
        plt.close(fig)


def plot_label_efficiency(results: Sequence[CellResult], path: str) -> bool:
    """label_efficiency.png: test error % vs labels (log x), mean ± std per preset, with the
    paper's full-ladder points. Returns False (and logs how to install it) without matplotlib.
    """
    if not any(r.status == FINISHED for r in results):
        return False
    plt = _pyplot(path)
    if plt is None:
        return False
    import matplotlib.ticker
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
    _save(plt, fig, path)
    return True


def write_outputs(results: Sequence[CellResult], sweep_dir: str, *, command: str | None = None,
                  plot: bool = True) -> dict[str, str]:
    """Writes results.csv, summary.md and (if ``plot`` and matplotlib is there) the plot."""
    return _write_all(results, sweep_dir, summary_markdown(results, command),
                      (PLOT_PNG, plot_label_efficiency) if plot else None)


# ----------------------------------------------------------------------------- results table

CURVES_PNG = "test_error_curves.png"


def row_stats(results: Sequence[CellResult]) -> dict[str, Stat]:
    """{preset: Stat over its finished seeds} in table order (percent)."""
    rows = list(dict.fromkeys(r.cell.source_preset for r in results))
    out = {}
    for row in rows:
        mine = [r for r in results if r.cell.source_preset == row]
        errors = [100 * r.test_error for r in mine if r.status == FINISHED]
        out[row] = Stat(statistics.fmean(errors) if errors else None,
                        statistics.stdev(errors) if len(errors) > 1 else None,
                        len(errors), sum(r.status == FAILED for r in mine))
    return out


def table_markdown(results: Sequence[CellResult],
                   paper: dict[str, tuple[float, float | None, str]],
                   command: str | None = None, title: str = "Results table") -> str:
    """summary.md of a table: per row mean ± sample std (n) of the final test error, the
    published figure (``paper``: row -> (mean, std or None, source)), our mean minus it and
    each finished seed's error."""
    lines = [f"# {title}", "",
             ("Final test error (%): mean ± sample standard deviation (ddof=1) over n finished "
              "seeds, beside the published figure (mean ± std where the paper gives one), and "
              "each seed's error (seed: %)."), "",
             "| row | ours | n | published | ours - published | steps | per seed |",
             "|---|---|---|---|---|---|---|"]
    for row, stat in row_stats(results).items():
        ours = "-" if stat.mean is None else (
            f"{stat.mean:.2f} ± {'-' if stat.std is None else f'{stat.std:.2f}'}")
        published, diff = "-", "-"
        if row in paper:
            mean, std, source = paper[row]
            published = (f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")
                         + f" ({source})")
            if stat.mean is not None:
                diff = f"{stat.mean - mean:+.2f}"
        steps = sorted({r.steps for r in results
                        if r.cell.source_preset == row and r.steps is not None})
        failed = f" ({stat.failed} failed)" if stat.failed else ""
        per_seed = ", ".join(f"{r.cell.seed}: {100 * r.test_error:.2f}" for r in sorted(
            (r for r in results if r.cell.source_preset == row and r.status == FINISHED),
            key=lambda r: r.cell.seed))
        lines.append(f"| {row} | {ours} | {stat.n}{failed} | {published} | {diff} | "
                     f"{', '.join(map(str, steps)) or '-'} | {per_seed or '-'} |")
    lines += [""] + _pending_lines(results, lambda c: c.source_preset)
    lines += [f"- `{r.cell.name}` failed: {r.error}" for r in results if r.status == FAILED]
    if command:
        lines += ["", "Command:", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def plot_curves(results: Sequence[CellResult], path: str) -> bool:
    """test_error_curves.png: test error % per epoch (log y), per row the median over seeds
    and the min-max band, finished runs or not. Returns False when no run has evaluated an
    epoch yet, or (logging how to install it) without matplotlib."""
    rows = {}
    for row in dict.fromkeys(r.cell.source_preset for r in results):
        curves = [_curve(r.workdir) for r in results if r.cell.source_preset == row]
        if any(curves):
            rows[row] = [c for c in curves if c]
    if not rows:
        return False
    plt = _pyplot(path)
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for row, curves in rows.items():
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        values = [[c[e] for c in curves] for e in epochs]
        line, = ax.plot(epochs, [statistics.median(v) for v in values],
                        label=f"{row} (n={len(curves)})", linewidth=1.3)
        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    import matplotlib.ticker
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ticks = [t for t in (0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30, 50, 100)
             if low <= t <= high]
    if len(ticks) >= 2:  # plain numbers at round values rather than 6x10^0
        ax.set_yticks(ticks)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.set_title("Test error per epoch: median over seeds, min-max band")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return True


def write_table_outputs(results: Sequence[CellResult], sweep_dir: str,
                        paper: dict[str, tuple[float, float | None, str]], *,
                        command: str | None = None, plot: bool = True,
                        title: str = "Results table") -> dict[str, str]:
    """Writes results.csv, summary.md (table_markdown) and, if ``plot``, the curves PNG."""
    return _write_all(results, sweep_dir, table_markdown(results, paper, command, title),
                      (CURVES_PNG, plot_curves) if plot else None)


def _write_all(results: Sequence[CellResult], sweep_dir: str, summary: str,
               plot: tuple[str, Callable[..., bool]] | None) -> dict[str, str]:
    """results.csv, summary.md (``summary``) and the plot (file name, drawing function, which
    says whether it drew: not before there is something to draw); returns the paths written
    by kind."""
    paths = {"csv": os.path.join(sweep_dir, RESULTS_CSV),
             "summary": os.path.join(sweep_dir, SUMMARY_MD)}
    write_csv(results, paths["csv"])
    wd.write_file_atomic(paths["summary"], lambda f: f.write(summary))
    if plot is not None:
        name, draw = plot
        if draw(results, os.path.join(sweep_dir, name)):
            paths["plot"] = os.path.join(sweep_dir, name)
    return paths
