"""ladder_jax.flax_interop: a trained run's clean encoder as a Flax NNX module, on real MNIST
(its first 6000 training and 1000 test images) with a tiny dense Gamma-model (784-32-10)
and a tiny conv one (tests/parallel_worker.py's CONV_SPEC, 28 -> 12x12x8 -> 6x6x8 ->
4x4x10 -> 10), each trained a few steps in a tmp directory:

- the module's classes equal train.predict_from_workdir's and its logits the library's
  (models.encode with the population statistics), both families;
- features(layer) are the trace's h_l; a Flax head on the frozen ladder trains with optax
  over nnx.state(model, nnx.Param): its loss falls, the head changes and the ladder's
  parameters and statistics stay bit-identical; with trainable=True the encoder changes;
- recompute_population_stats over the run's unlabeled set gives its saved statistics, and
  a dataset's fitted preprocessing (CIFAR-10's) is applied as predict_from_workdir does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")

import parallel_worker as worker  # tests/ is on sys.path under pytest

from ladder_jax import config, datasets, flax_interop, models, train
from ladder_jax.datasets import base as datasets_base
from ladder_jax.train import job as job_lib

STEPS = 20  # one compiled call each: enough to move the parameters off their init
NUM_IMAGES = 512  # test images compared


def mlp_config() -> config.TrainConfig:
    # the Gamma-model (a denoising cost at the top only): the encoder is the full ladder's,
    # and its training step (no decoder below the top) is cheaper to compile
    return config.preset("full_100").replace(
        model={"layer_sizes": (784, 32, 10), "denoise_weights": (0.0, 0.0, 1.0),
               "noise_std": 0.3},
        batch_size=100, unlabeled_batch_size=100, epochs=1, max_steps=STEPS,
        steps_per_call=STEPS, checkpoint_every=STEPS)


def conv_config() -> config.TrainConfig:
    return config.preset("conv_small_gamma_100").replace(
        model={"conv_layers": worker.CONV_SPEC, "denoise_weights": worker.CONV_GAMMA,
               "noise_std": 0.3},
        batch_size=worker.CONV_BATCH, unlabeled_batch_size=worker.CONV_BATCH,
        epochs=1, max_steps=STEPS, steps_per_call=STEPS,
        checkpoint_every=STEPS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_6000) -> dict[str, str]:
    """family -> the workdir of its tiny trained run."""
    dirs = {}
    for family, cfg in (("mlp", mlp_config()), ("conv", conv_config())):
        work = str(tmp_path_factory.mktemp(f"flax_{family}"))
        result = train.train_and_evaluate(cfg, work, dataset=mnist_6000)
        assert int(result.state.step) == STEPS
        dirs[family] = work
    return dirs


@pytest.fixture(scope="module")
def images(mnist) -> np.ndarray:
    return mnist.test_images[:NUM_IMAGES]


# Everything below runs compiled: an eager first pass of the conv net (one small program per
# operation) takes longer than compiling it whole.
@nnx.jit
def forward(model, x):
    return model(x)


@nnx.jit
def forward_preprocessed(model, x):
    return model(x, preprocessed=True)


def library_logits(work: str, x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """The run's logits and log-probabilities for preprocessed ``x``, by the library."""
    cfg, state, bn_stats = train.load_run(work)

    @jax.jit
    def compute(params, stats, x):
        return (models.encode(params, cfg.model, x, bn_stats=stats).logits,
                models.predict_log_probs(params, cfg.model, x, stats))

    return tuple(np.asarray(a) for a in compute(state.params, bn_stats, x))


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_module_predicts_and_computes_the_logits_the_library_does(runs, images, family):
    work = runs[family]
    model = flax_interop.from_workdir(work)
    assert isinstance(model, nnx.Module) and model.model_config.family == family
    logits = np.asarray(forward(model, images))
    x = datasets_base.preprocess(jnp.asarray(images), None)
    expected, log_probs = library_logits(work, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.nn.log_softmax(logits)), log_probs,
                               rtol=1e-5, atol=1e-5)
    predicted = train.predict_from_workdir(work, images)
    np.testing.assert_array_equal(logits.argmax(-1), predicted)
    assert len(np.unique(predicted)) > 1  # a trained model, not one class for every image


def test_grey_images_and_preprocessed_inputs_give_the_same_logits(runs, images):
    model = flax_interop.from_workdir(runs["mlp"])
    logits = np.asarray(forward(model, images))
    np.testing.assert_allclose(np.asarray(forward(model, images[..., 0])), logits,
                               rtol=1e-6, atol=1e-6)  # [N, H, W]
    x = datasets_base.preprocess(jnp.asarray(images), None)
    np.testing.assert_allclose(np.asarray(forward_preprocessed(model, x)), logits,
                               rtol=1e-6, atol=1e-6)


def test_variables_are_frozen_params_and_population_stats(runs):
    frozen = flax_interop.from_workdir(runs["conv"])
    assert not jax.tree_util.tree_leaves(nnx.state(frozen, nnx.Param))
    # CONV_SPEC: weights at the two convs (layers 1, 3), beta there and at the top (4)
    assert sorted(nnx.state(frozen, flax_interop.FrozenParam).keys()) == [
        "W_1", "W_3", "beta_1", "beta_3", "beta_4", "gamma"]
    _, state, bn_stats = train.load_run(runs["conv"])
    encoder = {role: state.params[role] for role in flax_interop.ENCODER_ROLES
               if role in state.params}
    params = nnx.state(frozen, flax_interop.FrozenParam)
    assert len(jax.tree_util.tree_leaves(params)) == len(jax.tree_util.tree_leaves(encoder))
    for got, want in zip(jax.tree_util.tree_leaves(frozen.encoder_params()),
                         jax.tree_util.tree_leaves(encoder)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    stats = nnx.state(frozen, nnx.BatchStat)
    assert len(jax.tree_util.tree_leaves(stats)) == 2 * frozen.num_layers
    for got, want in zip(frozen.bn_stats(), bn_stats):
        for a, b in zip(got[1:], want[1:]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    trainable = flax_interop.from_workdir(runs["conv"], trainable=True)
    assert (len(jax.tree_util.tree_leaves(nnx.state(trainable, nnx.Param)))
            == len(jax.tree_util.tree_leaves(encoder)))
    assert not jax.tree_util.tree_leaves(nnx.state(trainable, flax_interop.FrozenParam))


def test_features_are_the_layers_activations(runs, images):
    model = flax_interop.from_workdir(runs["conv"])
    top = model.num_layers

    @nnx.jit
    def passes(model, x):
        return model.trace(x), model.features(x), model.features(x, 1), model.features(x, -1)

    trace, last_hidden, first, softmax = passes(model, images)
    assert last_hidden.shape == (NUM_IMAGES, *model.layer_shapes[top - 1])  # a 4x4x10 map
    for got, want in ((last_hidden, trace.h[top - 1]), (first, trace.h[1]),
                      (softmax, jax.nn.softmax(trace.logits))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="not one of the ladder's layers"):
        model.features(images, top + 1)


class Classifier(nnx.Module):
    """A Flax model: the ladder's last hidden layer, then a dense head."""

    def __init__(self, ladder: flax_interop.LadderEncoder, num_classes: int, rngs: nnx.Rngs):
        self.ladder = ladder
        width = int(np.prod(ladder.layer_shapes[-2]))
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, images):
        h = self.ladder.features(images)
        return self.head(h.reshape(h.shape[0], -1))


def train_head(model: Classifier, images, labels, steps: int) -> list[float]:
    """``steps`` Adam steps over nnx.state(model, nnx.Param); the losses before each."""
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, rest):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params, rest)(images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, rest)
        losses.append(float(loss))
    nnx.update(model, params)
    return losses


def leaves(state) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(state)]


def test_a_flax_head_trains_on_the_frozen_ladder(runs, mnist):
    model = Classifier(flax_interop.from_workdir(runs["mlp"]), 10, nnx.Rngs(0))
    ladder_before = leaves(nnx.state(model.ladder))  # its parameters and statistics
    head_before = leaves(nnx.state(model.head, nnx.Param))
    losses = train_head(model, mnist.train_images[:256], mnist.train_labels[:256], steps=15)
    assert losses[-1] < 0.8 * losses[0], losses
    head_after = leaves(nnx.state(model.head, nnx.Param))
    assert all(not np.array_equal(a, b) for a, b in zip(head_before, head_after))
    ladder_after = leaves(nnx.state(model.ladder))
    assert len(ladder_after) == len(ladder_before) == 5 + 2 * 2  # W, beta x 2, gamma; stats
    for a, b in zip(ladder_before, ladder_after):
        np.testing.assert_array_equal(a, b)  # bit-identical


def test_a_trainable_ladder_is_fine_tuned_with_the_head(runs, mnist):
    """With trainable=True the layer below the features (W_1, beta_1 of 784-32-10) trains
    with the head; the layer above them (the top's W_2, beta_2, gamma) gets no gradient."""
    model = Classifier(flax_interop.from_workdir(runs["mlp"], trainable=True), 10,
                       nnx.Rngs(0))
    names = ("W_1", "beta_1", "W_2", "beta_2", "gamma")
    assert sorted(nnx.state(model.ladder, nnx.Param).keys()) == sorted(names)
    before = {name: np.asarray(getattr(model.ladder, name)[...]) for name in names}
    stats_before = leaves(nnx.state(model.ladder, nnx.BatchStat))
    losses = train_head(model, mnist.train_images[:256], mnist.train_labels[:256], steps=15)
    assert losses[-1] < 0.8 * losses[0], losses
    changed = {name: not np.array_equal(before[name], getattr(model.ladder, name)[...])
               for name in names}
    assert changed == {"W_1": True, "beta_1": True, "W_2": False, "beta_2": False,
                       "gamma": False}
    for a, b in zip(stats_before, leaves(nnx.state(model.ladder, nnx.BatchStat))):
        np.testing.assert_array_equal(a, b)  # the statistics are never trained


def test_recomputed_population_stats_are_the_runs_over_its_unlabeled_set(runs, mnist_6000):
    """The run's statistics are over its unlabeled set (all 6000 training images here)."""
    model = flax_interop.from_workdir(runs["mlp"])
    saved = model.bn_stats()
    model.recompute_population_stats(mnist_6000.train_images)
    for got, want in zip(model.bn_stats(), saved):
        for a, b in zip(got[1:], want[1:]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    model.recompute_population_stats(mnist_6000.train_images[:1000])
    assert not np.allclose(np.asarray(model.bn_stats().mean[1]), np.asarray(saved.mean[1]))


def test_a_datasets_fitted_preprocessing_is_applied_as_predict_from_workdir_does(
        runs, images, mnist_6000, monkeypatch):
    """A run whose dataset has a fitted preprocessing (CIFAR-10's GCN + ZCA; here a made-up
    one on the MNIST run, its dataset loader stubbed): the module applies it to uint8
    images, as train.predict_from_workdir does."""
    rng = np.random.default_rng(0)
    prep = datasets_base.Preprocessing(
        55.0, rng.normal(0, 0.01, 784).astype(np.float32),
        (np.eye(784) + rng.normal(0, 0.01, (784, 784))).astype(np.float32))
    monkeypatch.setattr(datasets, "has_preprocessing", lambda name: True)
    monkeypatch.setattr(job_lib, "load_dataset",
                        lambda cfg: dataclasses.replace(mnist_6000, preprocessing=prep))
    model = flax_interop.from_workdir(runs["mlp"])
    np.testing.assert_array_equal(np.asarray(model.zca_whitening[...]), prep.whitening)
    logits = np.asarray(forward(model, images))
    x = jax.jit(datasets_base.preprocess)(jnp.asarray(images), prep)
    np.testing.assert_allclose(np.asarray(nnx.jit(type(model).preprocess)(model, images)),
                               np.asarray(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, library_logits(runs["mlp"], x)[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(logits.argmax(-1), train.predict_from_workdir(runs["mlp"],
                                                                                images))
