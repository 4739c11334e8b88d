"""Tests for ladder_jax.sweep, experiments/label_sweep.py and experiments/paper_tables.py.

The end-to-end tests run the real CLI with a tiny network (784-50-10, 20 steps per cell) on
real MNIST, and on a small Fashion-MNIST-named IDX dataset (images from MNIST, a test set
of its own size) with a validation split and a dozen evaluations per run, whose reports
must name that dataset and its size and compute the protocol's figures from the metrics;
and on user data (an .npz of real MNIST rows), first with the rows each seed draws, then
with a split manifest per label count (--splits), whose rows every seed must train on.
They run in subprocesses that share a JAX persistent compilation cache (and a low XLA
optimisation level): compiling dominates such short runs, and a re-run cell then compiles
from the cache. In-process tests cover the grid, the run_group hook and the outputs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

import pytest

from ladder_jax import config as config_lib
from ladder_jax import references, sweep
from ladder_jax.sweep import plots, report
from ladder_jax.train import workdir as wd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ["--num_labels=20,50", "--seeds=0,1", "--presets=full,baseline",
              "--layer_sizes=784,50,10", "--epochs=1", "--max_steps=20", "--steps_per_call=10",
              "--checkpoint_every=0"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("jax_cache"))


def run_cli(flags: list[str], jax_cache: str,
            module: str = "experiments.label_sweep") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    command = [sys.executable, "-m", module, f"--compilation_cache_dir={jax_cache}", *flags]
    return subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def trained_cells(stderr: str) -> list[str]:
    return re.findall(r"cell (\S+): training in", stderr)


@pytest.fixture(scope="module")
def tiny_sweep(mnist, jax_cache, tmp_path_factory) -> str:
    """A finished 2 labels x 2 seeds x 2 presets sweep; `mnist` makes sure the data is cached."""
    del mnist
    sweep_dir = str(tmp_path_factory.mktemp("sweep") / "tiny")
    proc = run_cli([f"--sweep_dir={sweep_dir}", *TINY_FLAGS], jax_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(trained_cells(proc.stderr)) == 8
    assert os.listdir(jax_cache)  # the compiled programs were kept
    # Progress over the whole grid: cells done / total, the running cells, an ETA.
    progress = re.findall(r"sweep: (\d+)/8 cells done(.*)", proc.stderr)
    assert [int(done) for done, _ in progress][-1] == 8
    assert any("now training" in rest for _, rest in progress)
    assert any("ETA for the grid" in rest for _, rest in progress)
    return sweep_dir


def test_csv_has_a_finished_row_per_cell(tiny_sweep, mnist):
    rows = sweep.read_csv(os.path.join(tiny_sweep, report.RESULTS_CSV))
    assert len(rows) == 8
    assert list(rows[0]) == list(report.CSV_COLUMNS)
    assert {(r["preset"], r["num_labels"], r["seed"]) for r in rows} == {
        (p, n, s) for p in ("full", "baseline") for n in ("20", "50") for s in ("0", "1")}
    for r in rows:
        assert r["status"] == "finished" and r["error"] == ""
        assert (r["dataset"], int(r["test_size"])) == ("mnist", len(mnist.test_labels))
        assert int(r["train_size"]) == len(mnist.train_labels) and r["model"] == "mlp"
        assert r["labeled_examples"] == r["num_labels"]
        assert int(r["steps"]) == 20
        assert 0.0 < float(r["test_error"]) < 0.9  # 20 steps: far from chance (0.9)
        assert float(r["wall_time_s"]) > 0
        assert r["workdir"] == os.path.join(tiny_sweep,
                                            f"{r['preset']}_labels{r['num_labels']}_seed{r['seed']}")
        stored = sweep.finished_result(
            sweep.build_grid([r["preset"]], [r["num_labels"]], [int(r["seed"])],
                             layer_sizes=(784, 50, 10), epochs=1, max_steps=20,
                             steps_per_call=10, checkpoint_every=0)[0], r["workdir"])
        assert stored is not None and stored.test_error == float(r["test_error"])
    # The seeds are different runs.
    by_seed = {r["seed"]: r["test_error"] for r in rows if r["preset"] == "full"
               and r["num_labels"] == "20"}
    assert by_seed["0"] != by_seed["1"]


def grid_of(text: str, title: str) -> dict[str, dict[str, str]]:
    """{labels: {preset: cell text}} of the labels x presets table under ``title`` in a
    sweep's summary.md."""
    lines = text.split(f"\n{title}\n", 1)[1].splitlines()
    header = next(line for line in lines if line.startswith("| labels |"))
    presets = [c.strip() for c in header.strip("|").split("|")][1:]
    table = {}
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        label, *cells = [c.strip() for c in line.strip("|").split("|")]
        table[label] = dict(zip(presets, cells, strict=True))
    return table


def per_seed_of(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """{(row, seed): {column: text}} of a summary.md's per-seed table."""
    lines = text.split("\nPer seed:\n", 1)[1].strip().splitlines()
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        values = dict(zip(columns, [c.strip() for c in line.strip("|").split("|")],
                          strict=True))
        out[(values["row"], values["seed"])] = values
    return out


def test_summary_matches_csv(tiny_sweep):
    rows = sweep.read_csv(os.path.join(tiny_sweep, report.RESULTS_CSV))
    with open(os.path.join(tiny_sweep, report.SUMMARY_MD)) as f:
        text = f.read()
    for title, column in (("Final test error (%):", "test_error"),
                          ("Median over the last 10 evaluations (%):",
                           "test_error_median_last10")):
        table = grid_of(text, title)
        assert set(table) == {"20", "50"}
        for n, cells in table.items():
            assert list(cells) == ["full", "baseline"]
            for preset, cell in cells.items():
                m = re.fullmatch(r"([\d.]+) ± ([\d.]+) \(n=(\d+)\)", cell)
                assert m, cell
                errors = [100 * float(r[column]) for r in rows
                          if r["preset"] == preset and r["num_labels"] == n]
                assert int(m.group(3)) == len(errors) == 2
                assert float(m.group(1)) == pytest.approx(statistics.mean(errors), abs=0.006)
                assert float(m.group(2)) == pytest.approx(statistics.stdev(errors), abs=0.006)
    assert "At the lowest validation error" not in text  # no run holds out a validation set
    seeds = per_seed_of(text)
    assert len(seeds) == 8
    for r in rows:
        mine = seeds[(f"{r['preset']} @ {r['num_labels']}", r["seed"])]
        assert float(mine["final"]) == pytest.approx(100 * float(r["test_error"]), abs=0.006)
    assert "python -m experiments.label_sweep" in text and "--num_labels=20,50" in text
    # MNIST: its published figures, for the families swept.
    assert "full at 100 labels: 1.06 ± 0.37 (Rasmus 2015 Table 1)" in text


def test_plot_is_a_png(tiny_sweep):
    from matplotlib import image

    path = os.path.join(tiny_sweep, report.PLOT_PNG)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 400
    assert pixels.std() > 0.01  # not a blank canvas
    assert not [f for f in os.listdir(tiny_sweep) if f.startswith(".tmp-")]


def test_seeds_of_one_cell_shape_train_as_replicas(tiny_sweep):
    groups = os.path.join(tiny_sweep, "groups")
    # 2 label counts x 2 presets = 4 shapes, each training its 2 seeds in one program.
    assert len(os.listdir(groups)) == 4
    for group in os.listdir(groups):
        with open(os.path.join(groups, group, wd.GROUP_FILE)) as f:
            members = json.load(f)
        assert sorted(m["seed"] for m in members) == [0, 1]
        assert os.path.isdir(os.path.join(groups, group, "checkpoints"))


def test_rerun_trains_only_the_missing_cell(tiny_sweep, jax_cache, tmp_path):
    sweep_dir = str(tmp_path / "copy")
    shutil.copytree(tiny_sweep, sweep_dir)
    before = {r["preset"] + r["num_labels"] + r["seed"]: r
              for r in sweep.read_csv(os.path.join(sweep_dir, report.RESULTS_CSV))}
    missing = "full_labels50_seed1"
    shutil.rmtree(os.path.join(sweep_dir, missing))
    results = {name: os.path.join(sweep_dir, name, "results.json")
               for name in os.listdir(sweep_dir) if name.startswith(("full_", "baseline_"))}
    mtimes = {name: os.stat(p).st_mtime_ns for name, p in results.items()}
    assert len(mtimes) == 7

    proc = run_cli([f"--sweep_dir={sweep_dir}", *TINY_FLAGS], jax_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert trained_cells(proc.stderr) == [missing]
    assert len(re.findall(r"finished before .*skipped", proc.stderr)) == 7
    assert {name: os.stat(p).st_mtime_ns for name, p in results.items()} == mtimes
    rows = sweep.read_csv(os.path.join(sweep_dir, report.RESULTS_CSV))
    assert [r["status"] for r in rows] == ["finished"] * 8
    for r in rows:  # same seeds, same results: the retrained cell reproduces its first run
        old = before[r["preset"] + r["num_labels"] + r["seed"]]
        # The first run trained as one of 2 replicas (vmapped matmuls), the re-run alone:
        # equal up to float reordering, i.e. at most a few of the 10,000 test predictions.
        assert float(r["test_error"]) == pytest.approx(float(old["test_error"]), abs=1e-3)


def latest_test_error(workdir: str) -> tuple[float, float]:
    """(epoch, test error %) of a run's last evaluation, from its metrics.jsonl."""
    last = [r for r in wd.read_metrics(workdir) if "test_error" in r][-1]
    return last["epoch"], 100 * last["test_error"]


def test_report_only_reads_a_sweep_in_progress_and_trains_nothing(tiny_sweep, jax_cache,
                                                                   tmp_path):
    sweep_dir = str(tmp_path / "in_progress")
    shutil.copytree(tiny_sweep, sweep_dir)
    for name in (report.RESULTS_CSV, report.SUMMARY_MD, report.PLOT_PNG):
        os.remove(os.path.join(sweep_dir, name))
    running = os.path.join(sweep_dir, "full_labels50_seed1")
    os.remove(os.path.join(running, "results.json"))  # as if it were still training
    before = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
              for d, _, files in os.walk(sweep_dir) for f in files}

    proc = run_cli([f"--sweep_dir={sweep_dir}", *TINY_FLAGS, "--report_only"], jax_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert trained_cells(proc.stderr) == []
    assert "7/8 cells finished, 1 pending" in proc.stdout
    assert {p: os.stat(p).st_mtime_ns for p in before} == before  # the runs are untouched
    assert not os.path.exists(os.path.join(running, "results.json"))
    rows = sweep.read_csv(os.path.join(sweep_dir, report.RESULTS_CSV))
    assert [r["status"] for r in rows].count("pending") == 1
    with open(os.path.join(sweep_dir, report.SUMMARY_MD)) as f:
        summary = f.read()
    epoch, error = latest_test_error(running)
    assert "1 of 8 cells are still pending." in summary
    assert (f"- in progress, full at 50 labels: 1 of 1 pending seeds evaluated, at epoch "
            f"{epoch:.2f} of 1 (stops at step 20); latest test error {error:.2f} %") in summary
    assert "| 50 | " in summary and "(n=1) |" in summary  # the finished seed of full@50
    assert "--num_labels=20,50" in summary and "--report_only" not in summary
    with open(os.path.join(sweep_dir, report.PLOT_PNG), "rb") as f:
        assert f.read(8) == PNG_SIGNATURE

    # A directory that holds no sweep: one line naming the problem, nothing created.
    nothing = tmp_path / "no_sweep_here"
    proc = run_cli([f"--sweep_dir={nothing}", *TINY_FLAGS, "--report_only"], jax_cache)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "does not exist" in last and "start the sweep" in last
    assert not nothing.exists()


def test_report_refuses_a_directory_of_another_sweep(tiny_sweep):
    other = sweep.build_grid(["full"], [20], [0], layer_sizes=(784, 50, 10), epochs=2)
    with pytest.raises(config_lib.ConfigError, match="holds a run with another config"):
        sweep.report_sweep(other, tiny_sweep, report=lambda results, final: {})


def test_table_shows_progress_and_curves_before_any_cell_finishes(tiny_sweep, tmp_path):
    cells = sweep.build_grid(["full"], [20], [0, 1], layer_sizes=(784, 50, 10), epochs=1,
                             max_steps=20, steps_per_call=10, checkpoint_every=0)
    results = []
    for cell in cells:  # the tiny sweep's runs, as if both were still training
        workdir = str(tmp_path / cell.name)
        shutil.copytree(os.path.join(tiny_sweep, cell.name), workdir)
        os.remove(os.path.join(workdir, "results.json"))
        results.append(sweep.CellResult(cell, workdir, sweep.PENDING))
    outputs = sweep.write_table_outputs(results, str(tmp_path), references.PUBLISHED)
    with open(outputs["summary"]) as f:
        summary = f.read()
    (epoch, _), *_ = latests = [latest_test_error(r.workdir) for r in results]
    errors = [error for _, error in latests]
    assert epoch == pytest.approx(20 / 600, abs=1e-3)  # 20 steps of 600 per epoch
    assert errors[0] != errors[1]
    assert "| full_100 | - | 0 of 2 | - | 1.06 ± 0.37 (Rasmus 2015 Table 1) | - | - |" in summary
    assert "2 of 2 cells are still pending." in summary
    assert ("- in progress, full_100: 2 of 2 pending seeds evaluated, at epoch 0.03 of 1 "
            f"(stops at step 20); latest test error {min(errors):.2f}-{max(errors):.2f} % "
            f"(mean {statistics.fmean(errors):.2f})"
            ) in summary
    with open(outputs["curves"], "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert "plot" not in outputs  # no finished cell: no label-efficiency figure yet
    # Nothing evaluated yet: no progress line and no empty plot.
    for r in results:
        os.remove(os.path.join(r.workdir, wd.METRICS_FILE))
    os.remove(outputs["curves"])
    outputs = sweep.write_table_outputs(results, str(tmp_path), references.PUBLISHED)
    assert "curves" not in outputs and not os.path.exists(tmp_path / report.CURVES_PNG)
    with open(outputs["summary"]) as f:
        assert "in progress" not in f.read()


def test_table_summary_of_finished_rows(tmp_path):
    cells = sweep.build_table(["full_100", "baseline_100"], [2, 0, 1])
    errors = {("full_100", 2): 0.0090, ("full_100", 0): 0.0100, ("full_100", 1): 0.0122,
              ("baseline_100", 0): 0.2000}
    results = []
    for cell in cells:
        error = errors.get((cell.source_preset, cell.seed))
        if cell.source_preset == "baseline_100" and cell.seed == 2:
            results.append(sweep.CellResult(cell, str(tmp_path / cell.name), sweep.FAILED,
                                            error="RuntimeError: out of memory"))
        elif error is None:
            results.append(sweep.CellResult(cell, str(tmp_path / cell.name), sweep.PENDING))
        else:
            results.append(sweep.CellResult(cell, str(tmp_path / cell.name), sweep.FINISHED,
                                            test_error=error, steps=90_000, wall_time_s=1.0))
    summary = report.table_markdown(results, references.PUBLISHED, command="cmd", title="T")
    full = statistics.fmean([0.90, 1.00, 1.22]), statistics.stdev([0.90, 1.00, 1.22])
    assert full == pytest.approx((1.04, 0.1637), abs=1e-4)
    # The difference to the paper's mean; no metrics, so no median ('-').
    assert (f"| full_100 | {full[0]:.2f} ± {full[1]:.2f} | 3 | - | 1.06 ± 0.37 (Rasmus 2015 "
            f"Table 1) | {full[0] - 1.06:+.2f} | 90000 |") in summary
    assert ("| baseline_100 | 20.00 ± - | 1 of 3 (1 failed) | - | 21.74 ± 1.77 (Rasmus 2015 "
            "Table 1, unverified) | -1.74 | 90000 |") in summary
    # Seeds in seed order whatever the order of --seeds.
    seeds = per_seed_of(summary)
    assert list(seeds) == [("full_100", "0"), ("full_100", "1"), ("full_100", "2"),
                           ("baseline_100", "0")]
    assert [seeds[k]["final"] for k in seeds] == ["1.00", "1.22", "0.90", "20.00"]
    assert "1 of 6 cells are still pending." in summary
    assert "- `baseline_labels100_seed2`: RuntimeError: out of memory" in summary
    assert summary.startswith("# T\n") and "```\ncmd\n```" in summary
    # Sizes the results do not carry are not made up.
    assert "test-set size unknown" in summary and "10,000" not in summary


def test_failing_cell_is_reported_and_the_others_finish(tiny_sweep, jax_cache, tmp_path):
    del tiny_sweep  # its compiled programs are in the cache
    sweep_dir = str(tmp_path / "failing")
    # 60000 labels pass the config check (a multiple of 10) but MNIST has only 5421 images
    # of class 5, so that cell fails when it starts (checked against the data, a one-line
    # ConfigError or DataError); the 20-label cell still runs.
    proc = run_cli([f"--sweep_dir={sweep_dir}", "--num_labels=60000,20", "--seeds=0",
                    "--presets=baseline", *TINY_FLAGS[3:]], jax_cache)
    assert proc.returncode == 1
    failure = r"(ConfigError|DataError): num_labels=60000 .*\b6000\b.* class 5\b"
    assert re.search(r"failed: baseline_labels60000_seed0: " + failure, proc.stderr)
    assert trained_cells(proc.stderr) == ["baseline_labels60000_seed0", "baseline_labels20_seed0"]
    rows = {r["num_labels"]: r for r in
            sweep.read_csv(os.path.join(sweep_dir, report.RESULTS_CSV))}
    assert rows["60000"]["status"] == "failed" and re.match(failure, rows["60000"]["error"])
    assert rows["60000"]["test_error"] == ""
    assert rows["20"]["status"] == "finished" and float(rows["20"]["test_error"]) < 0.9
    with open(os.path.join(sweep_dir, report.SUMMARY_MD)) as f:
        summary = f.read()
    assert "| 60000 | - (n=0, 1 failed) |" in summary
    assert re.search(r"\| 20 \| [\d.]+ ± - \(n=1\) \|", summary)
    assert os.path.exists(os.path.join(sweep_dir, report.PLOT_PNG))


def test_a_bad_label_count_stops_the_sweep_before_it_starts(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.label_sweep", f"--sweep_dir={tmp_path}",
         "--num_labels=20,15", "--presets=baseline"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: num_labels=15 is not divisible")
    assert not os.listdir(tmp_path)


# ------------------------------------------------- another dataset, the protocol, row seeds

FASHION_TEST_IMAGES = 1234  # a test set of its own size: the report must read it from the data
FASHION_TRAIN_IMAGES = 1200
FASHION_EPOCHS = 12  # an evaluation per epoch: more than the 10 the median figure takes


@pytest.fixture(scope="module")
def fashion_idx(mnist, tmp_path_factory) -> str:
    """A small dataset in Fashion-MNIST's IDX layout (its images taken from MNIST), read by
    --dataset=fashion_mnist --data_source=idx: a Fashion-MNIST run as the reports see it."""
    from ladder_jax.datasets import storage

    directory = tmp_path_factory.mktemp("fashion_idx")
    arrays = {"train_images": mnist.train_images[:FASHION_TRAIN_IMAGES, ..., 0],
              "train_labels": mnist.train_labels[:FASHION_TRAIN_IMAGES].astype("uint8"),
              "test_images": mnist.test_images[:FASHION_TEST_IMAGES, ..., 0],
              "test_labels": mnist.test_labels[:FASHION_TEST_IMAGES].astype("uint8")}
    for field, name in storage.IDX_FILES.items():
        storage.write_idx(directory / name, arrays[field])
    return str(directory)


def fashion_data_flags(data_dir: str) -> list[str]:
    return ["--dataset=fashion_mnist", "--data_source=idx", f"--data_dir={data_dir}",
            "--num_validation=100"]


def fashion_cells(data_dir: str) -> list[sweep.Cell]:
    """The cells of the fashion sweep, as its command line builds them."""
    return sweep.build_grid(["full", "baseline"], [20], [0, 1], layer_sizes=(784, 50, 10),
                            epochs=FASHION_EPOCHS, steps_per_call=11, checkpoint_every=0,
                            dataset="fashion_mnist", data_source="idx", data_dir=data_dir,
                            num_validation=100)


@pytest.fixture(scope="module")
def fashion_sweep(fashion_idx, jax_cache, tmp_path_factory) -> str:
    """A finished sweep on that dataset: 20 labels x 2 seeds x 2 presets, a validation split
    of 100, 11 steps per epoch, an evaluation at each of its 12 epochs."""
    sweep_dir = str(tmp_path_factory.mktemp("sweep") / "fashion")
    proc = run_cli([f"--sweep_dir={sweep_dir}", *fashion_data_flags(fashion_idx),
                    "--num_labels=20", "--seeds=0,1", "--presets=full,baseline",
                    "--layer_sizes=784,50,10", f"--epochs={FASHION_EPOCHS}",
                    "--steps_per_call=11", "--checkpoint_every=0"], jax_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(trained_cells(proc.stderr)) == 4
    return sweep_dir


def expected_figures(workdir: str) -> dict[str, float]:
    """The protocol's figures of a run, computed here from its metrics.jsonl: final, median
    of the last 10 test errors, test error at the (first) lowest validation error, and the
    median over every evaluation (to show the window matters)."""
    import numpy as np

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "test_error" in r]
    test = np.array([r["test_error"] for r in evals])
    val = np.array([r["val_error"] for r in evals])
    return {"evaluations": len(evals), "final": test[-1],
            "median_last10": float(np.median(test[-10:])),
            "at_best_val": float(test[int(np.argmin(val))]),
            "median_all": float(np.median(test))}


def mean_std_text(values: list[float]) -> str:
    """'m ± s' of test errors % as the summaries print them."""
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def test_a_fashion_mnist_sweep_names_its_dataset_and_shows_no_mnist_figures(fashion_sweep):
    with open(os.path.join(fashion_sweep, report.SUMMARY_MD)) as f:
        text = f.read()
    assert (f"Dataset: Fashion-MNIST (`fashion_mnist`), {FASHION_TEST_IMAGES:,} test images "
            f"(every error is over all of them), {FASHION_TRAIN_IMAGES:,} training images."
            ) in text
    assert "Published test errors: none for these families on this dataset." in text
    assert "Rasmus" not in text and "Pezeshki" not in text
    assert "MNIST" not in text.replace("Fashion-MNIST", "")
    for row in sweep.read_csv(os.path.join(fashion_sweep, report.RESULTS_CSV)):
        assert (row["dataset"], int(row["test_size"])) == ("fashion_mnist", FASHION_TEST_IMAGES)


def drawn_figure(draw, monkeypatch):
    """The matplotlib figure ``draw()`` saves (kept open for the test to read)."""
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path: drawn.append(fig))
    assert draw()
    assert len(drawn) == 1
    return drawn[0]


def panel_texts(ax) -> list[str]:
    """A panel's title and legend entries, published stars last."""
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    return [ax.get_title()] + sorted(legend, key=lambda t: t.endswith("published"))


def plot_texts(results: list[sweep.CellResult], tmp_path, monkeypatch) -> list[str]:
    """The title and legend entries of the label-efficiency plot of ``results``."""
    fig = drawn_figure(lambda: plots.plot_label_efficiency(plots.points_of(results),
                                                           str(tmp_path / "plot.png")),
                       monkeypatch)
    assert len(fig.axes) == 1
    return panel_texts(fig.axes[0])


def test_plots_name_the_dataset_and_its_published_figures_only(fashion_sweep, fashion_idx,
                                                                tiny_sweep, tmp_path,
                                                                monkeypatch):
    fashion = sweep.report_sweep(fashion_cells(fashion_idx), fashion_sweep,
                                 lambda results, final: {}).results
    texts = plot_texts(fashion, tmp_path, monkeypatch)
    assert texts[0] == "Permutation-invariant Fashion-MNIST"
    assert texts[1:] == ["full (n=2 seeds)", "baseline (n=2 seeds)"]  # no published points
    mnist_cells = sweep.build_grid(["full", "baseline"], [20, 50], [0, 1],
                                   layer_sizes=(784, 50, 10), epochs=1, max_steps=20,
                                   steps_per_call=10, checkpoint_every=0)
    mnist = sweep.report_sweep(mnist_cells, tiny_sweep, lambda results, final: {}).results
    texts = plot_texts(mnist, tmp_path, monkeypatch)
    assert texts == ["Permutation-invariant MNIST", "full (n=2 seeds)", "baseline (n=2 seeds)",
                     "full, published", "baseline, published"]


def errorbars(ax) -> dict[str, tuple[list[float], list[float], list[tuple[float, float]]]]:
    """{legend label: (x, y, [(low, high)] per point)} of a panel's error bars."""
    out = {}
    for container in ax.containers:
        line, _, (bars,) = container.lines
        out[container.get_label()] = (list(line.get_xdata()), list(line.get_ydata()),
                                      [(seg[0][1], seg[1][1]) for seg in bars.get_segments()])
    return out


def test_label_figure_has_a_panel_per_dataset_with_median_and_range_over_seeds(
        tiny_sweep, fashion_sweep, jax_cache, tmp_path, monkeypatch):
    points = [p for d in (tiny_sweep, fashion_sweep)
              for p in report.points_from_csv(os.path.join(d, report.RESULTS_CSV))]
    fig = drawn_figure(lambda: plots.plot_label_efficiency(points, str(tmp_path / "f.png")),
                       monkeypatch)
    mnist_ax, fashion_ax = fig.axes
    assert panel_texts(mnist_ax)[0] == "Permutation-invariant MNIST"
    assert panel_texts(fashion_ax) == ["Permutation-invariant Fashion-MNIST",
                                       "full (n=2 seeds)", "baseline (n=2 seeds)"]
    rows = sweep.read_csv(os.path.join(tiny_sweep, report.RESULTS_CSV))
    drawn = errorbars(mnist_ax)
    for family in ("full", "baseline"):
        xs, ys, ranges = drawn[f"{family} (n=2 seeds)"]
        assert len(xs) == 2
        for x, y, (low, high), labels in zip(xs, ys, ranges, (20, 50)):
            errors = [100 * float(r["test_error"]) for r in rows
                      if r["preset"] == family and r["num_labels"] == str(labels)]
            assert len(errors) == 2 and x == pytest.approx(labels, rel=0.15)
            assert y == pytest.approx(statistics.median(errors))
            assert (low, high) == pytest.approx((min(errors), max(errors)))
    # Points that cannot share a figure: one seed twice, runs of different lengths.
    target = str(tmp_path / "refused.png")
    with pytest.raises(config_lib.ConfigError, match="seed 0, on mnist is given twice"):
        plots.plot_label_efficiency(points + [points[0]], target)
    longer = dataclasses.replace(points[0], seed=99, steps=2 * points[0].steps)
    with pytest.raises(config_lib.ConfigError, match=r"has runs of different lengths \(20, "
                                                      r"40 steps\)"):
        plots.plot_label_efficiency(points + [longer], target)
    assert not os.path.exists(target)
    # The runner: the same figure from the directories; bad input is one line.
    out = tmp_path / "label_efficiency.png"
    ok = subprocess.run([sys.executable, "-m", "experiments.label_figure",
                         f"--dirs={tiny_sweep},{fashion_sweep}", f"--output={out}"],
                        cwd=REPO, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    with open(out, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    missing = tmp_path / "no_table"
    for flags, message in (
            ([f"--dirs={missing}"], f"error: {missing}/results.csv does not exist; name a "),
            ([f"--dirs={tiny_sweep}", "--families=full,gamma"],
             (f"error: no finished cell of the family gamma in {tiny_sweep} (finished: full, "
              "baseline); check --dirs and --families")),
            ([f"--dirs={tiny_sweep},{tiny_sweep}"], f"error: {tiny_sweep} is given twice")):
        bad = subprocess.run([sys.executable, "-m", "experiments.label_figure", *flags,
                              f"--output={tmp_path / 'bad.png'}"],
                             cwd=REPO, capture_output=True, text=True, check=False)
        assert bad.returncode == 1 and "Traceback" not in bad.stderr
        assert bad.stderr.strip().splitlines()[-1].startswith(message), bad.stderr[-2000:]
    assert not os.path.exists(tmp_path / "bad.png")
    old = tmp_path / "old" / report.RESULTS_CSV
    old.parent.mkdir()
    old.write_text("preset,num_labels,seed,status,test_error\nfull,100,0,finished,0.01\n")
    with pytest.raises(config_lib.ConfigError, match="rewrite it with the sweep's or table's "
                                                      "--report_only"):
        report.points_from_csv(str(old))


def test_protocol_figures_come_from_each_runs_metrics(fashion_sweep):
    rows = sweep.read_csv(os.path.join(fashion_sweep, report.RESULTS_CSV))
    with open(os.path.join(fashion_sweep, report.SUMMARY_MD)) as f:
        text = f.read()
    expected = {(r["preset"], r["seed"]): expected_figures(r["workdir"]) for r in rows}
    for r in rows:  # per seed, in results.csv
        e = expected[(r["preset"], r["seed"])]
        assert int(r["evaluations"]) == e["evaluations"] == FASHION_EPOCHS
        assert float(r["test_error"]) == e["final"]
        assert float(r["test_error_median_last10"]) == pytest.approx(e["median_last10"],
                                                                     abs=1e-12)
        assert float(r["test_error_at_best_val"]) == pytest.approx(e["at_best_val"], abs=1e-12)
    # The window and the validation choice change the numbers of these runs.
    assert any(e["median_last10"] != e["median_all"] for e in expected.values())
    assert any(e["at_best_val"] != e["final"] for e in expected.values())
    # Per seed and per row, in summary.md.
    seeds = per_seed_of(text)
    for (preset, seed), e in expected.items():
        mine = seeds[(f"{preset} @ 20", seed)]
        assert mine["median last 10"] == f"{100 * e['median_last10']:.2f}"
        assert mine["at best val"] == f"{100 * e['at_best_val']:.2f}"
        assert mine["evaluations"] == str(FASHION_EPOCHS)
    for title, figure in (("Median over the last 10 evaluations (%):", "median_last10"),
                          ("At the lowest validation error (%):", "at_best_val")):
        for preset in ("full", "baseline"):
            values = [100 * expected[(preset, s)][figure] for s in ("0", "1")]
            assert grid_of(text, title)["20"][preset] == f"{mean_std_text(values)} (n=2)"
    assert "'-' here: no run holds out a validation split" not in text


def test_table_report_gives_the_same_figures(fashion_sweep, fashion_idx, tmp_path):
    results = sweep.report_sweep(fashion_cells(fashion_idx), fashion_sweep,
                                 lambda results, final: {}).results
    outputs = sweep.write_table_outputs(results, str(tmp_path), references.PUBLISHED)
    for kind in ("curves", "plot"):  # the table's curves and its label-efficiency figure
        with open(outputs[kind], "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
    with open(outputs["summary"]) as f:
        table = f.read()
    with open(os.path.join(fashion_sweep, report.SUMMARY_MD)) as f:
        sweep_text = f.read()
    assert f"Fashion-MNIST (`fashion_mnist`), {FASHION_TEST_IMAGES:,} test images" in table
    # full_100 and baseline_100 have published MNIST figures; this is not MNIST.
    assert "Rasmus" not in table and "| published |" not in table
    assert "Published test errors: none for these rows on this dataset." in table
    assert ("| row | final | n | median last 10 | at best val | steps |") in table
    for preset, row in (("full", "full_100"), ("baseline", "baseline_100")):
        e = [expected_figures(os.path.join(fashion_sweep, f"{preset}_labels20_seed{s}"))
             for s in (0, 1)]
        figures = [mean_std_text([100 * x[k] for x in e])
                   for k in ("final", "median_last10", "at_best_val")]
        steps = 11 * FASHION_EPOCHS
        assert (f"| {row} | {figures[0]} | 2 | {figures[1]} | {figures[2]} | {steps} |"
                ) in table
    # Each seed's figures are those the sweep's own summary gives.
    by_sweep = {(row.split(" @ ")[0], seed): {k: v for k, v in cells.items() if k != "row"}
                for (row, seed), cells in per_seed_of(sweep_text).items()}
    by_table = {(row.split("_")[0], seed): {k: v for k, v in cells.items() if k != "row"}
                for (row, seed), cells in per_seed_of(table).items()}
    assert by_table == by_sweep and len(by_table) == 4


def test_rows_with_seeds_of_their_own_resume_the_cells_of_a_table(fashion_idx, jax_cache,
                                                                   tmp_path):
    table_dir = str(tmp_path / "table")
    common = [f"--table_dir={table_dir}", *fashion_data_flags(fashion_idx), "--max_steps=1",
              "--steps_per_call=1", "--checkpoint_every=0"]
    proc = run_cli([*common, "--rows=baseline_100", "--seeds=0"], jax_cache,
                   "experiments.paper_tables")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert trained_cells(proc.stderr) == ["baseline_labels100_seed0"]
    # The same directory with rows that name their seeds: the finished cell is kept. With
    # --noreplicas the row's two pending seeds train one after the other, each in its own
    # workdir (no group checkpoint).
    rows = ["--rows=baseline_100:0-2,gamma_100:3", "--seeds=0", "--noreplicas"]
    proc = run_cli([*common, *rows], jax_cache, "experiments.paper_tables")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert trained_cells(proc.stderr) == ["baseline_labels100_seed1", "baseline_labels100_seed2",
                                          "gamma_labels100_seed3"]
    assert "one of 2 replicas" not in proc.stderr and not os.path.exists(f"{table_dir}/groups")
    assert re.findall(r"cell (\S+): finished before", proc.stderr) == [
        "baseline_labels100_seed0"]
    csv_rows = sweep.read_csv(os.path.join(table_dir, report.RESULTS_CSV))
    assert [(r["preset"], r["num_labels"], r["seed"], r["status"]) for r in csv_rows] == [
        ("baseline", "100", "0", "finished"), ("baseline", "100", "1", "finished"),
        ("baseline", "100", "2", "finished"), ("gamma", "100", "3", "finished")]
    assert [os.path.basename(r["workdir"]) for r in csv_rows] == [
        "baseline_labels100_seed0", "baseline_labels100_seed1", "baseline_labels100_seed2",
        "gamma_labels100_seed3"]
    # --report_only over every row, one of them with a seed still to train.
    proc = run_cli([*common, "--rows=baseline_100:0-2,gamma_100:3+4", "--report_only"],
                   jax_cache, "experiments.paper_tables")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert trained_cells(proc.stderr) == []
    assert "4/5 cells finished, 1 pending" in proc.stdout
    with open(os.path.join(table_dir, report.SUMMARY_MD)) as f:
        summary = f.read()
    assert re.search(r"\| baseline_100 \| [\d.]+ ± [\d.]+ \| 3 \|", summary)
    assert re.search(r"\| gamma_100 \| [\d.]+ ± - \| 1 of 2 \|", summary)
    assert f"{FASHION_TEST_IMAGES:,} test images" in summary and "Rasmus" not in summary


# ----------------------------------------------------------------------------- in-process


def test_grid_uses_the_papers_settings_per_label_count():
    cells = sweep.build_grid(["full", "gamma", "baseline", "full"], ["50", 20, 1000, "-1"],
                             [0, 1, 0], epochs=3, batch_size=50)
    assert len(cells) == 4 * 3 * 2
    assert [c.num_labels for c in cells[::6]] == [50, 20, 1000, "all"]
    source = {(c.preset, c.num_labels): c.source_preset for c in cells}
    assert source[("full", 50)] == "full_50"
    assert source[("full", 20)] == "full_100"
    assert source[("full", 1000)] == "full_1000"
    assert source[("full", "all")] == "full_all"
    assert source[("gamma", 1000)] == "gamma_100"
    assert source[("baseline", "all")] == "baseline_all"
    assert source[("baseline", 20)] == "baseline_100"
    cell = next(c for c in cells if c.name == "full_labels1000_seed1")
    assert cell.config.model == config_lib.PRESETS["full_1000"].model
    assert (cell.config.num_labels, cell.config.seed) == (1000, 1)
    assert (cell.config.epochs, cell.config.batch_size) == (3, 50)
    assert next(c for c in cells if c.name == "full_labelsall_seed0")
    with pytest.raises(config_lib.ConfigError, match="unknown preset family 'ful'"):
        sweep.build_grid(["ful"], [100], [0])
    with pytest.raises(config_lib.ConfigError, match="num_labels"):
        sweep.build_grid(["full"], ["lots"], [0])
    with pytest.raises(config_lib.ConfigError, match="num_labels=15 is not divisible"):
        sweep.build_grid(["full"], [20, 15], [0])


def test_table_rows_may_name_their_own_seeds():
    cells = sweep.build_table(["full_100:0-2", "baseline_100", "gamma_100:4+1",
                               "full_100:1-3"], [7, 5], epochs=3)
    assert [c.name for c in cells] == (
        [f"full_labels100_seed{s}" for s in (0, 1, 2, 3)]
        + [f"baseline_labels100_seed{s}" for s in (7, 5)]
        + [f"gamma_labels100_seed{s}" for s in (4, 1)])
    assert {c.config.epochs for c in cells} == {3}
    assert [c.config.seed for c in cells] == [c.seed for c in cells]
    assert {c.source_preset for c in cells} == {"full_100", "baseline_100", "gamma_100"}
    # The seeds of one row share a row_key; other rows do not.
    keys = {c.source_preset: c.row_key for c in cells}
    assert all(c.row_key == keys[c.source_preset] for c in cells) and len(set(keys.values())) == 3
    assert sweep.split_row(" amlp_100 : 2 - 4 + 9 ") == ("amlp_100", [2, 3, 4, 9])
    for spec in ("full_100:3-1", "full_100:x", "full_100:", "full_100:0-", "full_100:-1",
                 "full_100:1.5", "full_100:\uff11", f"full_100:0-{sweep.MAX_ROW_SEEDS}"):
        with pytest.raises(config_lib.ConfigError, match="row 'full_100:") as raised:
            sweep.build_table([spec], [0])
        assert "\n" not in str(raised.value)
    with pytest.raises(config_lib.ConfigError, match="unknown preset 'nope'"):
        sweep.build_table(["nope:0"], [0])
    with pytest.raises(config_lib.ConfigError, match="row full_100 has no seeds"):
        sweep.build_table(["gamma_100:0", "full_100"], [])


def test_layer_sizes_keep_bottom_and_top_settings():
    cells = sweep.build_grid(["full", "gamma", "baseline"], [100], [0],
                             layer_sizes=(784, 50, 10))
    models = {c.preset: c.config.model for c in cells}
    assert models["full"].layer_sizes == (784, 50, 10)
    assert models["full"].denoise_weights == (1000.0, 10.0, 0.1)
    assert models["gamma"].denoise_weights == (0.0, 0.0, 0.5)
    assert models["baseline"].denoise_weights == (0.0, 0.0, 0.0)
    assert models["baseline"].noise_std == (0.3, 0.5, 0.5)
    deep = sweep.build_grid(["gamma"], [100], [0], layer_sizes=(784,) + (20,) * 8 + (10,))
    assert deep[0].config.model.denoise_weights == (0.0,) * 9 + (0.5,)


def test_run_group_gets_same_shape_cells_and_a_failing_group_is_recorded(mnist, tmp_path):
    cells = sweep.build_grid(["full", "baseline"], [100, 1000], [0, 1, 2], max_steps=1)
    groups = []

    def fake_group(group, data):
        assert data is mnist
        groups.append([c.name for c, _ in group])
        if group[0][0].preset == "baseline" and group[0][0].num_labels == 1000:
            raise RuntimeError("replicas ran out of memory\nsecond line")
        return [sweep.CellResult(c, w, sweep.FINISHED, test_error=0.01 * (1 + c.seed),
                                 steps=1, wall_time_s=1.0, ran=True) for c, w in group]

    outcome = sweep.run_sweep(
        cells, str(tmp_path), dataset=mnist, run_group=fake_group,
        report=lambda results, final: sweep.write_outputs(results, str(tmp_path), plot=False))
    assert groups == [[f"{p}_labels{n}_seed{s}" for s in (0, 1, 2)]
                      for n in (100, 1000) for p in ("full", "baseline")]
    assert [r.cell.name for r in outcome.failed] == [f"baseline_labels1000_seed{s}"
                                                    for s in (0, 1, 2)]
    assert outcome.failed[0].error == "RuntimeError: replicas ran out of memory"
    assert len(outcome.ran) == 12
    with open(outcome.outputs["summary"]) as f:
        summary = f.read()
    assert "| 100 | 2.00 ± 1.00 (n=3) | 2.00 ± 1.00 (n=3) |" in summary
    assert "| 1000 | 2.00 ± 1.00 (n=3) | - (n=0, 3 failed) |" in summary


def test_without_matplotlib_the_csv_and_summary_are_still_written(tmp_path, monkeypatch,
                                                                   caplog):
    cell = sweep.build_grid(["full"], [100], [0])[0]
    results = [sweep.CellResult(cell, str(tmp_path / cell.name), sweep.FINISHED,
                                test_error=0.02, steps=10, wall_time_s=3.0)]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with caplog.at_level(logging.WARNING):
        outputs = sweep.write_outputs(results, str(tmp_path))
    assert set(outputs) == {"csv", "summary"}
    assert not os.path.exists(tmp_path / report.PLOT_PNG)
    assert "pip install 'ladder_jax[plots]'" in caplog.text
    with open(outputs["summary"]) as f:
        assert "| 100 | 2.00 ± - (n=1) |" in f.read()


def test_a_sweep_stopped_by_sigterm_resumes_to_the_uninterrupted_results(tiny_sweep, jax_cache,
                                                                          tmp_path):
    """SIGTERM once the first cells finished (so between cells or inside the next group):
    one line, exit 143; the same command finishes the sweep with the numbers of one that
    was never stopped."""
    sweep_dir = str(tmp_path / "stopped")
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.label_sweep", f"--compilation_cache_dir={jax_cache}",
         f"--sweep_dir={sweep_dir}", *TINY_FLAGS], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if any(os.path.exists(os.path.join(sweep_dir, d, wd.RESULTS_FILE))
               for d in (os.listdir(sweep_dir) if os.path.isdir(sweep_dir) else [])):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert re.match(r"^interrupted.*; the same command resumes$", stderr.strip().splitlines()[-1])
    # Cells not started yet have no directory, so count finished cells against the
    # uninterrupted sweep's: a stop between two groups leaves no unfinished directory.
    def finished(root):
        return {d for d in os.listdir(root)
                if os.path.exists(os.path.join(root, d, wd.RESULTS_FILE))}
    assert finished(sweep_dir) < finished(tiny_sweep)  # it stopped before the end
    done = run_cli([f"--sweep_dir={sweep_dir}", *TINY_FLAGS], jax_cache)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in sorted(os.listdir(tiny_sweep)):
        results = os.path.join(tiny_sweep, name, wd.RESULTS_FILE)
        if os.path.exists(results):
            assert wd.read_json(os.path.join(sweep_dir, name, wd.RESULTS_FILE))[
                "final_test_error"] == wd.read_json(results)["final_test_error"], name


# ------------------------------------------------- your data, your splits: npz + manifests

NPZ_TRAIN_PER_CLASS, NPZ_TEST_PER_CLASS = 100, 50


@pytest.fixture(scope="module")
def digits_npz(mnist, tmp_path_factory) -> str:
    """Real MNIST rows saved as a user dataset: 100 training and 50 test images per class."""
    import numpy as np

    def rows(labels, n):
        return np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(10)]))

    tr = rows(mnist.train_labels, NPZ_TRAIN_PER_CLASS)
    te = rows(mnist.test_labels, NPZ_TEST_PER_CLASS)
    path = str(tmp_path_factory.mktemp("user_data") / "digits.npz")
    np.savez(path, x_train=mnist.train_images[tr], y_train=mnist.train_labels[tr],
             x_test=mnist.test_images[te], y_test=mnist.test_labels[te])
    return path


def npz_flags(path: str, sweep_dir: str) -> list[str]:
    """A 2 labels x 2 seeds x 2 presets sweep of the npz data, 10 steps per cell."""
    return [f"--sweep_dir={sweep_dir}", f"--dataset=npz:{path}", "--num_labels=20,50",
            "--seeds=0,1", "--presets=full,baseline", "--layer_sizes=784,32,10", "--epochs=1",
            "--steps_per_call=5", "--checkpoint_every=0"]


@pytest.fixture(scope="module")
def npz_sweep(digits_npz, jax_cache, tmp_path_factory) -> str:
    """That sweep, finished, each seed drawing its own rows."""
    sweep_dir = str(tmp_path_factory.mktemp("sweep") / "npz")
    proc = run_cli(npz_flags(digits_npz, sweep_dir), jax_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(trained_cells(proc.stderr)) == 8
    return sweep_dir


def test_npz_sweep_without_a_manifest_reports_its_own_data(npz_sweep, digits_npz):
    rows = sweep.read_csv(os.path.join(npz_sweep, report.RESULTS_CSV))
    assert list(rows[0]) == list(report.CSV_COLUMNS)
    assert sorted(os.path.basename(r["workdir"]) for r in rows) == sorted(
        f"{p}_labels{n}_seed{s}" for p in ("full", "baseline") for n in (20, 50) for s in (0, 1))
    for r in rows:
        assert r["status"] == "finished" and int(r["steps"]) == 10
        assert (r["dataset"], r["test_size"]) == (f"npz:{digits_npz}", "500")
        assert (r["splits_file"], r["splits_sha256"]) == ("", "")
        assert 0.0 < float(r["test_error"]) < 0.95
    with open(os.path.join(npz_sweep, report.SUMMARY_MD)) as f:
        text = f.read()
    assert (f"Dataset: `npz:{digits_npz}`, 500 test images (every error is over all of them), "
            "1,000 training images.") in text
    assert ("Splits: labeled rows drawn by each seed (class-balanced), in every row; no split "
            "manifest (--splits).") in text
    assert "Published test errors: none for these families on this dataset." in text
    assert "Rasmus" not in text and "Pezeshki" not in text and "MNIST" not in text
    assert set(grid_of(text, "Final test error (%):")) == {"20", "50"}


def unbalanced_manifest(npz: str, path) -> dict:
    """A manifest of 20 labeled rows that are not class-balanced (4 of class 0, 2 each of
    classes 1-8, none of 9) and a validation split of 10 rows per class, written to
    ``path``; returns it."""
    import numpy as np

    from ladder_jax import datasets
    from ladder_jax.datasets import splits

    data = datasets.load(f"npz:{npz}")
    by_class = [np.flatnonzero(data.train_labels == c) for c in range(10)]
    labeled = sorted([*by_class[0][:4], *(i for c in range(1, 9) for i in by_class[c][:2])])
    validation = sorted(i for c in range(10) for i in by_class[c][-10:])
    manifest = splits.manifest(data, labeled, validation, seed=None)
    path.write_text(json.dumps(manifest))
    return manifest


def test_npz_sweep_with_a_manifest_per_label_count(npz_sweep, digits_npz, jax_cache, tmp_path):
    from ladder_jax.datasets import splits

    m20 = unbalanced_manifest(digits_npz, tmp_path / "m20.json")
    m50_path = tmp_path / "m50.json"  # a run's own manifest: seed 1's rows at 50 labels
    shutil.copy(os.path.join(npz_sweep, "full_labels50_seed1", splits.FILE), m50_path)
    manifests = {20: (str(tmp_path / "m20.json"), m20),
                 50: (str(m50_path), json.loads(m50_path.read_text()))}
    sha = {n: splits.file_sha256(path) for n, (path, _) in manifests.items()}
    sweep_dir = str(tmp_path / "with_manifests")
    proc = run_cli([*npz_flags(digits_npz, sweep_dir),
                    f"--splits=20={manifests[20][0]},50={manifests[50][0]}"], jax_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(trained_cells(proc.stderr)) == 8
    assert "not class-balanced (4, 2, 2, 2, 2, 2, 2, 2, 2, 0 per class)" in proc.stderr
    rows = sweep.read_csv(os.path.join(sweep_dir, report.RESULTS_CSV))
    assert len(rows) == 8
    for r in rows:
        n = int(r["num_labels"])
        path, manifest = manifests[n]
        assert r["status"] == "finished"
        assert (r["splits_file"], r["splits_sha256"]) == (path, sha[n])
        assert os.path.basename(r["workdir"]) == (
            f"{r['preset']}_labels{n}_splits{sha[n][:8]}_seed{r['seed']}")
        # Every seed trained on the manifest's rows.
        written = wd.read_json(os.path.join(r["workdir"], splits.FILE))
        assert written["labeled"] == manifest["labeled"]
        assert written["validation"] == manifest["validation"]
        cfg = wd.read_json(os.path.join(r["workdir"], wd.CONFIG_FILE))
        assert (cfg["num_labels"], cfg["num_validation"]) == (n, len(manifest["validation"]))
        assert cfg["splits"] == path and cfg["splits_sha256"] == sha[n]
        assert (r["test_error_at_best_val"] != "") == (n == 20)  # m20 holds out 100 rows
    # The seeds still differ (init, order, noise) on the same rows.
    for preset in ("full", "baseline"):
        metrics = [wd.read_metrics(os.path.join(sweep_dir, f"{preset}_labels20_splits"
                                                f"{sha[20][:8]}_seed{s}")) for s in (0, 1)]
        assert [m.get("loss") for m in metrics[0]] != [m.get("loss") for m in metrics[1]]
    # Seed 1 on its own rows, named by a manifest: the same numbers as the sweep without it.
    before = {(r["preset"], r["num_labels"], r["seed"]): r["test_error"] for r in
              sweep.read_csv(os.path.join(npz_sweep, report.RESULTS_CSV))}
    for r in rows:
        if r["num_labels"] == "50" and r["seed"] == "1":
            assert r["test_error"] == before[(r["preset"], "50", "1")]
    with open(os.path.join(sweep_dir, report.SUMMARY_MD)) as f:
        text = f.read()
    for preset in ("full", "baseline"):
        assert (f"- {preset} @ 20: manifest `m20.json` (sha256 {sha[20]}), 20 labeled and 100 "
                "validation rows, the same for every seed") in text
        assert (f"- {preset} @ 50: manifest `m50.json` (sha256 {sha[50]}), 50 labeled and 0 "
                "validation rows, the same for every seed") in text
    assert "drawn by each seed" not in text
    assert f"Dataset: `npz:{digits_npz}`, 500 test images" in text
    assert "At the lowest validation error (%):" in text
    assert "--splits=20=" in text  # the command
    # --report_only with the same flags reads the same cells.
    proc = run_cli([*npz_flags(digits_npz, sweep_dir), "--report_only",
                    f"--splits=20={manifests[20][0]},50={manifests[50][0]}"], jax_cache)
    assert proc.returncode == 0 and "8/8 cells finished" in proc.stdout, proc.stderr[-3000:]


def write_manifest(path, labeled: int, validation: int = 0, num_train: int = 1000) -> str:
    """A manifest of MNIST-named data (form only: nothing trains on it) at ``path``."""
    from ladder_jax.datasets import splits

    path.write_text(json.dumps({"format": splits.FORMAT, "dataset": "mnist",
                                "num_train": num_train, "labeled": list(range(labeled)),
                                "validation": list(range(labeled, labeled + validation))}))
    return str(path)


def test_manifests_by_cell_shape_in_grids_and_tables(tmp_path):
    from ladder_jax.datasets import DataError, splits

    m100, m20 = write_manifest(tmp_path / "m100.json", 100, 50), write_manifest(
        tmp_path / "m20.json", 20)
    cells = sweep.build_grid(["full", "baseline"], [20, 100], [0, 1],
                             splits=sweep.parse_splits([f"100={m100}", f"full_20={m20}"]))
    by_name = {c.name: c for c in cells}
    sha = splits.file_sha256(m100)[:8]
    assert sorted(by_name) == sorted(
        ["baseline_labels20_seed0", "baseline_labels20_seed1",  # no manifest: names as before
         f"full_labels20_splits{splits.file_sha256(m20)[:8]}_seed0",
         f"full_labels20_splits{splits.file_sha256(m20)[:8]}_seed1"]
        + [f"{p}_labels100_splits{sha}_seed{s}" for p in ("full", "baseline") for s in (0, 1)])
    cfg = by_name[f"full_labels100_splits{sha}_seed1"].config
    assert (cfg.splits, cfg.num_labels, cfg.num_validation, cfg.seed) == (m100, 100, 50, 1)
    assert by_name["baseline_labels20_seed0"].config.splits is None
    assert len({c.row_key for c in cells}) == 4  # the seeds of a shape still train together
    # A family's own manifest wins over its label count's.
    cells = sweep.build_grid(["full", "baseline"], [100], [0],
                             splits={"100": m100, "baseline_100": write_manifest(
                                 tmp_path / "b100.json", 100)})
    assert [c.config.splits for c in cells] == [m100, str(tmp_path / "b100.json")]
    # A manifest's count that is no multiple of the class count: its rows say which.
    odd = write_manifest(tmp_path / "m17.json", 17)
    cell = sweep.build_grid(["full"], [17], [0], splits={"17": odd})[0]
    assert cell.name.startswith("full_labels17_splits") and cell.config.num_labels == 17
    # Tables: a row's name or a label count.
    table = sweep.build_table(["full_100:0-1", "baseline_100", "full_1000"], [0],
                              splits={"100": m100})
    assert [c.name for c in table] == [f"full_labels100_splits{sha}_seed0",
                                       f"full_labels100_splits{sha}_seed1",
                                       f"baseline_labels100_splits{sha}_seed0",
                                       "full_labels1000_seed0"]
    table = sweep.build_table(["full_100", "baseline_100"], [0], splits={"full_100": m100})
    assert [c.config.splits for c in table] == [m100, None]
    # 'all': the manifest labels every training row outside its validation list.
    every = write_manifest(tmp_path / "every.json", 950, 50)
    cell = sweep.build_grid(["full"], ["all"], [0], splits={"all": every})[0]
    assert cell.num_labels == "all" and cell.config.num_labels == 950
    # One line each, before anything runs.
    refused = [
        (lambda: sweep.parse_splits(["100"]), "must be SHAPE=FILE"),
        (lambda: sweep.parse_splits(["100=a", "100=b"]), "names 100 twice"),
        (lambda: sweep.build_grid(["full"], [100], [0], splits={"50": m100}),
         "this sweep has no cell shape '50'; name one of 100, full_100"),
        (lambda: sweep.build_grid(["full"], [100], [0], splits={"gamma_100": m100}),
         "no cell shape 'gamma_100'"),
        (lambda: sweep.build_table(["full_100"], [0], splits={"baseline_100": m100}),
         "this table has no cell shape 'baseline_100'"),
        (lambda: sweep.build_grid(["full"], [20], [0], splits={"20": m100}),
         "labels 100 rows but the cells of full at 20 labels train on 20"),
        (lambda: sweep.build_table(["full_100"], [0], splits={"full_100": m20}),
         "labels 20 rows but the cells of full at 100 labels train on 100"),
        (lambda: sweep.build_grid(["full"], ["all"], [0], splits={"all": m100}),
         "labels every training row outside its validation list"),
        (lambda: sweep.build_grid(["full"], [100], [0], splits={"100": str(tmp_path / "no")}),
         "cannot be read"),
        (lambda: sweep.build_grid(["full"], [100], [0], splits="m.json"),
         "must map cell shapes to manifest files"),
    ]
    for build, message in refused:
        with pytest.raises((config_lib.ConfigError, DataError)) as raised:
            build()
        assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_table_reports_each_rows_manifest(tmp_path):
    from ladder_jax.datasets import splits

    m100 = write_manifest(tmp_path / "m100.json", 100)
    cells = sweep.build_table(["full_100:0-1", "baseline_100"], [0], splits={"full_100": m100})
    results = [sweep.CellResult(c, str(tmp_path / c.name), sweep.FINISHED, test_error=0.1,
                                steps=10, wall_time_s=1.0) for c in cells]
    outputs = sweep.write_table_outputs(results, str(tmp_path), references.PUBLISHED,
                                        plot=False)
    with open(outputs["summary"]) as f:
        summary = f.read()
    sha = splits.file_sha256(m100)
    assert ("Splits (the labeled and validation rows of each row):\n\n"
            f"- full_100: manifest `m100.json` (sha256 {sha}), 100 labeled and 0 validation "
            "rows, the same for every seed\n"
            "- baseline_100: labeled rows drawn by each seed (class-balanced)\n") in summary
    rows = sweep.read_csv(outputs["csv"])
    assert [(r["splits_file"], r["splits_sha256"]) for r in rows] == [(m100, sha)] * 2 + [
        ("", "")]


def test_a_manifest_of_another_label_count_stops_the_table_before_it_starts(tmp_path):
    m20 = write_manifest(tmp_path / "m20.json", 20)
    table_dir = tmp_path / "table"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.paper_tables", f"--table_dir={table_dir}",
         "--rows=full_100,baseline_100", f"--splits=full_100={m20}"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: --splits=full_100={m20} labels 20 rows but the cells of full at "
                    "100 labels train on 100; give a manifest of 100 labeled rows, or sweep "
                    f"--num_labels=20 with --splits=20={m20}")
    assert not table_dir.exists()


def test_a_manifest_at_all_labels_fits_data_whose_classes_differ_in_size(mnist, tmp_path):
    from ladder_jax.train import job

    every = write_manifest(tmp_path / "every.json", 59000, 1000, num_train=60000)
    cell = sweep.build_grid(["full"], ["all"], [0], splits={"all": every})[0]
    # 59000 labels would take 5900 of each class; MNIST has 5421 of class 5. The manifest
    # says which rows, so only its rows are checked (when the job is built).
    job.check_fits(cell.config, mnist)
    with pytest.raises(config_lib.ConfigError, match="class 5"):
        job.check_fits(cell.config.replace(splits=None, splits_sha256=None), mnist)
