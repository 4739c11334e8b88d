"""A trained ladder's clean encoder as a Flax NNX module, to drop into a Flax model.

The library itself works on plain parameter pytrees; this module (which needs the ``flax``
extra, ``pip install -e '.[flax]'``) wraps a run's encoder parameters and population
batch-norm statistics in ``nnx`` variables and computes with the library's own functions:
``LadderEncoder.__call__`` rebuilds the parameter pytree from its variables and runs
``ladder_jax.models.encode`` with ``bn_stats``, the clean pass ``models.predict_log_probs``
and ``train.predict_from_workdir`` run. Nothing of the network is written again here.

Variables of a ``LadderEncoder``, named by role and layer l = 1..L as in the paper (``W_1``
is the first layer's weights in either family; a conv net's pooling layers have none):

- ``W_*``, ``beta_*``, ``gamma``: the encoder's parameters, ``nnx.Param`` when built with
  ``trainable=True``, else ``FrozenParam`` (an ``nnx.Variable`` that is no ``nnx.Param``,
  so ``nnx.state(model, nnx.Param)``, ``nnx.grad`` and ``nnx.Optimizer`` leave it out; its
  value is also cut from gradients in the forward pass);
- ``bn_mean_<l>``, ``bn_var_<l>`` (l = 1..L): the population statistics, ``PopulationStat``
  (an ``nnx.BatchStat``), never trained; ``recompute_population_stats`` refreshes them after
  fine-tuning;
- ``zca_mean``, ``zca_whitening``: the dataset's fitted preprocessing where it has one
  (CIFAR-10's contrast normalisation and ZCA), ``PreprocessingConstant``.

The decoder and the combinators are not part of the module: the clean encoder does not use
them.

Example::

    from flax import nnx
    from ladder_jax import flax_interop

    ladder = flax_interop.from_workdir("runs/full_100_labels100_seed0")
    logits = ladder(images_uint8)             # [N, 10]: the run's clean encoder
    hidden = ladder.features(images_uint8)    # [N, 250]: h_(L-1), the last hidden layer

    class Classifier(nnx.Module):             # a Flax model on the frozen ladder
        def __init__(self, ladder, rngs):
            self.ladder, self.head = ladder, nnx.Linear(250, 5, rngs=rngs)

        def __call__(self, images):
            return self.head(self.ladder.features(images))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
    from flax import nnx
except ImportError as error:  # the optional extra
    raise ImportError("ladder_jax.flax_interop needs Flax: pip install -e '.[flax]' "
                      "(or pip install 'flax>=0.12.2,<0.13')") from error

from ladder_jax import datasets, models, train
from ladder_jax.config import ModelConfig
from ladder_jax.datasets import base as datasets_base
from ladder_jax.train import job as job_lib

__all__ = ["ENCODER_ROLES", "FrozenParam", "LadderEncoder", "PopulationStat",
           "PreprocessingConstant", "from_workdir"]

#: The parameter roles the clean encoder reads (the decoder's 'V' and 'g' are left out).
ENCODER_ROLES = ("W", "beta", "gamma")


class FrozenParam(nnx.Variable):
    """A ladder parameter kept fixed: a variable that is not an ``nnx.Param``, so filters on
    ``nnx.Param`` (nnx.state, nnx.grad, nnx.Optimizer's default) do not select it."""


class PopulationStat(nnx.BatchStat):
    """A population batch-norm mean or variance of one layer's pre-activations."""


class PreprocessingConstant(nnx.Variable):
    """A fitted preprocessing array of the run's dataset (the GCN mean or the ZCA matrix)."""


def _leaf_name(path: tuple[Any, ...]) -> str:
    """The attribute name of the parameter leaf at ``path``: its role, then its layer l.

    A family keeps per-layer parameters as a list over layers 1..L (mlp: W[l - 1] is W_l)
    or as a dict keyed by layer number (conv); both give ``<role>_<l>``, e.g. ``W_1``.
    """
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx + 1))
        elif isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key).strip(".[]'\""))
    return "_".join(parts)


def _layer_index(layer: int, num_layers: int) -> int:
    """``layer`` (Python-style negative allowed) as a layer number 0..L, or ValueError."""
    if not -(num_layers + 1) <= layer <= num_layers:
        raise ValueError(f"layer {layer} is not one of the ladder's layers 0..{num_layers} "
                         f"(or -{num_layers + 1}..-1)")
    return layer % (num_layers + 1)


class LadderEncoder(nnx.Module):
    """A trained ladder's clean encoder with population batch-norm statistics.

    Attributes:
        model_config: the ladder's ModelConfig (family, layers, ...).
        trainable: whether the encoder's parameters are ``nnx.Param`` (else FrozenParam).
        num_layers: L; layers are numbered 0 (the input) .. L (the softmax output).
        layer_shapes: per-example shape of each layer's output, l = 0..L.
    """

    def __init__(self, model_config: ModelConfig, params: models.Params,
                 bn_stats: models.BnStats, *,
                 preprocessing: datasets_base.Preprocessing | None = None,
                 trainable: bool = False):
        """Wraps a ladder's parameters and statistics in nnx variables.

        Args:
            model_config: the ladder's ModelConfig (``TrainConfig.model``).
            params: its parameters (``TrainState.params``); only the encoder's roles
                (ENCODER_ROLES) are kept.
            bn_stats: population statistics of those parameters (``train.load_run``'s
                third value, or ``models.population_stats``).
            preprocessing: the dataset's fitted preprocessing (``Dataset.preprocessing``),
                or None for pixels / 255.
            trainable: make the encoder's parameters ``nnx.Param`` (fine-tuning) instead of
                FrozenParam.
        """
        self.model_config = model_config
        self.trainable = trainable
        self.num_layers = model_config.num_layers
        self.layer_shapes = tuple(tuple(s) for s in model_config.layer_shapes)
        encoder = {role: params[role] for role in ENCODER_ROLES if role in params}
        leaves, self._param_treedef = jax.tree_util.tree_flatten_with_path(encoder)
        self._param_names = tuple(_leaf_name(path) for path, _ in leaves)
        kind = nnx.Param if trainable else FrozenParam
        for name, (_, leaf) in zip(self._param_names, leaves):
            setattr(self, name, kind(jnp.asarray(leaf)))
        for layer in range(1, self.num_layers + 1):
            setattr(self, f"bn_mean_{layer}", PopulationStat(jnp.asarray(bn_stats.mean[layer])))
            setattr(self, f"bn_var_{layer}", PopulationStat(jnp.asarray(bn_stats.var[layer])))
        self._gcn_scale = None if preprocessing is None else float(preprocessing.gcn_scale)
        if preprocessing is not None:
            self.zca_mean = PreprocessingConstant(jnp.asarray(preprocessing.mean, jnp.float32))
            self.zca_whitening = PreprocessingConstant(
                jnp.asarray(preprocessing.whitening, jnp.float32))

    # ------------------------------------------------------------ the library's pytrees

    def encoder_params(self) -> models.Params:
        """The encoder's parameters as the library's pytree (its ENCODER_ROLES).

        Returns:
            {'W': ..., 'beta': ..., 'gamma': ...} in the family's layout, the arrays of the
            module's variables; frozen ones are cut from gradients.
        """
        values = [getattr(self, name)[...] for name in self._param_names]
        if not self.trainable:
            values = [jax.lax.stop_gradient(v) for v in values]
        return jax.tree_util.tree_unflatten(self._param_treedef, values)

    def bn_stats(self) -> models.BnStats:
        """The population statistics as the library's BnStats (None at layer 0).

        Returns:
            BnStats with mean[l], var[l] of shape [c_l], l = 1..L.
        """
        layers = range(1, self.num_layers + 1)
        mean = [jax.lax.stop_gradient(getattr(self, f"bn_mean_{i}")[...]) for i in layers]
        var = [jax.lax.stop_gradient(getattr(self, f"bn_var_{i}")[...]) for i in layers]
        return models.BnStats([None, *mean], [None, *var])

    def preprocessing(self) -> datasets_base.Preprocessing | None:
        """The dataset's fitted preprocessing, or None (pixels / 255).

        Returns:
            A datasets Preprocessing holding the module's arrays, or None.
        """
        if self._gcn_scale is None:
            return None
        return datasets_base.Preprocessing(self._gcn_scale, self.zca_mean[...],
                                           self.zca_whitening[...])

    # ------------------------------------------------------------------- computing

    def preprocess(self, images: Any) -> jax.Array:
        """uint8 images as the model's inputs, with the run's dataset preprocessing.

        Args:
            images: uint8 [N, H, W, C] (or [N, H, W] grey).

        Returns:
            float32 [N, H, W, C]: pixels / 255, or the dataset's fitted preprocessing.
        """
        images = jnp.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        return datasets_base.preprocess(images, self.preprocessing())

    def trace(self, images: Any, *, preprocessed: bool = False) -> models.EncoderTrace:
        """The clean encoder pass with population statistics (``models.encode``).

        Args:
            images: uint8 [N, H, W, C] (or [N, H, W]); or, with ``preprocessed``, the
                float inputs the model takes (``preprocess``'s output).
            preprocessed: ``images`` are already preprocessed.

        Returns:
            The pass's EncoderTrace: z[l], h[l] per layer, the statistics, the logits.
        """
        x = jnp.asarray(images) if preprocessed else self.preprocess(images)
        return models.encode(self.encoder_params(), self.model_config, x,
                             bn_stats=self.bn_stats())

    def __call__(self, images: Any, *, preprocessed: bool = False) -> jax.Array:
        """The ladder's logits: the clean encoder with population batch-norm statistics.

        Args:
            images: uint8 [N, H, W, C] (or [N, H, W]); or, with ``preprocessed``, float
                inputs.
            preprocessed: ``images`` are already preprocessed.

        Returns:
            [N, classes] logits; their log_softmax is ``models.predict_log_probs``.
        """
        return self.trace(images, preprocessed=preprocessed).logits

    def features(self, images: Any, layer: int = -2, *, preprocessed: bool = False
                 ) -> jax.Array:
        """A layer's activations h_l, to use the ladder as a feature extractor.

        Args:
            images: uint8 [N, H, W, C] (or [N, H, W]); or, with ``preprocessed``, float
                inputs.
            layer: 0 (the input) .. L (the softmax), or counted from the top: -2 (the
                default) is h_(L-1), the last hidden layer.
            preprocessed: ``images`` are already preprocessed.

        Returns:
            [N, *layer_shapes[layer]] ([N, n_l] dense, [N, H, W, C] for a conv map;
            ``reshape(N, -1)`` flattens it for a dense head).

        Raises:
            ValueError: for a layer outside 0..L (or -(L + 1)..-1).
        """
        index = _layer_index(layer, self.num_layers)
        return self.trace(images, preprocessed=preprocessed).h[index]

    def recompute_population_stats(self, images: Any) -> None:
        """Sets the population statistics to those of the current parameters over
        ``images`` (after fine-tuning a trainable encoder; ``train.population_stats``).

        Args:
            images: uint8 [N, H, W, C], e.g. the training images.
        """
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        stats = train.population_stats(self.encoder_params(), self.model_config,
                                          jnp.asarray(images), np.arange(images.shape[0]),
                                          self.preprocessing())
        for layer in range(1, self.num_layers + 1):
            getattr(self, f"bn_mean_{layer}").set_value(jnp.asarray(stats.mean[layer]))
            getattr(self, f"bn_var_{layer}").set_value(jnp.asarray(stats.var[layer]))


def from_workdir(workdir: str, *, trainable: bool = False, step: int | None = None
                 ) -> LadderEncoder:
    """A trained run's clean encoder as an NNX module (``train.load_run``).

    The run's config names the family (mlp or conv) and the dataset; its preprocessing is
    the one ``train.predict_from_workdir`` applies (CIFAR-10's whitening is loaded with the
    dataset, from its cache).

    Args:
        workdir: the run's directory (a member of a group: its own run directory).
        trainable: the encoder's parameters as ``nnx.Param`` (to fine-tune them) instead of
            FrozenParam.
        step: the checkpoint to read (default: the newest intact one).

    Returns:
        A LadderEncoder whose logits are the run's, with its population statistics.

    Raises:
        ConfigError: for a workdir without a checkpoint.
    """
    cfg, state, bn_stats = train.load_run(workdir, step)
    preprocessing = None
    if datasets.has_preprocessing(cfg.dataset):
        preprocessing = job_lib.load_dataset(cfg).preprocessing
    return LadderEncoder(cfg.model, state.params, bn_stats, preprocessing=preprocessing,
                         trainable=trainable)
