"""A job: K >= 1 models of one shape (configs that differ only in seed and label count),
trained together by one compiled program over one device-resident copy of the data.

With K = 1 the state is a plain TrainState and the program has no vmap; with K > 1 every
leaf of the state carries a leading model axis and the step is vmapped over it. Each model
draws its batches, noise and labeled set from its own seed exactly as a single run would.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ladder_jax import datasets, models, parallel, platform
from ladder_jax.config import PER_MODEL_FIELDS, TrainConfig
from ladder_jax.datasets import rows as rows_lib
from ladder_jax.datasets import splits as splits_lib
from ladder_jax.errors import ConfigError, TrainingDiverged
from ladder_jax.train import evaluate as eval_lib
from ladder_jax.train import step as step_lib
from ladder_jax.train.state import Schedule, TrainState, init_state


def job_key(cfg: TrainConfig) -> str:
    """Equal for configs that can train in one job: every field but config.PER_MODEL_FIELDS
    (seed and num_labels)."""
    d = cfg.to_dict()
    for name in PER_MODEL_FIELDS:
        d.pop(name)
    return json.dumps(d, sort_keys=True)


def model_name(cfg: TrainConfig) -> str:
    """'seed<S>_labels<N>': how log lines and errors name a model of a job."""
    return f"seed{cfg.seed}_labels{cfg.num_labels}"


def check_models(cfgs: Sequence[TrainConfig]) -> None:
    """Raises ConfigError unless ``cfgs`` can train as one job (see ``job_key``)."""
    if not cfgs:
        raise ConfigError("a job needs at least one config")
    first = cfgs[0].to_dict()
    for cfg in cfgs[1:]:
        if job_key(cfg) != job_key(cfgs[0]):
            other = cfg.to_dict()
            fields = sorted(k for k in first | other if k not in PER_MODEL_FIELDS
                            and first.get(k) != other.get(k))
            raise ConfigError(f"models of one job may differ only in "
                              f"{' and '.join(PER_MODEL_FIELDS)}; {model_name(cfg)} also "
                              f"differs in {', '.join(fields)}")
    names = [model_name(c) for c in cfgs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"the job lists {', '.join(dupes)} more than once")


def _input_fix(cfg: TrainConfig, dataset: datasets.Dataset) -> str:
    """How to make the model's input and top layer fit ``dataset``: flags to give."""
    image, classes = tuple(dataset.image_shape), dataset.num_classes
    if cfg.model.family == "mlp":
        sizes = (math.prod(image), *cfg.model.layer_sizes[1:-1], classes)
        return f"use --layer_sizes={','.join(map(str, sizes))} (model layer_sizes)"
    fixes = []
    if tuple(cfg.model.layer_shapes[0]) != image:
        fixes.append(f"set the model's input_shape to {image} (the runners set it from "
                     "--dataset)")
    if cfg.model.num_classes != classes:
        fixes.append(f"give --conv_layers whose top layer has {classes} units (e.g. ending "
                     f"in fc:{classes})")
    return " and ".join(fixes)


def check_fits(cfg: TrainConfig, dataset: datasets.Dataset) -> None:
    """ConfigError (one line, naming the fix) when the model, the batch sizes or the label
    count do not fit the dataset: the model's input is not H*W*C (mlp) or H x W x C (conv),
    its top layer not one unit per class, or a class has fewer training examples than the
    class-balanced labeled set takes of it (num_labels / classes; not for a split manifest,
    whose rows datasets.splits.check checks as listed)."""
    shapes = cfg.model.layer_shapes
    image = tuple(dataset.image_shape)
    fits_input = math.prod(shapes[0]) == math.prod(image) and (
        len(shapes[0]) == 1 or tuple(shapes[0]) == image)
    if not fits_input or cfg.model.num_classes != dataset.num_classes:
        what = []
        if not fits_input:
            what.append(f"its images are {'x'.join(map(str, image))} ({math.prod(image)} "
                        f"values) but the model's input is {'x'.join(map(str, shapes[0]))}")
        if cfg.model.num_classes != dataset.num_classes:
            what.append(f"it has {dataset.num_classes} classes but the model's top layer has "
                        f"{cfg.model.num_classes} units")
        raise ConfigError(f"{dataset.name}: {' and '.join(what)}; {_input_fix(cfg, dataset)}")
    available = len(dataset.train_labels) - cfg.num_validation
    if cfg.num_validation >= len(dataset.train_labels):
        raise ConfigError(f"num_validation={cfg.num_validation} leaves no training images "
                          f"({dataset.name} has {len(dataset.train_labels)})")
    if cfg.unlabeled_batch_size > available:
        raise ConfigError(f"unlabeled_batch_size={cfg.unlabeled_batch_size} exceeds the "
                          f"{available} unlabeled training images; use at most {available}")
    if cfg.epochs * (available // cfg.unlabeled_batch_size) >= 2**31 - 1:
        raise ConfigError(f"epochs={cfg.epochs} gives more than 2**31 steps; use fewer epochs")
    if isinstance(cfg.num_labels, int) and cfg.splits is None:  # a manifest's rows: checked
        counts = np.bincount(np.asarray(dataset.train_labels), minlength=dataset.num_classes)
        need, fewest = cfg.num_labels // dataset.num_classes, int(np.argmin(counts))
        if counts[fewest] < need:
            most = int(counts[fewest]) * dataset.num_classes
            fix = f"use --num_labels={most} or fewer" if most else "give it training examples"
            raise ConfigError(
                f"num_labels={cfg.num_labels} takes {need} labeled examples of each class but "
                f"{dataset.name} has {counts[fewest]} of class {fewest} "
                f"({dataset.class_names[fewest]!r}); {fix}")


@dataclasses.dataclass
class ModelRows:
    """One model's rows of the training set: labeled, unlabeled (sorted), validation."""

    labeled: jax.Array
    unlabeled: jax.Array
    validation: np.ndarray


@dataclasses.dataclass
class Job:
    """What a job needs besides its TrainState (see the module docstring)."""

    cfgs: list[TrainConfig]
    dataset: datasets.Dataset
    data: step_lib.DeviceData  # for training (global on a mesh)
    local: step_lib.DeviceData  # on this process's default device (evaluation)
    rows: list[ModelRows]
    schedule: Schedule
    optimizer: optax.GradientTransformation
    noise_keys: Any  # a key (K = 1) or stacked key data [K, ...]
    chunk: Callable[..., Any]
    mesh: Any = None

    @property
    def num_models(self) -> int:
        return len(self.cfgs)

    @property
    def stacked(self) -> bool:
        return self.num_models > 1


def load_dataset(cfg: TrainConfig) -> datasets.Dataset:
    """The dataset a config names, from its source (a user dataset from its path, TFDS
    builder and splits)."""
    return datasets.load(cfg.dataset, cfg.data_source, data_dir=cfg.data_dir,
                         tfds_splits=cfg.tfds_splits)


def _model_rows(cfg: TrainConfig, dataset: datasets.Dataset, labels: np.ndarray) -> ModelRows:
    """A model's rows: drawn from its seed, or those of its split manifest (cfg.splits)."""
    if cfg.splits is None:
        lab, train_rows, val_rows = rows_lib.index_sets(
            labels, cfg.num_labels, cfg.num_validation, cfg.seed, dataset.num_classes)
    else:
        split = splits_lib.check(splits_lib.read(cfg.splits), dataset, cfg.splits)
        if split.file_sha256 != cfg.splits_sha256:
            raise ConfigError(f"--splits={cfg.splits} changed since the run started (its "
                              "sha256 differs); restore the file, or pass --restart")
        lab, val_rows = np.sort(split.labeled), np.sort(split.validation)
        train_rows = np.setdiff1d(np.arange(len(labels)), val_rows)
    return ModelRows(jnp.asarray(lab, jnp.int32), jnp.asarray(np.sort(train_rows), jnp.int32),
                     val_rows)


def build_job(cfgs: Sequence[TrainConfig], dataset: datasets.Dataset | None = None, *,
              mesh: Any = None) -> Job:
    """Loads the data (unless given), picks every model's rows, compiles the chunk. The job's
    cfgs record the data (datasets.bind: a user dataset's name and content hash)."""
    platform.setup()  # idempotent: the runners did it at start-up; notebooks get it here
    cfgs = list(cfgs)
    check_models(cfgs)
    dataset = load_dataset(cfgs[0]) if dataset is None else dataset
    cfgs = [datasets.bind(c, dataset) for c in cfgs]  # a user dataset's name and hash
    for c in cfgs:
        check_fits(c, dataset)
    cfg = cfgs[0]
    labels = np.asarray(dataset.train_labels, np.int32)
    local = step_lib.DeviceData(jnp.asarray(dataset.train_images, jnp.uint8),
                                jnp.asarray(labels), dataset.preprocessing)
    data = local if mesh is None else parallel.replicate(local, mesh)
    model_rows = [_model_rows(c, dataset, labels) for c in cfgs]
    schedule = Schedule.of(cfg, int(model_rows[0].unlabeled.shape[0]))
    keys = [rows_lib.noise_key(c.seed) for c in cfgs]
    if len(cfgs) == 1:
        noise_keys, key_impl = keys[0], None
    else:
        stacked = jnp.stack(keys)
        noise_keys, key_impl = jax.random.key_data(stacked), str(jax.random.key_impl(stacked))
        if mesh is not None:
            noise_keys = parallel.to_global(noise_keys, parallel.replica_sharded(mesh))
    optimizer, chunk = step_lib.make_chunk(cfg, schedule.total_steps, num_models=len(cfgs),
                                           key_impl=key_impl, mesh=mesh)
    return Job(cfgs, dataset, data, local, model_rows, schedule, optimizer, noise_keys, chunk,
               mesh)


def stack(trees: Sequence[Any]) -> Any:
    """Trees of one structure stacked on a new leading (model) axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def place(job: Job, tree: Any) -> Any:
    """A (stacked) host tree as the job's state is laid out: on the mesh, if there is one."""
    if job.mesh is None:
        return tree
    if job.stacked:
        return parallel.to_global(tree, parallel.replica_sharded(job.mesh))
    return parallel.replicate(tree, job.mesh)


def combine(job: Job, trees: Sequence[Any]) -> Any:
    """Per-model trees -> the job's layout (stacked when K > 1), placed."""
    return place(job, stack(trees) if job.stacked else trees[0])


def split(job: Job, tree: Any) -> list[Any]:
    """The job's layout -> per-model trees on this process's default device."""
    host = parallel.to_host(tree)
    if not job.stacked:
        return [jax.tree_util.tree_map(jnp.asarray, host)]
    return [jax.tree_util.tree_map(lambda x, i=i: jnp.asarray(x[i]), host)
            for i in range(job.num_models)]


def init_job_state(job: Job) -> TrainState:
    """The state at step 0: model i starts exactly as a single run of cfgs[i]."""
    return combine(job, [init_state(c, job.optimizer) for c in job.cfgs])


def batch_rows(job: Job, first_step: int, num_steps: int) -> tuple[Any, Any]:
    """Labeled and unlabeled rows of steps first_step .. + num_steps, per model as its
    single run draws them: [num_steps, B] (K = 1) or [K, num_steps, B]."""
    step = jnp.asarray(first_step, jnp.int32)
    labeled, unlabeled = [], []
    for cfg, r in zip(job.cfgs, job.rows):
        labeled.append(rows_lib.index_stream(
            rows_lib.stream_key(cfg.seed, rows_lib.LABELED_STREAM), r.labeled, step,
            batch=cfg.batch_size, num_steps=num_steps))
        if cfg.uses_unlabeled:
            unlabeled.append(rows_lib.index_stream(
                rows_lib.stream_key(cfg.seed, rows_lib.UNLABELED_STREAM), r.unlabeled, step,
                batch=cfg.unlabeled_batch_size, num_steps=num_steps))
    if not job.stacked:  # default-device rows, also on a mesh
        return labeled[0], (unlabeled[0] if unlabeled else None)
    if job.mesh is None:
        return jnp.stack(labeled), (jnp.stack(unlabeled) if unlabeled else None)
    return (place(job, np.stack(labeled)),
            place(job, np.stack(unlabeled)) if unlabeled else None)


def current_step(job: Job, state: TrainState) -> int:
    """The (common) step of every model, read from the device."""
    step = parallel.to_host(state.step)
    return int(step[0] if job.stacked else step)


def run_steps(job: Job, state: TrainState, num_steps: int, *, first_step: int | None = None
              ) -> tuple[TrainState, np.ndarray]:
    """``num_steps`` steps of every model; the new state and losses [K, num_steps].

    ``first_step`` is the state's step when the caller knows it (the loop keeps it on the
    host); otherwise it is read from the device. Raises TrainingDiverged naming the model
    and the first step whose loss is not finite.
    """
    first = current_step(job, state) if first_step is None else first_step
    labeled, unlabeled = batch_rows(job, first, num_steps)
    state, step_losses = job.chunk(state, job.data, labeled, unlabeled, job.noise_keys)
    step_losses = np.asarray(parallel.to_host(step_losses)).reshape(job.num_models, num_steps)
    for cfg, model_losses in zip(job.cfgs, step_losses):
        bad = np.flatnonzero(~np.isfinite(model_losses))
        if bad.size:
            who = f"{model_name(cfg)}: " if job.stacked else ""
            raise TrainingDiverged(
                f"{who}loss became {model_losses[bad[0]]} at step {first + int(bad[0]) + 1}; "
                "the run stopped and the last good checkpoint is kept (try a lower --lr)")
    return state, step_losses


def evaluate_model(job: Job, index: int, params: models.Params, stats_only: bool = False
                   ) -> tuple[models.BnStats, dict[str, float]]:
    """Population statistics of model ``index`` over its unlabeled set, then its test (and
    validation) error. ``params`` lie on the default device (``split``)."""
    cfg, d, r = job.cfgs[index], job.local, job.rows[index]
    stats = eval_lib.population_stats(params, cfg.model, d.images, r.unlabeled, d.preprocessing)
    if stats_only:
        return stats, {}
    ds = job.dataset
    result = {"test_error": float(eval_lib.error_rate(
        params, cfg.model, stats, jnp.asarray(ds.test_images), jnp.asarray(ds.test_labels),
        d.preprocessing))}
    if len(r.validation):
        rows = jnp.asarray(r.validation)
        result["val_error"] = float(eval_lib.error_rate(
            params, cfg.model, stats, d.images[rows], d.labels[rows], d.preprocessing))
    return stats, result
