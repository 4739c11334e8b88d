"""Choosing a setting on the validation split (ladder_jax.sweep.choice and
experiments.choose_on_validation): real tiny sweeps on real MNIST rows, one per candidate
noise level, compared by their final validation errors; bad candidates are one line."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pytest

from ladder_jax import sweep
from ladder_jax.errors import ConfigError
from ladder_jax.sweep import choice
from ladder_jax.train import workdir as wd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISES = (0.3, 0.15)


def write_csv(path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def tiny_grid(noise: float, *, num_validation: int = 200, num_labels: int = 20):
    return sweep.build_grid(["full"], [num_labels], [0, 1], layer_sizes=(784, 50, 10),
                            model_changes={"noise_std": (noise,) * 3}, epochs=1, max_steps=20,
                            steps_per_call=10, checkpoint_every=0,
                            num_validation=num_validation)


def run_tiny(cells, sweep_dir: str, dataset) -> str:
    outcome = sweep.run_sweep(cells, sweep_dir, dataset=dataset,
                              run_group=sweep.run_cells_as_replicas,
                              report=lambda results, final: sweep.write_outputs(
                                  results, sweep_dir, plot=False))
    assert not outcome.failed
    return sweep_dir


@pytest.fixture(scope="module")
def candidates(mnist_6000, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("grid")
    return [run_tiny(tiny_grid(noise), str(root / f"noise{noise}"), mnist_6000)
            for noise in NOISES]


def test_candidates_are_compared_by_their_final_validation_errors(candidates):
    found = choice.compare(candidates)
    assert [c.directory for c in found] == candidates
    assert [c.setting for c in found] == [{"model.noise_std": [n] * 3} for n in NOISES]
    for c in found:
        assert c.seeds == [0, 1]
        for seed, error in zip(c.seeds, c.val_errors):
            results = wd.read_results(os.path.join(c.directory, f"full_labels20_seed{seed}"))
            assert error == results["final_val_error"] and results["final_val_error"] is not None
    best = choice.choose(found)
    assert found[best].val.mean == min(c.val.mean for c in found)
    text = choice.choice_markdown(found)
    assert f"Chosen: `{found[best].directory}`." in text
    chosen_row = [line for line in text.splitlines() if line.endswith("| **yes** |")]
    assert len(chosen_row) == 1 and found[best].directory in chosen_row[0]
    # Each row's numbers are its validation errors, and no column holds a test error.
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(table) == len(found)
    for line, c in zip(table, found):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[0] == f"`{c.directory}`"
        assert cells[2] == c.val.text() and cells[3] == str(len(c.seeds))
        assert cells[4] == ", ".join(f"{s}: {100 * e:.2f}" for s, e in zip(c.seeds,
                                                                          c.val_errors))
    assert "test" not in text.splitlines()[4].lower()  # the header


def test_the_runner_writes_the_comparison(candidates, tmp_path):
    out = tmp_path / "choice.md"
    proc = subprocess.run([sys.executable, "-m", "experiments.choose_on_validation",
                           f"--dirs={','.join(candidates)}", f"--output={out}"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_text() == proc.stdout
    assert "| `model.noise_std` | val error | n | per seed | chosen |" in proc.stdout
    assert "python -m experiments.choose_on_validation --dirs=" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "experiments.choose_on_validation",
                          f"--dirs={candidates[0]}"], cwd=REPO, capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: give at least two sweep directories to choose between")


def test_candidates_that_are_not_comparable_are_refused(candidates, mnist_6000, tmp_path):
    no_val = run_tiny(tiny_grid(0.3, num_validation=0), str(tmp_path / "no_val"), mnist_6000)
    with pytest.raises(ConfigError, match="has no validation error: settings are chosen on a "
                                          "validation split"):
        choice.compare([candidates[0], no_val])
    other_labels = run_tiny(tiny_grid(0.15, num_labels=50), str(tmp_path / "labels50"),
                            mnist_6000)
    with pytest.raises(ConfigError, match=r"hold runs of other label counts \(num_labels 20 "
                                          r"vs 50\); candidates must differ in their "
                                          "settings only"):
        choice.compare([candidates[0], other_labels])
    with pytest.raises(ConfigError, match="does not exist; name the directory of a finished"):
        choice.compare([candidates[0], str(tmp_path / "nothing")])
    with pytest.raises(ConfigError, match="is given twice; name each candidate once"):
        choice.compare([candidates[0], candidates[1], candidates[0]])
    # Other seeds draw other validation rows: not comparable.
    one_seed = tmp_path / "one_seed"
    shutil.copytree(candidates[1], one_seed, symlinks=True)
    rows = sweep.read_csv(one_seed / "results.csv")
    write_csv(one_seed / "results.csv", [r for r in rows if r["seed"] == "0"])
    with pytest.raises(ConfigError, match="hold other seeds; give every candidate the same "
                                          "--seeds"):
        choice.compare([candidates[0], str(one_seed)])
    # A sweep still running, and a results.csv of an older version: one line each.
    write_csv(one_seed / "results.csv", [rows[0], rows[1] | {"status": "pending"}])
    with pytest.raises(ConfigError, match="has 1 of 2 cells finished; finish its sweep"):
        choice.compare([candidates[0], str(one_seed)])
    write_csv(one_seed / "results.csv", [{k: v for k, v in r.items() if k != "val_error"}
                                         for r in rows])
    with pytest.raises(ConfigError, match="rewrite it with the sweep's --report_only"):
        choice.compare([candidates[0], str(one_seed)])
    # Two settings in one directory: not one candidate.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    rows = []
    for source in candidates:
        name = f"{os.path.basename(source)}_cell"
        os.symlink(os.path.join(source, "full_labels20_seed0"), mixed / name)
        rows.append(next(r for r in sweep.read_csv(os.path.join(source, "results.csv"))
                         if r["seed"] == "0") | {"workdir": str(mixed / name)})
    write_csv(mixed / "results.csv", rows)
    with pytest.raises(ConfigError, match="holds cells of different settings"):
        choice.compare([str(mixed), candidates[0]])
