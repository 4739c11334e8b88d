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

#: Config fields that differ between the cells of one candidate (not its setting).
_PER_CELL = ("seed", "num_labels")


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


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _finished_cells(directory: str) -> list[dict[str, str]]:
    path = os.path.join(directory, RESULTS_CSV)
    try:
        rows = [r for r in read_csv(path) if r["status"] == FINISHED]
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; name the directory of a finished sweep "
                          "(one per candidate setting)") from None
    except KeyError as e:
        raise ConfigError(f"{path} is not a results.csv of this ladder_jax (no {e}); rewrite "
                          "it with the sweep's --report_only") from None
    if not rows:
        raise ConfigError(f"{directory} has no finished cell yet; finish its sweep first")
    missing = [r["workdir"] for r in rows if r.get("val_error", "") == ""]
    if missing:
        raise ConfigError(f"{missing[0]} has no validation error: settings are chosen on a "
                          "validation split, so run the candidates with --num_validation > 0")
    return rows


def compare(directories: Sequence[str]) -> list[Candidate]:
    """The candidates in the order given. ConfigError (one line) for a directory without a
    finished sweep, cells without a validation split, or candidates of other data, label
    counts or validation sizes (their errors would not be comparable)."""
    if len(directories) < 2:
        raise ConfigError("give at least two sweep directories to choose between")
    cells = {d: _finished_cells(d) for d in directories}
    configs = {d: [wd.read_config(os.path.join(d, os.path.basename(r["workdir"])))
                   for r in rows] for d, rows in cells.items()}  # the directory may have moved
    shared = {}
    for d, cfgs in configs.items():
        for cfg in cfgs:
            key = (cfg.dataset, cfg.data_sha256, cfg.num_labels, cfg.num_validation,
                   cfg.splits_sha256)
            shared.setdefault(key, d)
    if len(shared) > 1:
        (a, first), (b, other) = list(shared.items())[:2]
        raise ConfigError(
            f"{first} and {other} hold runs of other data, label counts or validation sizes "
            f"(dataset, data hash, labels, validation, manifest: {a} vs {b}); candidates "
            "must differ in their settings only")
    settings = {d: _flat(cfgs[0].identity()) for d, cfgs in configs.items()}
    for d, cfgs in configs.items():
        for cfg in cfgs[1:]:
            mine = _flat(cfg.identity())
            differs = [k for k in mine if k not in _PER_CELL and mine[k] != settings[d][k]]
            if differs:
                raise ConfigError(f"{d} holds cells of different settings ({differs[0]}); "
                                  "give each candidate setting a sweep directory of its own")
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
