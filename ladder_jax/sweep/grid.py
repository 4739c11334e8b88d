"""The grid of a sweep: which runs (cells) it holds and each cell's config.

A preset *family* ('full', 'gamma', 'baseline', 'bottom', 'amlp', 'conv_small_gamma', ...)
names a model setting; the preset ``<family>_<labels>`` is the paper's setting for that label
count. A label sweep (``build_grid``) crosses families x label counts x seeds, taking the
family's preset for a label count where the paper gives one and the family's 100-label
preset otherwise; a table (``build_table``) lists presets x seeds, each at its own label
count, with seeds of its own where a row names them ('full_100:0-4'). Cells whose configs
differ only in their seed (equal ``Cell.row_key``) are the seeds of one row of a report and
train together.

Both take split manifests by cell shape (``splits``, the runners' --splits, see
``parse_splits``): ``{'100': 'm100.json'}`` gives every family at 100 labels that manifest,
``{'full_100': 'm.json'}`` the family 'full' at 100 labels (a table row of that name); the
family's key wins over the label count's. Every seed of such a shape trains on the
manifest's labeled and validation rows (datasets/splits.py), which must label exactly the
shape's label count.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ladder_jax import config as config_lib
from ladder_jax.config import ConfigError, TrainConfig
from ladder_jax.datasets import splits as splits_lib


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
        """The cell's workdir name inside the sweep directory:
        ``<family>_labels<N>_seed<S>``, and ``<family>_labels<N>_splits<H>_seed<S>`` for a
        cell trained on a split manifest (H: the first 8 hex digits of the file's sha256, so
        that a cell of another manifest or of the seeds' own rows is another directory)."""
        sha = self.config.splits_sha256 if self.config.splits else None
        manifest = f"_splits{sha[:8]}" if sha else ""
        return f"{self.preset}_labels{self.num_labels}{manifest}_seed{self.seed}"

    @property
    def row_key(self) -> TrainConfig:
        """The config less its seed: cells with equal keys are the seeds of one row (of a
        sweep or a table) and train as replicas in one program."""
        return self.config.replace(seed=0)


def build_grid(presets: Sequence[str], num_labels: Sequence[int | str], seeds: Sequence[int],
               *, layer_sizes: Sequence[int] | None = None,
               model_changes: dict[str, Any] | None = None,
               splits: Mapping[str, str] | None = None, **train_changes: Any) -> list[Cell]:
    """The cells of presets x num_labels x seeds (duplicates dropped), label counts outermost.

    Each cell's config is its family's preset (see ``preset_for``) with the cell's num_labels
    and seed, ``model_changes`` (ModelConfig fields) and ``train_changes`` (TrainConfig
    fields, e.g. epochs=1, max_steps=300) applied. ``layer_sizes`` replaces the network
    widths; the preset's per-layer lambdas and noise keep their bottom and top layers.
    ``splits`` maps cell shapes to split manifests (see the module docstring); a cell with
    one takes its rows and validation count, and the class-count divisibility of its label
    count is waived (the manifest says which rows). Raises ConfigError for a bad value
    (e.g. a label count that is not a multiple of the class count, a shape that is not in
    the grid, a manifest of another label count) and DataError for a manifest that cannot
    be read, before anything runs.
    """
    if not presets or not num_labels or not seeds:
        raise ConfigError("a sweep needs at least one preset, one label count and one seed")
    for name in ("model", "num_labels", "seed"):
        if name in train_changes:
            raise ConfigError(f"{name} is set per cell; pass it as an argument of build_grid")
    labels = list(dict.fromkeys(config_lib.parse_num_labels(n) for n in num_labels))
    families = list(dict.fromkeys(presets))
    for family in families:
        preset_for(family, labels[0])  # ConfigError naming the families, before the splits
    manifests = _ShapeManifests(splits, [(f, n) for n in labels for f in families],
                                "this sweep")
    cells = []
    for n in labels:
        for family in families:
            source = preset_for(family, n)
            base = config_lib.preset(source)
            changes: dict[str, Any] = {}
            if layer_sizes is not None:
                sizes = tuple(int(s) for s in layer_sizes)
                changes = {
                    "layer_sizes": sizes,
                    "denoise_weights": config_lib.fit_layers(base.model.denoise_weights, len(sizes)),
                    "noise_std": config_lib.fit_layers(base.model.noise_std, len(sizes)),
                }
            changes.update(model_changes or {})
            rows = {**train_changes, "num_labels": n, **manifests.changes(family, n)}
            for seed in dict.fromkeys(int(s) for s in seeds):
                cfg = base.replace(model=changes, seed=seed, **rows)
                cells.append(Cell(family, n, seed, cfg, source))
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


def build_table(rows: Sequence[str], seeds: Sequence[int], *,
                splits: Mapping[str, str] | None = None, **train_changes: Any) -> list[Cell]:
    """The cells of a results table, rows in order, each row's seeds in order.

    ``rows`` are presets, each at its own label count and settings, optionally with seeds
    of their own ('full_100:0-4', see ``split_row``); a row without them takes ``seeds``.
    A preset named twice gets the seeds of both. ``train_changes`` (TrainConfig fields)
    apply to every cell; ``splits`` maps rows ('full_100') or label counts ('100': every row
    at 100 labels) to split manifests, which must label the row's label count (see the
    module docstring). Cells are named as a label sweep names them
    (``<family>_labels<N>_seed<S>``, with ``_splits<H>`` for a manifest), so the two share
    finished runs. Raises ConfigError for an unknown preset or bad seeds, a shape that is no
    row or a manifest of another label count, and DataError for a manifest that cannot be
    read, before anything runs.
    """
    if not rows:
        raise ConfigError("a table needs at least one row")
    row_seeds: dict[str, list[int]] = {}
    for spec in rows:
        name, own = split_row(spec)
        config_lib.preset(name)  # ConfigError naming the valid presets
        row_seeds.setdefault(name, [])
        row_seeds[name] += [int(s) for s in (seeds if own is None else own)]
    manifests = _ShapeManifests(splits, [split_preset(name) for name in row_seeds],
                                "this table")
    cells = []
    for name, its_seeds in row_seeds.items():
        if not its_seeds:
            raise ConfigError(f"row {name} has no seeds; give --seeds or {name}:0-4")
        base = config_lib.preset(name)
        family, labels = split_preset(name)
        changes = {**train_changes, **manifests.changes(family, labels)}
        for seed in dict.fromkeys(its_seeds):
            cfg = base.replace(seed=seed, **changes)
            cells.append(Cell(family, labels, seed, cfg, name))
    return cells


def parse_splits(items: Sequence[str]) -> dict[str, str]:
    """The --splits flag of a sweep or a table, as a mapping for build_grid / build_table.

    ['100=a.json', 'full_1000=b.json'] -> {'100': 'a.json', 'full_1000': 'b.json'}: each
    item is SHAPE=FILE, SHAPE a label count ('100', 'all') or a family at one ('full_100',
    a table's row name). Raises ConfigError (one line) for an item of another form or a
    shape named twice.
    """
    out: dict[str, str] = {}
    for item in items:
        shape, equals, path = (part.strip() for part in item.partition("="))
        if not (equals and shape and path):
            raise ConfigError(f"--splits item {item!r} must be SHAPE=FILE, e.g. "
                              "100=m100.json or full_100=m100.json")
        if shape in out:
            raise ConfigError(f"--splits names {shape} twice; give one manifest per shape")
        out[shape] = path
    return out


def _shape_of(key: str) -> tuple[str | None, int | str]:
    """A --splits shape: '100' -> (None, 100), 'all' -> (None, 'all'), 'full_100' ->
    ('full', 100); (None, None) for anything else."""
    family, _, labels = key.rpartition("_")
    try:
        return (family or None), config_lib.parse_num_labels(labels)
    except ConfigError:
        return None, None


class _ShapeManifests:
    """The split manifests of a grid's cell shapes ((family, label count) pairs): a
    family's own key ('full_100') wins over its label count's ('100'). Every key must name
    a shape of the grid (ConfigError, one line, listing them); a manifest is read once,
    when a cell asks for it (``changes``)."""

    def __init__(self, splits: Mapping[str, str] | None,
                 shapes: Sequence[tuple[str, int | str]], grid: str):
        if isinstance(splits, str) or not isinstance(splits or {}, Mapping):
            raise ConfigError(f"splits={splits!r} must map cell shapes to manifest files, "
                              "e.g. {'100': 'm100.json'}")
        self._by_key: dict[tuple[str | None, int | str], tuple[str, str]] = {}
        labels = [n for _, n in shapes]
        for key, path in (splits or {}).items():
            shape = _shape_of(str(key).strip())
            if shape[1] is None or not (shape in shapes
                                        or (shape[0] is None and shape[1] in labels)):
                known = dict.fromkeys([*map(str, labels), *(f"{f}_{n}" for f, n in shapes)])
                raise ConfigError(f"--splits={key}=...: {grid} has no cell shape {key!r}; "
                                  f"name one of {', '.join(known)}")
            if shape in self._by_key:
                raise ConfigError(f"--splits names the shape {key} twice (as "
                                  f"{self._by_key[shape][0]} and {key}); give one manifest")
            self._by_key[shape] = (str(key), path)
        self._read: dict[str, dict[str, Any]] = {}

    def changes(self, family: str, num_labels: int | str) -> dict[str, Any]:
        """The TrainConfig changes of the shape's manifest (splits.config_changes), or {}
        without one. ConfigError (one line) when it labels another count than
        ``num_labels`` ('all': every training row outside its validation list, which needs
        its num_train); DataError when it cannot be read or is no manifest."""
        found = self._by_key.get((family, num_labels)) or self._by_key.get((None, num_labels))
        if found is None:
            return {}
        key, path = found
        if path not in self._read:
            self._read[path] = splits_lib.config_changes(path)
        changes = self._read[path]
        labeled = changes["num_labels"]
        if num_labels == "all":
            num_train = splits_lib.read(path).get("num_train")
            if num_train != labeled + changes["num_validation"]:
                raise ConfigError(
                    f"--splits={key}={path}: a shape at all labels needs a manifest that "
                    f"labels every training row outside its validation list, and records "
                    f"num_train; this one labels {labeled} rows (num_train {num_train})")
        elif labeled != num_labels:
            raise ConfigError(
                f"--splits={key}={path} labels {labeled} rows but the cells of {family} at "
                f"{num_labels} labels train on {num_labels}; give a manifest of {num_labels} "
                f"labeled rows, or sweep --num_labels={labeled} with --splits={labeled}={path}")
        return dict(changes)
