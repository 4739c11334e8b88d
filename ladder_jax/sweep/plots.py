"""The plots of sweeps and tables, as PNGs (matplotlib, the 'plots' extra):

- label_efficiency.png: test error vs. labeled examples, one panel per dataset, per preset
  family the median over seeds with the min-max range, beside the figures published for
  that family on that dataset. Drawn from a sweep's or table's results, or from the
  results.csv files of several (``report.points_from_csv``; experiments.label_figure).
- test_error_curves.png: a table's test error per epoch, per row the median over seeds and
  the min-max band.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Iterable, Sequence

from absl import logging

from ladder_jax import datasets, files
from ladder_jax.errors import ConfigError
from ladder_jax.references import PUBLISHED, Published
from ladder_jax.sweep.grid import Cell, split_preset
from ladder_jax.sweep.run import FINISHED, CellResult
from ladder_jax.train import workdir as wd

PLOT_PNG = "label_efficiency.png"
CURVES_PNG = "test_error_curves.png"
_MARKERS = "osD^v<>"
_OFFSETS = (1.0, 1.07, 0.935, 1.14, 0.875)  # x nudges so that families' ranges do not overlap
_ROUND_ERRORS = (0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30, 50, 100)


@dataclasses.dataclass(frozen=True)
class Point:
    """One finished cell on the label-efficiency figure: its dataset and that dataset's
    training images (None: not known), preset family, label count ('all' or a number), the
    labeled examples that count means (None: not known, e.g. 'all' without the dataset's
    size), seed, final test error (a fraction), training steps and whether its model is a
    dense (permutation-invariant) net."""

    dataset: str
    train_size: int | None
    family: str
    num_labels: int | str
    labeled: int | None
    seed: int
    test_error: float
    steps: int | None
    dense: bool


def labeled_examples(cell: Cell, train_size: int | None) -> int | None:
    """The labeled examples a cell trains on: its label count, or for 'all' the training
    images less the validation split (None when the training-set size is not known)."""
    if cell.num_labels != "all":
        return int(cell.num_labels)
    return None if train_size is None else train_size - cell.config.num_validation


def points_of(results: Sequence[CellResult]) -> list[Point]:
    """The finished cells of a sweep or table as points."""
    return [Point(r.cell.config.dataset, r.train_size, r.cell.preset, r.cell.num_labels,
                  labeled_examples(r.cell, r.train_size), r.cell.seed, r.test_error, r.steps,
                  r.cell.config.model.family == "mlp")
            for r in results if r.status == FINISHED]


def dataset_title(name: str) -> str:
    return datasets.TITLES.get(name, name)


def panel_title(dataset_names: Iterable[str], dense: bool) -> str:
    """'Permutation-invariant MNIST' (``dense``: dense nets only) or the datasets' names."""
    names = " / ".join(dataset_title(d) for d in dict.fromkeys(dataset_names))
    return f"Permutation-invariant {names}" if dense else names


def published_points(families: Iterable[str], dataset: str) -> dict[tuple[int | str, str],
                                                                      Published]:
    """{(labels, family): published figure} of ``families`` on ``dataset``."""
    wanted = set(families)
    out = {}
    for preset, figure in PUBLISHED.items():
        family, labels = split_preset(preset)
        if family in wanted and figure.dataset == dataset:
            out[(labels, family)] = figure
    return out


def test_error_curve(workdir: str) -> dict[float, float]:
    """{epoch: test error %} of a run's evaluated epochs (empty if it has none yet)."""
    return {r["epoch"]: 100 * r["test_error"] for r in wd.read_metrics(workdir)
            if "test_error" in r}


# ----------------------------------------------------------------------------- drawing


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
        files.write_file_atomic(path, lambda f: fig.savefig(f, format="png"), binary=True)
    finally:
        plt.close(fig)


def _round_log_ticks(axis, low: float, high: float) -> None:
    """Plain numbers at round errors on a log axis (rather than 6x10^0)."""
    import matplotlib.ticker
    ticks = [t for t in _ROUND_ERRORS if low <= t <= high]
    if len(ticks) >= 2:
        axis.set_ticks(ticks)
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _label_axis_x(points: Sequence[Point], published_labels: Sequence[int | str]):
    """(x position of a label count, x of 'all', the tick text of 'all'): a count at its
    number, 'all' at its labeled examples (else at the training images, where the papers'
    'all' sits; when neither is known, ten times the largest count, ticked plain 'all')."""
    known = [p.labeled for p in points if p.num_labels == "all" and p.labeled is not None]
    known += [p.train_size for p in points if p.train_size is not None]
    if known:
        all_x, tick = float(known[0]), f"all\n({known[0] / 1000:g}k)"
    else:
        numbers = [p.labeled for p in points if p.num_labels != "all"]
        numbers += [n for n in published_labels if n != "all"]
        all_x, tick = 10.0 * max(numbers, default=100), "all"
    return (lambda n: all_x if n == "all" else float(n)), all_x, tick


def check_points(points: Sequence[Point]) -> None:
    """ConfigError (one line) when points cannot share a figure: one seed of a family and
    label count twice (two directories holding the same cell), or runs of one family and
    label count of different lengths (say a 200-step sweep beside a 150-epoch table)."""
    seen: dict[tuple, Point] = {}
    steps: dict[tuple, set] = {}
    for p in points:
        where = (p.dataset, p.family, p.num_labels)
        if (*where, p.seed) in seen:
            raise ConfigError(f"{p.family} at {p.num_labels} labels, seed {p.seed}, on "
                              f"{p.dataset} is given twice; name each table or sweep once")
        seen[(*where, p.seed)] = p
        steps.setdefault(where, set()).add(p.steps)
    for (dataset, family, labels), lengths in steps.items():
        if len(lengths) > 1:
            raise ConfigError(
                f"{family} at {labels} labels on {dataset} has runs of different lengths "
                f"({', '.join(map(str, sorted(lengths, key=str)))} steps); draw tables or "
                "sweeps of one schedule together")


def _draw_panel(ax, points: Sequence[Point], families: Sequence[str]) -> None:
    """One dataset: per family the median over seeds at each label count, the min-max
    range as error bars, the published figures as stars."""
    dataset = points[0].dataset
    published = published_points(families, dataset)
    x_of, all_x, all_tick = _label_axis_x(points, [n for n, _ in published])
    plotted, labels_seen = [], set()
    for i, family in enumerate(families):
        mine = [p for p in points if p.family == family]
        by_labels: dict[int | str, list[float]] = {}
        for p in sorted(mine, key=lambda p: x_of(p.num_labels)):
            by_labels.setdefault(p.num_labels, []).append(100 * p.test_error)
        if not by_labels:
            continue
        labels_seen |= set(by_labels)
        xs = [x_of(n) * _OFFSETS[i % len(_OFFSETS)] for n in by_labels]
        medians = [statistics.median(v) for v in by_labels.values()]
        low = [m - min(v) for m, v in zip(medians, by_labels.values())]
        high = [max(v) - m for m, v in zip(medians, by_labels.values())]
        seeds = sorted({len(v) for v in by_labels.values()})
        n = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        # A family's colour and marker come from its place in ``families``: alike in panels.
        bars = ax.errorbar(xs, medians, yerr=[low, high], marker=_MARKERS[i % len(_MARKERS)],
                           capsize=3, linewidth=1.5, markersize=5, color=f"C{i}",
                           label=f"{family} (n={n} seed{'' if n == '1' else 's'})")
        plotted += [min(v) for v in by_labels.values()] + [max(v) for v in by_labels.values()]
        stars = [(n, f.mean) for (n, fam), f in published.items() if fam == family]
        if stars:
            ax.scatter([x_of(n) for n, _ in stars], [e for _, e in stars], marker="*", s=140,
                       color=bars.lines[0].get_color(), edgecolor="black", zorder=5,
                       label=f"{family}, published")
            plotted += [e for _, e in stars]
            labels_seen |= {n for n, _ in stars}
    ax.set_xscale("log")
    positive = [y for y in plotted if y > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
        _round_log_ticks(ax.yaxis, min(positive) / 1.5, max(positive) * 1.5)
    ticks = sorted({x_of(n) for n in labels_seen})
    ax.set_xticks(ticks)
    ax.set_xticklabels([all_tick if t == all_x else f"{int(t)}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labeled examples")
    ax.set_ylabel("test error (%)")
    ax.set_title(panel_title([dataset], all(p.dense for p in points)))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)


def plot_label_efficiency(points: Sequence[Point], path: str, *,
                          families: Sequence[str] | None = None) -> bool:
    """label_efficiency.png of ``points``: one panel per dataset (first-seen order), the
    ``families`` given (default: all, first-seen order). Returns False when there is no
    point to draw, or (logging how to install it) without matplotlib; ConfigError when the
    points cannot share a figure (``check_points``)."""
    families = list(families or dict.fromkeys(p.family for p in points))
    points = [p for p in points if p.family in families]
    check_points(points)
    if not points:
        return False
    plt = _pyplot(path)
    if plt is None:
        return False
    panels = list(dict.fromkeys(p.dataset for p in points))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), dpi=120,
                             squeeze=False)
    for ax, dataset in zip(axes[0], panels):
        _draw_panel(ax, [p for p in points if p.dataset == dataset], families)
    steps = {p.steps for p in points}
    run = f"{steps.pop()} training steps per run; " if len(steps) == 1 else ""
    fig.suptitle(f"Test error vs. labels: {run}median over seeds, bars min-max",
                 fontsize=10)
    _save(plt, fig, path)
    return True


def plot_curves(results: Sequence[CellResult], path: str, row_of) -> bool:
    """test_error_curves.png: test error % per epoch (log y), per row (``row_of`` a cell) the
    median over seeds and the min-max band, finished runs or not. Returns False when no run
    has evaluated an epoch yet, or (logging how to install it) without matplotlib."""
    rows = {}
    for row in dict.fromkeys(row_of(r.cell) for r in results):
        curves = [test_error_curve(r.workdir) for r in results if row_of(r.cell) == row]
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
    ax.set_yscale("log")
    _round_log_ticks(ax.yaxis, *ax.get_ylim())
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    title = panel_title((r.cell.config.dataset for r in results),
                        all(r.cell.config.model.family == "mlp" for r in results))
    ax.set_title(f"{title}: test error per epoch\n"
                 "median over seeds, min-max band")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return True
