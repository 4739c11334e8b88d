"""Choosing settings on a validation split: several sweeps (one per candidate setting, each
run with --num_validation > 0) compared by their final validation errors, the test set never
looked at.

    candidates = compare(["runs/grid/noise0.3", "runs/grid/noise0.15"])
    best = candidates[choose(candidates)]
    text = choice_markdown(candidates)

The candidates must be runs of one dataset, label count and validation size, so that only
their settings differ; the settings shown are the config fields that differ between them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from ladder_jax.errors import ConfigError
from ladder_jax.sweep.report import RESULTS_CSV, Stat, read_csv
from ladder_jax.sweep.run import FINISHED
from ladder_jax.train import workdir as wd

#: The config field that differs between the cells of one candidate (not its setting).
_PER_CELL = ("seed",)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One candidate setting: its sweep directory, its config fields that differ from the
    other candidates' ('model.noise_std': value), and its cells' final validation errors
    (fractions, seed order) with their mean ± std in %."""

    directory: str
    setting: dict[str, Any]
    seeds: list[int]
    val_errors: list[float]

    @property
    def val(self) -> Stat:
        return Stat.of(self.val_errors)


def _finished_cells(directory: str) -> list[dict[str, str]]:
    """The cells of a finished sweep (ConfigError, one line, unless every cell finished and
    has a validation error)."""
    path = os.path.join(directory, RESULTS_CSV)
    try:
        rows = read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; name the directory of a finished sweep "
                          "(one per candidate setting)") from None
    if not rows or not {"status", "seed", "val_error", "workdir"} <= set(rows[0]):
        raise ConfigError(f"{path} is not a results.csv of this ladder_jax with validation "
                          "errors; rewrite it with the sweep's --report_only")
    finished = [r for r in rows if r["status"] == FINISHED]
    if len(finished) < len(rows):
        raise ConfigError(f"{directory} has {len(finished)} of {len(rows)} cells finished; "
                          "finish its sweep (run its command again) before choosing")
    missing = [r["workdir"] for r in rows if r["val_error"] == ""]
    if missing:
        raise ConfigError(f"{missing[0]} has no validation error: settings are chosen on a "
                          "validation split, so run the candidates with --num_validation > 0")
    return finished


def compare(directories: Sequence[str]) -> list[Candidate]:
    """The candidates in the order given. ConfigError (one line) for a directory given twice,
    a sweep not finished, cells without a validation split, a directory of several settings,
    or candidates of other data, label counts, validation sizes or seeds (their validation
    errors would not be comparable: without a manifest the seed draws the rows)."""
    if len(directories) < 2:
        raise ConfigError("give at least two sweep directories to choose between")
    twice = [d for i, d in enumerate(directories) if d in directories[:i]]
    if twice:
        raise ConfigError(f"{twice[0]} is given twice; name each candidate once")
    cells = {d: _finished_cells(d) for d in directories}
    configs = {d: [wd.read_config(os.path.join(d, os.path.basename(r["workdir"])))
                   for r in rows] for d, rows in cells.items()}  # the directory may have moved
    settings = {d: wd.flatten(cfgs[0].identity()) for d, cfgs in configs.items()}
    for d, cfgs in configs.items():
        for cfg in cfgs[1:]:
            mine = wd.flatten(cfg.identity())
            differs = [k for k in mine if k not in _PER_CELL and mine[k] != settings[d].get(k)]
            if differs:
                raise ConfigError(f"{d} holds cells of different settings ({differs[0]}); "
                                  "give each candidate setting a sweep directory of its own")
    first = directories[0]
    for d in directories[1:]:
        for what, key in (("data", "dataset"), ("data", "data_sha256"),
                          ("label counts", "num_labels"), ("validation sizes", "num_validation"),
                          ("split manifests", "splits_sha256")):
            if settings[d].get(key) != settings[first].get(key):
                raise ConfigError(
                    f"{first} and {d} hold runs of other {what} ({key} "
                    f"{settings[first].get(key)} vs {settings[d].get(key)}); candidates must "
                    "differ in their settings only")
        if sorted(int(r["seed"]) for r in cells[d]) != sorted(
                int(r["seed"]) for r in cells[first]):
            raise ConfigError(f"{first} and {d} hold other seeds; give every candidate the "
                              "same --seeds (each seed draws its own labeled and validation "
                              "rows)")
    keys = [k for k in settings[directories[0]] if k not in _PER_CELL
            and len({repr(s.get(k)) for s in settings.values()}) > 1]
    return [Candidate(d, {k: settings[d].get(k) for k in keys},
                      [int(r["seed"]) for r in cells[d]],
                      [float(r["val_error"]) for r in cells[d]])
            for d in directories]


def choose(candidates: Sequence[Candidate]) -> int:
    """The index of the candidate of lowest mean final validation error (the first of
    equal ones)."""
    return min(range(len(candidates)), key=lambda i: candidates[i].val.mean)


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def choice_markdown(candidates: Sequence[Candidate], command: str | None = None) -> str:
    """The comparison as markdown: per candidate its setting and its final validation error
    (mean ± sample std over its seeds, n, each seed), the chosen one marked."""
    best = choose(candidates)
    keys = list(candidates[0].setting)
    lines = ["# Settings chosen on the validation split", "",
             ("Each candidate is a sweep of its own; the figure compared is the final "
              "validation error (%), mean ± sample std over the candidate's seeds. Test "
              "errors are not shown: the choice never looks at the test set."), "",
             "| candidate | " + " | ".join(f"`{k}`" for k in keys)
             + " | val error | n | per seed | chosen |",
             "|---|" + "---|" * (len(keys) + 4)]
    for i, c in enumerate(candidates):
        seeds = ", ".join(f"{s}: {100 * e:.2f}" for s, e in zip(c.seeds, c.val_errors))
        lines.append(f"| `{c.directory}` | " + " | ".join(_value(c.setting[k]) for k in keys)
                     + f" | {c.val.text()} | {c.val.n} | {seeds} | "
                     + ("**yes**" if i == best else "") + " |")
    lines += ["", f"Chosen: `{candidates[best].directory}`."]
    if command:
        lines += ["", "Command:", "", "```", command, "```"]
    return "\n".join(lines) + "\n"
