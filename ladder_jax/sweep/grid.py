"""The grid of a sweep: which runs (cells) it holds and each cell's config.

A preset *family* ('full', 'gamma', 'baseline', 'bottom', 'amlp', 'conv_small_gamma', ...)
names a model setting; the preset ``<family>_<labels>`` is the paper's setting for that label
count. A label sweep (``build_grid``) crosses families x label counts x seeds, taking the
family's preset for a label count where the paper gives one and the family's 100-label
preset otherwise; a table (``build_table``) lists presets x seeds, each at its own label
count, with seeds of its own where a row names them ('full_100:0-4'). Cells whose configs
differ only in their seed (equal ``Cell.row_key``) are the seeds of one row of a report and
train together.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from ladder_jax import config as config_lib
from ladder_jax.config import ConfigError, TrainConfig


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
    def row_key(self) -> TrainConfig:
        """The config less its seed: cells with equal keys are the seeds of one row (of a
        sweep or a table) and train as replicas in one program."""
        return self.config.replace(seed=0)


def build_grid(presets: Sequence[str], num_labels: Sequence[int | str], seeds: Sequence[int],
               *, layer_sizes: Sequence[int] | None = None,
               model_changes: dict[str, Any] | None = None, **train_changes: Any) -> list[Cell]:
    """The cells of presets x num_labels x seeds (duplicates dropped), label counts outermost.

    Each cell's config is its family's preset (see ``preset_for``) with the cell's num_labels
    and seed, ``model_changes`` (ModelConfig fields) and ``train_changes`` (TrainConfig
    fields, e.g. epochs=1, max_steps=300) applied. ``layer_sizes`` replaces the network
    widths; the preset's per-layer lambdas and noise keep their bottom and top layers.
    Raises ConfigError for a bad value (e.g. a label count that is not a multiple of the
    class count), before anything runs.
    """
    if not presets or not num_labels or not seeds:
        raise ConfigError("a sweep needs at least one preset, one label count and one seed")
    for name in ("model", "num_labels", "seed"):
        if name in train_changes:
            raise ConfigError(f"{name} is set per cell; pass it as an argument of build_grid")
    labels = list(dict.fromkeys(config_lib.parse_num_labels(n) for n in num_labels))
    cells = []
    for n in labels:
        for family in dict.fromkeys(presets):
            source = preset_for(family, n)
            base = config_lib.preset(source)
            changes: dict[str, Any] = {}
            if layer_sizes is not None:
                sizes = tuple(int(s) for s in layer_sizes)
                changes = {
                    "layer_sizes": sizes,
                    "denoise_weights": _fit_layers(base.model.denoise_weights, len(sizes)),
                    "noise_std": _fit_layers(base.model.noise_std, len(sizes)),
                }
            changes.update(model_changes or {})
            for seed in dict.fromkeys(int(s) for s in seeds):
                cfg = base.replace(model=changes, num_labels=n, seed=seed, **train_changes)
                cells.append(Cell(family, cfg.num_labels, seed, cfg, source))
    return cells


def split_preset(name: str) -> tuple[str, int | str]:
    """'full_100' -> ('full', 100); 'conv_large_gamma_4000' -> ('conv_large_gamma', 4000)."""
    family, _, labels = name.rpartition("_")
    return family, config_lib.parse_num_labels(labels)


#: The most seeds one row of a table may name (a slip such as 0-99999 builds no such grid).
MAX_ROW_SEEDS = 1000


def split_row(spec: str) -> tuple[str, list[int] | None]:
    """A table row as ``--rows`` names it: its preset and its own seeds, or None (the
    table's seeds).

    'full_100' -> ('full_100', None); 'full_100:0-4' -> ('full_100', [0, 1, 2, 3, 4]);
    'gamma_100:0+2+5' -> ('gamma_100', [0, 2, 5]): seeds are whole numbers S or ranges A-B
    (A <= B, both included) joined by '+'. Raises ConfigError (one line) for anything else
    or more than MAX_ROW_SEEDS seeds.
    """
    name, colon, text = spec.partition(":")
    if not colon:
        return name.strip(), None
    seeds: list[int] = []
    for part in text.split("+"):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part, re.ASCII)
        if m is None or int(m.group(1)) > int(m.group(2) or m.group(1)):
            raise ConfigError(f"row {spec!r}: seeds must be whole numbers or ranges A-B "
                              "(A <= B) joined by '+', e.g. full_100:0-4 or full_100:0+2")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if len(seeds) + last - first + 1 > MAX_ROW_SEEDS:
            raise ConfigError(f"row {spec!r} names more than {MAX_ROW_SEEDS} seeds")
        seeds += range(first, last + 1)
    return name.strip(), list(dict.fromkeys(seeds))


def build_table(rows: Sequence[str], seeds: Sequence[int], **train_changes: Any) -> list[Cell]:
    """The cells of a results table, rows in order, each row's seeds in order.

    ``rows`` are presets, each at its own label count and settings, optionally with seeds
    of their own ('full_100:0-4', see ``split_row``); a row without them takes ``seeds``.
    A preset named twice gets the seeds of both. ``train_changes`` (TrainConfig fields)
    apply to every cell. Cells are named as a label sweep names them
    (``<family>_labels<N>_seed<S>``), so the two share finished runs. Raises ConfigError
    for an unknown preset or bad seeds, before anything runs.
    """
    if not rows:
        raise ConfigError("a table needs at least one row")
    row_seeds: dict[str, list[int]] = {}
    for spec in rows:
        name, own = split_row(spec)
        config_lib.preset(name)  # ConfigError naming the valid presets
        row_seeds.setdefault(name, [])
        row_seeds[name] += [int(s) for s in (seeds if own is None else own)]
    cells = []
    for name, its_seeds in row_seeds.items():
        if not its_seeds:
            raise ConfigError(f"row {name} has no seeds; give --seeds or {name}:0-4")
        base = config_lib.preset(name)
        family, _ = split_preset(name)
        for seed in dict.fromkeys(its_seeds):
            cfg = base.replace(seed=seed, **train_changes)
            cells.append(Cell(family, cfg.num_labels, seed, cfg, name))
    return cells
