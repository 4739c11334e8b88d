"""Configuration: the model and the training run, as frozen dataclasses, plus named presets.

A config that cannot work fails when it is built (``ConfigError``, one line saying why),
not hours later inside a compiled step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

from ladder_jax.errors import ConfigError

MATMUL_DTYPES = ("float32", "bfloat16")
CONV_LOWERINGS = ("auto", "matmul", "lax")
ACTIVATIONS = ("relu", "leakyrelu")
PAPER_MNIST_WIDTHS = (784, 1000, 500, 250, 250, 250, 10)


#: Keys of config.json that are not TrainConfig fields.
NON_CONFIG_KEYS = ("bookkeeping_history",)


def parse_num_labels(value: Any) -> int | str:
    """A label count as the config keeps it: a positive int, or 'all' (from 'all', 'ALL',
    -1 or '-1'); digit strings become ints. ConfigError (one line) for anything else."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("all", "-1"):
            return "all"
        if text.isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"num_labels={value!r} must be a positive integer or 'all'")
    value = int(value)
    if value == -1:
        return "all"
    if value <= 0:
        raise ConfigError(f"num_labels={value} must be positive (or 'all')")
    return value


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")


#: The valid ranges of the scalar fields: name -> (kind, low, high, what the error says).
#: 'int' fields must be whole numbers (not bools), 'float' fields finite real numbers.
_Range = tuple[str, float, float, str]
_MODEL_RANGES: dict[str, _Range] = {
    "amlp_hidden": ("int", 1, 1024, "a whole number in 1..1024"),
    "bn_eps": ("float", 0.0, 1.0, "a number in [0, 1]"),
}
_TRAIN_RANGES: dict[str, _Range] = {
    "seed": ("int", 0, 2**31 - 1, "a whole number in 0..2147483647"),
    "epochs": ("int", 1, 100_000, "a whole number in 1..100000"),
    "batch_size": ("int", 1, 1_000_000, "a whole number >= 1"),
    "unlabeled_batch_size": ("int", 1, 1_000_000, "a whole number >= 1"),
    "lr": ("float", 1e-12, math.inf, "a finite number > 0"),
    "decay_start": ("float", 0.0, 1.0, "a number in [0, 1]"),
    "max_steps": ("int", 0, 2**31 - 2, "a whole number >= 0 (0: the full schedule)"),
    "eval_every": ("int", 1, 100_000, "a whole number >= 1"),
    "checkpoint_every": ("int", 0, 2**31 - 2, "a whole number >= 0"),
    "keep_checkpoints": ("int", 1, 1000, "a whole number in 1..1000"),
    "steps_per_call": ("int", 1, 100_000, "a whole number in 1..100000"),
    "num_validation": ("int", 0, 10**8, "a whole number >= 0"),
}


def _check_fields(obj: Any, ranges: dict[str, _Range]) -> None:
    """ConfigError naming the field, its value and what is allowed, for the first field of
    ``obj`` outside its range (see _TRAIN_RANGES)."""
    for name, (kind, low, high, allowed) in ranges.items():
        value = getattr(obj, name)
        if kind == "int":
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        else:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and math.isfinite(value)
        if not ok or not low <= value <= high:
            raise ConfigError(f"{name}={value!r} is not allowed: use {allowed}")


def _as_float_tuple(value: float | Sequence[float], length: int, name: str) -> tuple[float, ...]:
    """Broadcasts a scalar to ``length`` floats, or checks a sequence has that length."""
    if isinstance(value, numbers.Real):
        return (float(value),) * length
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a number or a list of numbers") from None
    if len(values) != length:
        raise ConfigError(
            f"{name} has {len(values)} values but the network has {length} layers "
            f"(input layer included); give one value per layer or a single number"
        )
    return values


def fit_layers(values: Sequence[float], n: int) -> tuple[float, ...]:
    """Per-layer values for a network of n layers: the bottom n-1 values and the top one
    (the last hidden value repeats if the new network is deeper)."""
    bottom = list(values[:-1])[: n - 1]
    bottom += [bottom[-1] if bottom else values[-1]] * (n - 1 - len(bottom))
    return (*bottom, values[-1])


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A ladder network: its family (ladder_jax.models), layers, costs and noise.

    family: 'mlp' (dense layers, ``layer_sizes``) or 'conv' (``conv_layers``).
    layer_sizes: mlp widths n_0 (input) .. n_L (classes).
    conv_layers: conv layer spec in the authors' syntax, e.g.
        'convf:32:5:1:1-maxpool:2:2-...-globalmeanpool:6:6-fc:10' (models/conv.py).
    input_shape: conv input H, W, C (the dataset's image shape).
    activation: hidden-layer nonlinearity, 'relu' or 'leakyrelu' (slope 0.1).
    top_c: conv: whether the top layer has the learned per-class scale gamma (authors' --top-c).
    combinator_per_channel: conv: one combinator per channel where the layer above is a
        conv or pool layer, shared over positions (the authors' code), instead of one per
        channel and position (the default, as a dense layer's per unit).
    denoise_weights: lambda_0 .. lambda_L (one per layer, input first); all zero = no decoder.
    noise_std: encoder noise std, one number or one per layer (input first).
    combinator: 'gauss' (the paper's), 'amlp' (Pezeshki et al. 2016) or 'linear'.
    amlp_hidden: hidden units of each per-unit AMLP combinator.
    bn_eps: added to the batch variance before the square root (authors' code: 1e-10).
    matmul_dtype: 'float32' (the paper's computation, on every backend: not the TF32 or
        bfloat16 passes JAX defaults to on GPUs and TPUs), or 'bfloat16': every matmul, forward
        and backward, takes bfloat16 operands and accumulates in float32. Off by default: it
        changes the computation (faster where bfloat16 matmuls are, e.g. CPUs with
        AVX512-BF16; BUILD_NOTES.md has its measured speed and accuracy).
    conv_lowering: conv: how convolutions are computed: 'lax' (lax.conv_general_dilated),
        'matmul' (im2col matmuls, models/im2col.py), or 'auto': matmuls where the program
        is lowered for the CPU, lax convolutions where it is lowered for an accelerator
        (lax.platform_dependent; also for jax.export from a CPU). The mlp ignores it.
    """

    family: str = "mlp"
    layer_sizes: tuple[int, ...] = PAPER_MNIST_WIDTHS
    conv_layers: str = ""
    input_shape: tuple[int, ...] = (28, 28, 1)
    activation: str = "relu"
    top_c: bool = True
    combinator_per_channel: bool = False
    denoise_weights: tuple[float, ...] = (1000.0, 10.0, 0.1, 0.1, 0.1, 0.1, 0.1)
    noise_std: tuple[float, ...] = (0.3,) * 7
    combinator: str = "gauss"
    amlp_hidden: int = 4
    bn_eps: float = 1e-10
    matmul_dtype: str = "float32"
    conv_lowering: str = "auto"

    def __post_init__(self) -> None:
        from ladder_jax import combinators, models  # they need this module's types

        _check_choice("family", self.family, tuple(models.FAMILIES))
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("combinator", self.combinator, combinators.NAMES)
        _check_choice("matmul_dtype", self.matmul_dtype, MATMUL_DTYPES)
        _check_choice("conv_lowering", self.conv_lowering, CONV_LOWERINGS)
        _check_fields(self, _MODEL_RANGES)
        for name in ("top_c", "combinator_per_channel"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")
        family = models.family(self.family)
        for name, value in family.validate(self).items():
            object.__setattr__(self, name, value)
        n = len(family.layer_shapes(self))
        weights = _as_float_tuple(self.denoise_weights, n, "denoise_weights")
        noise = _as_float_tuple(self.noise_std, n, "noise_std")
        if not all(0 <= w < math.inf for w in weights):  # also refuses NaN
            raise ConfigError(f"denoise_weights={weights} must be finite and >= 0")
        if not all(0 <= s < math.inf for s in noise):
            raise ConfigError(f"noise_std={noise} must be finite and >= 0")
        object.__setattr__(self, "denoise_weights", weights)
        object.__setattr__(self, "noise_std", noise)

    @property
    def layer_shapes(self) -> list[tuple[int, ...]]:
        """Per-example shape of z_l for l = 0 (input) .. L (the family computes them)."""
        from ladder_jax import models

        return models.family(self.family).layer_shapes(self)

    @property
    def num_layers(self) -> int:
        """L: the number of layers above the input."""
        return len(self.layer_shapes) - 1

    @property
    def num_classes(self) -> int:
        """Width of the top layer."""
        return self.layer_shapes[-1][-1]

    @property
    def lowest_decoded_layer(self) -> int | None:
        """The lowest layer with a denoising cost; the decoder runs from L down to it.

        None when every weight is zero (supervised baseline: no decoder at all).
        """
        nonzero = [layer for layer, w in enumerate(self.denoise_weights) if w > 0]
        return min(nonzero) if nonzero else None


def _bookkeeping(default: Any) -> Any:
    """A TrainConfig field that does not change the numbers of the steps: a run resumes with
    another value (config.json keeps the history of such changes)."""
    return dataclasses.field(default=default, metadata={"bookkeeping": True})


def _per_model(default: Any) -> Any:
    """A TrainConfig field that may differ between the models of one job."""
    return dataclasses.field(default=default, metadata={"per_model": True})


def _user_data() -> Any:
    """A TrainConfig field of user datasets only, None otherwise: ``to_dict`` leaves it out
    while it is None, so a built-in dataset's config.json (and identity) is exactly what it
    was before the field existed, and an old one resumes."""
    return dataclasses.field(default=None, metadata={"user_data": True})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: the model, the data, the optimiser schedule and the bookkeeping.

    num_labels: labeled examples (class-balanced, a multiple of 10) or "all".
    epochs: an epoch is one pass over the unlabeled set in unlabeled batches.
    decay_start: fraction of training after which the learning rate decays linearly to 0.
    max_steps: stop after this many steps (0 = the full schedule); the schedule is unchanged.
    eval_every: evaluate on the test set every this many epochs (and always at the end).
    checkpoint_every: steps between checkpoints (0 = only at evaluations and the end).
    steps_per_call: training steps run by one compiled call (lax.scan).
    num_validation: training images held out (class-balanced) as a validation split.
    dataset: a built-in dataset of ladder_jax.datasets ('mnist', 'fashion_mnist', 'cifar10')
        or your own: 'tfds:NAME', 'npz:PATH', 'folder:DIR' ('arrays:NAME' for
        datasets.from_arrays data, given to the training functions as ``dataset=``).
    tfds_splits: tfds:NAME only: its training and test splits (None: train, test).
    data_sha256: the content hash of a user dataset (datasets.bind fills it when the data is
        loaded or given; part of the identity, so a run never resumes on other data); None
        for the built-ins, whose loaders pin their data (if set, it is checked).
    splits: a split manifest (datasets/splits.py) whose labeled and validation rows the run
        trains on instead of drawing them from the seed; num_labels and num_validation are
        then its list lengths (datasets.splits.apply sets all four); splits_sha256: the
        file's sha256 when the run started (a changed file is refused).
    data_source: where a built-in dataset comes from (None: its default source); data_dir:
        the directory that source reads, if any (for tfds:NAME its TFDS data_dir).
    """

    # What is learned, from which data. seed and num_labels may differ between the models
    # of one job (PER_MODEL_FIELDS).
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    num_labels: int | str = _per_model(100)
    seed: int = _per_model(0)
    num_validation: int = 0
    dataset: str = "mnist"
    tfds_splits: tuple[str, ...] | None = _user_data()
    data_sha256: str | None = _user_data()
    splits: str | None = _user_data()
    splits_sha256: str | None = _user_data()
    # The schedule.
    epochs: int = 150
    batch_size: int = 100
    unlabeled_batch_size: int = 100
    lr: float = 0.002
    decay_start: float = 0.67
    # Bookkeeping: may change when a run resumes (BOOKKEEPING_FIELDS).
    max_steps: int = _bookkeeping(0)
    eval_every: int = _bookkeeping(1)
    checkpoint_every: int = _bookkeeping(3000)
    keep_checkpoints: int = _bookkeeping(3)
    steps_per_call: int = _bookkeeping(100)
    data_source: str | None = _bookkeeping(None)
    data_dir: str | None = _bookkeeping(None)

    def __post_init__(self) -> None:
        self._check_data()
        _check_fields(self, _TRAIN_RANGES)
        labels = parse_num_labels(self.num_labels)
        classes = self.model.num_classes
        if isinstance(labels, int) and labels % classes and self.splits is None:
            raise ConfigError(
                f"num_labels={labels} is not divisible by {classes} classes; the labeled set "
                f"is class-balanced, so pick a multiple of {classes}")
        object.__setattr__(self, "num_labels", labels)

    def _check_data(self) -> None:
        """ConfigError (one line) unless dataset names a dataset (built-in or user form) that
        takes the given tfds_splits, data_source and data_dir, and data_sha256 is a hash."""
        from ladder_jax import datasets

        if not isinstance(self.dataset, str) or not (self.dataset in datasets.NAMES
                                                     or datasets.is_user(self.dataset)):
            raise ConfigError(f"dataset={self.dataset!r} is not one of {datasets.VALID}")
        splits = self.tfds_splits
        if isinstance(splits, str):
            splits = splits.split(",")
        if splits is not None:
            if not isinstance(splits, (list, tuple)):
                raise ConfigError(f"tfds_splits={splits!r} must name two splits, e.g. "
                                  "train,test")
            splits = tuple(splits)
            object.__setattr__(self, "tfds_splits", splits)
        if self.data_sha256 is not None and not (
                isinstance(self.data_sha256, str)
                and re.fullmatch(r"[0-9a-f]{64}", self.data_sha256)):
            raise ConfigError(f"data_sha256={self.data_sha256!r} must be a sha256 (64 hex "
                              "digits), or None")
        try:
            datasets.check_options(self.dataset, self.data_source, self.data_dir, splits)
        except datasets.DataError as e:
            raise ConfigError(str(e)) from None

    @property
    def uses_unlabeled(self) -> bool:
        """Whether training feeds an unlabeled batch (only when some layer is denoised)."""
        return self.model.lowest_decoded_layer is not None

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with top-level fields changed; ``model=`` may be a dict of model changes."""
        model = changes.pop("model", None)
        if isinstance(model, dict):
            model = dataclasses.replace(self.model, **model)
        if model is not None:
            changes["model"] = model
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists), without the USER_DATA_FIELDS that are
        None (``from_dict`` gives them None again)."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        return {k: v for k, v in d.items() if not (k in USER_DATA_FIELDS and v is None)}

    def identity(self) -> dict[str, Any]:
        """What identifies a run: ``to_dict`` without BOOKKEEPING_FIELDS (those may change
        when a run resumes; everything here changes the numbers of the steps)."""
        d = self.to_dict()
        for name in BOOKKEEPING_FIELDS:
            d.pop(name)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``. Fields missing from ``d`` (a config written before they
        existed) take their defaults; unknown fields raise ConfigError."""
        if not isinstance(d, dict) or not isinstance(d.get("model", {}), dict):
            raise ConfigError("a config must be a dict with a dict under 'model'")
        d = {k: v for k, v in d.items() if k not in NON_CONFIG_KEYS}
        model_dict = dict(d.pop("model", {}))
        for given, cls_ in ((d, cls), (model_dict, ModelConfig)):
            unknown = set(given) - {f.name for f in dataclasses.fields(cls_)
                                    if f.name != "model" or cls_ is cls}
            if unknown:
                raise ConfigError(f"unknown config field(s) {', '.join(sorted(unknown))} "
                                  "(written by another version of ladder_jax?)")
        model = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in model_dict.items()})
        return cls(model=model, **d)


#: TrainConfig fields a run may resume with other values of (bookkeeping, not numbers).
BOOKKEEPING_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                           if f.metadata.get("bookkeeping"))
#: TrainConfig fields of user datasets only (left out of to_dict while None).
USER_DATA_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                         if f.metadata.get("user_data"))
#: TrainConfig fields that may differ between the models of one job.
PER_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                         if f.metadata.get("per_model"))


#: The authors' --super-noise-std, run.py's default, which no paper command changes: the
#: input's noise. Their --f-local-noise-std (a preset's "encoder noise") sets layers 1..L
#: only, so full_1000's noise 0.2 and the baselines' 0.5 leave the input at 0.3.
INPUT_NOISE = 0.3


def _paper_mnist(weights: Sequence[float], noise: float, num_labels: int | str) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(denoise_weights=tuple(weights),
                          noise_std=(INPUT_NOISE,) + (noise,) * 6),
        num_labels=num_labels,
    )


_SEMI_WEIGHTS_100 = (1000.0, 10.0, 0.1, 0.1, 0.1, 0.1, 0.1)
_SEMI_WEIGHTS_1000 = (2000.0, 20.0, 0.1, 0.1, 0.1, 0.1, 0.1)
_TOP_ONLY = (0.0,) * 6

# Convolutional presets (models/conv.py): the authors' README commands (CuriousAI/ladder),
# whose run.py defaults fill the rest: Adam lr 0.002, 150 epochs, decay from 0.67, batches of
# 100 labeled + 100 unlabeled, noise 0.3, gamma on the top (--top-c True). Where the paper
# and the code differ, the code is followed:
# - --f-local-noise-std sets the noise of layers 1..L only; the input keeps
#   --super-noise-std (0.3). So the Conv-Small baseline's "noise 0.45" is 0.3 on the
#   input and 0.45 above it (the paper gives one number).
# - Max pooling keeps the partial window at the border (Theano's ignore_border=False), so
#   Conv-Large's second pool maps 15x15 to 8x8 and its global mean pool sees 6x6.
# - Pooling layers are batch-normalised and corrupted like the others, linear, no beta.
# - The combinator has parameters per channel AND position; the authors share them over
#   positions below conv/pool layers (combinator_per_channel=True builds theirs).
# - Conv-Large: --act leakyrelu (0.1), --top-c False, 4000 labels, 50000 unlabeled (all of
#   CIFAR-10's training images), --contrast-norm 55 --whiten-zca 3072 (dataset 'cifar10'
#   applies them); the baselines run 20 epochs with decay from 0.5 ("overfits easily").
_CONV_SMALL = ("convf:32:5:1:1-maxpool:2:2-convv:64:3:1:1-convf:64:3:1:1-maxpool:2:2-"
               "convv:128:3:1:1-convv:10:1:1:1-globalmeanpool:6:6-fc:10")
_CONV_FC = ("convv:1000:26:1:1-convv:500:1:1:1-convv:250:1:1:1-convv:250:1:1:1-"
            "convv:250:1:1:1-convv:10:1:1:1-globalmeanpool:0")
_CONV_LARGE = ("convv:96:3:1:1-convf:96:3:1:1-convf:96:3:1:1-maxpool:2:2-convv:192:3:1:1-"
               "convf:192:3:1:1-convv:192:3:1:1-maxpool:2:2-convv:192:3:1:1-convv:192:1:1:1-"
               "convv:10:1:1:1-globalmeanpool:0")
_CIFAR = {"family": "conv", "conv_layers": _CONV_LARGE, "input_shape": (32, 32, 3),
          "activation": "leakyrelu", "top_c": False}

#: Named presets: the paper's settings (LADDER_SPEC.md): permutation-invariant MNIST, then conv.
PRESETS: dict[str, TrainConfig] = {
    "full_100": _paper_mnist(_SEMI_WEIGHTS_100, 0.3, 100),
    "full_1000": _paper_mnist(_SEMI_WEIGHTS_1000, 0.2, 1000),
    "full_50": _paper_mnist(_SEMI_WEIGHTS_1000, 0.3, 50),
    "full_all": _paper_mnist((1000.0, 1.0, 0.01, 0.01, 0.01, 0.01, 0.01), 0.3, "all"),
    "bottom_100": _paper_mnist((5000.0,) + (0.0,) * 6, 0.3, 100),
    "gamma_100": _paper_mnist(_TOP_ONLY + (0.5,), 0.3, 100),
    "baseline_100": _paper_mnist((0.0,) * 7, 0.5, 100),
    "baseline_1000": _paper_mnist((0.0,) * 7, 0.5, 1000),
    "baseline_all": _paper_mnist((0.0,) * 7, 0.5, "all"),
    "amlp_100": _paper_mnist(_SEMI_WEIGHTS_100, 0.3, 100).replace(model={"combinator": "amlp"}),
    "conv_small_gamma_100": TrainConfig(model=ModelConfig(
        family="conv", conv_layers=_CONV_SMALL, denoise_weights=(0.0,) * 9 + (1.0,),
        noise_std=0.3), num_labels=100),
    "conv_small_baseline_100": TrainConfig(model=ModelConfig(
        family="conv", conv_layers=_CONV_SMALL, denoise_weights=0.0,
        noise_std=(INPUT_NOISE,) + (0.45,) * 9), num_labels=100, epochs=20, decay_start=0.5),
    "conv_fc_100": TrainConfig(model=ModelConfig(
        family="conv", conv_layers=_CONV_FC, denoise_weights=(1000.0, 10.0) + (0.1,) * 6,
        noise_std=0.3), num_labels=100),
    "conv_large_gamma_4000": TrainConfig(model=ModelConfig(
        **_CIFAR, denoise_weights=(0.0,) * 12 + (4.0,), noise_std=0.3),
        num_labels=4000, epochs=70, decay_start=0.86, dataset="cifar10"),
    "conv_large_baseline_4000": TrainConfig(model=ModelConfig(
        **_CIFAR, denoise_weights=0.0, noise_std=0.3),
        num_labels=4000, epochs=20, decay_start=0.5, dataset="cifar10"),
}


def preset(name: str) -> TrainConfig:
    """The named preset; raises ConfigError listing the valid names."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
