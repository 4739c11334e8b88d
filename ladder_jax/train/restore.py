"""Reading trained runs back: the checkpoint's layout (one target for the loop and for
readers), a run's state and population statistics, and predictions from a run directory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax

from ladder_jax import datasets, models
from ladder_jax.config import TrainConfig
from ladder_jax.errors import ConfigError
from ladder_jax.train import evaluate as eval_lib
from ladder_jax.train import job as job_lib
from ladder_jax.train import workdir as wd
from ladder_jax.train.state import TrainState, init_state, make_optimizer


def checkpoint_item(state: TrainState, bn_stats_tree: Any) -> dict[str, Any]:
    """What a checkpoint holds: the (possibly stacked) state and population statistics
    (``evaluate.stats_to_tree`` form, stacked like the state)."""
    return {"state": state, "bn_stats": bn_stats_tree}


def initial_item(cfgs: Sequence[TrainConfig],
                 optimizer: optax.GradientTransformation | None = None) -> dict[str, Any]:
    """The checkpoint item of a job of ``cfgs`` at step 0 (on the host, stacked on a leading
    model axis when there are several): the loop's starting point and every restore target.

    Args:
      cfgs: the job's models.
      optimizer: the job's optimiser; any of the same structure serves as a target
        (default: ``make_optimizer(cfg, 1)``).
    """
    states = [init_state(c, optimizer or make_optimizer(c, 1)) for c in cfgs]
    stats = [eval_lib.stats_to_tree(eval_lib.empty_stats(c.model)) for c in cfgs]
    stack = job_lib.stack if len(cfgs) > 1 else (lambda trees: trees[0])
    return checkpoint_item(stack(states), stack(stats))


def as_state(restored: dict[str, Any]) -> TrainState:
    """The TrainState of a restored checkpoint item (orbax may hand back a dict)."""
    state = restored["state"]
    return TrainState(**state) if isinstance(state, dict) else state


def load_run(workdir: str, step: int | None = None
             ) -> tuple[TrainConfig, TrainState, models.BnStats]:
    """A run's config, train state and population statistics.

    Args:
      workdir: the run's directory; a member of a group (a replica, a sweep cell) is read
        from its group's stacked checkpoint.
      step: the checkpoint to read (default: the newest intact one).

    Returns:
      (config, state, statistics of the checkpoint's own parameters).
    """
    cfg = wd.read_config(workdir)
    state_dir, index, cfgs = wd.checkpoint_location(workdir)
    checkpoints = wd.Checkpoints(state_dir, cfg.keep_checkpoints)
    try:
        target = initial_item(cfgs)
        if step is not None:
            restored = checkpoints.restore(target, step)
        else:
            found = checkpoints.restore_newest_intact(target)
            if found is None:
                raise ConfigError(f"no checkpoint in {state_dir}; train it first")
            restored = found[0]
    finally:
        checkpoints.close()
    if len(cfgs) > 1:
        restored = jax.tree_util.tree_map(lambda x: x[index], restored)
    return cfg, as_state(restored), eval_lib.tree_to_stats(restored["bn_stats"])


def predict_from_workdir(workdir: str, images: Any) -> Any:
    """Predicted classes (int [N]) for uint8 images [N, H, W, C], with a trained run's newest
    model and its dataset's preprocessing (e.g. CIFAR-10's whitening)."""
    cfg, state, bn_stats = load_run(workdir)
    preprocessing = None
    if datasets.has_preprocessing(cfg.dataset):
        preprocessing = job_lib.load_dataset(cfg).preprocessing
    return eval_lib.predict(state.params, cfg.model, bn_stats, images, preprocessing)
