"""Every seed-derived choice of rows: labeled / validation sets (numpy) and batch order (jax).

The choices are pinned (tests/test_datasets.py): a run resumes, and reproduces, with the same
rows on every machine.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ladder_jax.config import parse_num_labels
from ladder_jax.datasets.base import DataError
from ladder_jax.errors import ConfigError

# fold_in(key(seed), stream) gives each use of the seed its own independent stream.
PARAMS_STREAM = 0  # parameter initialisation
LABELED_STREAM = 1  # order of the labeled rows
UNLABELED_STREAM = 2  # order of the unlabeled rows
NOISE_STREAM = 3  # per-step noise: fold_in(noise_key(seed), step)


def _labeled_count(num_labels: int | str) -> int | None:
    """``num_labels`` read as the config reads it (config.parse_num_labels): a positive int,
    or None for 'all' / -1 (every index). DataError (one line) for anything else."""
    try:
        n = parse_num_labels(num_labels)
    except ConfigError as e:
        raise DataError(str(e)) from None
    return None if n == "all" else n


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Returns `labels` as an array; raises DataError unless it is 1-D integer."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}"
        )
    return labels


def _balanced_pick(
    labels: np.ndarray,
    n: int,
    rng: np.random.Generator,
    num_classes: int,
    exclude: np.ndarray | None,
    name: str,
) -> np.ndarray:
    """Returns sorted int64 indices [n]: n / num_classes random indices of each class."""
    if n <= 0:
        raise DataError(f"{name}={n} must be positive (or 'all' / -1 for every example)")
    if n % num_classes:
        raise DataError(
            f"{name}={n} is not divisible by {num_classes} classes; "
            f"pick a multiple of {num_classes}"
        )
    allowed = np.ones(labels.shape[0], dtype=bool)
    if exclude is not None and len(exclude):
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    per_class = n // num_classes
    picked = []
    for c in range(num_classes):
        candidates = np.flatnonzero((labels == c) & allowed)
        if candidates.size < per_class:
            available = int(np.bincount(labels[allowed], minlength=num_classes).min())
            raise DataError(
                f"{name}={n} needs {per_class} examples of class {c} but only "
                f"{candidates.size} are available; pick at most {available * num_classes}"
            )
        picked.append(rng.permutation(candidates)[:per_class])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def select_labeled(
    labels: np.ndarray,
    num_labels: int | str,
    seed: int,
    num_classes: int = 10,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Returns sorted int64 indices into `labels` [num_labels]: a class-balanced random subset.

    num_labels: a positive multiple of `num_classes` (int or digit string), or "all" / -1 for
    every index not in `exclude`. Deterministic across machines: for each class in order, the
    class's indices (minus `exclude`) are permuted by np.random.default_rng(seed).
    """
    labels = _check_labels(labels)
    n = _labeled_count(num_labels)
    if n is None:
        everything = np.arange(labels.shape[0], dtype=np.int64)
        if exclude is None:
            return everything
        return np.setdiff1d(everything, np.asarray(exclude, dtype=np.int64))
    return _balanced_pick(
        labels, n, np.random.default_rng(seed), num_classes, exclude, "num_labels"
    )


def split_validation(
    labels: np.ndarray, num_validation: int, seed: int, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (train_idx, val_idx), sorted int64, disjoint, together all of `labels`.

    val_idx [num_validation] is class-balanced; num_validation=0 gives an empty one. Draws from
    np.random.default_rng((seed, 1)) so it is independent of select_labeled(..., seed).
    DataError (one line) unless num_validation is a whole number >= 0.
    """
    labels = _check_labels(labels)
    if isinstance(num_validation, bool) or not isinstance(num_validation, numbers.Integral) \
            or num_validation < 0:
        raise DataError(f"num_validation={num_validation!r} must be a whole number >= 0")
    n = int(num_validation)
    everything = np.arange(labels.shape[0], dtype=np.int64)
    if n == 0:
        return everything, np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng((seed, 1))
    val = _balanced_pick(labels, n, rng, num_classes, None, "num_validation")
    return np.setdiff1d(everything, val), val


def index_sets(
    labels: np.ndarray,
    num_labels: int | str,
    num_validation: int,
    seed: int,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (labeled rows, training rows, validation rows), each sorted int64.

    The validation rows are split off first; the labeled rows are then picked from the rest,
    so the two never overlap. The training rows are every row not in validation.
    """
    train_rows, val_rows = split_validation(labels, num_validation, seed, num_classes)
    labeled = select_labeled(labels, num_labels, seed, num_classes, exclude=val_rows)
    return labeled, train_rows, val_rows


def stream_key(seed: int, stream: int) -> jax.Array:
    """Returns the key of `stream` (PARAMS_STREAM .. NOISE_STREAM) for run seed `seed`."""
    return jax.random.fold_in(jax.random.key(seed), stream)


def noise_key(seed: int) -> jax.Array:
    """Returns the key whose fold_in with the step draws that step's noise."""
    return stream_key(seed, NOISE_STREAM)


@functools.partial(jax.jit, static_argnames=("batch", "num_steps"))
def index_stream(
    key: jax.Array, pool: jax.Array, first_step: jax.Array, *, batch: int, num_steps: int
) -> jax.Array:
    """Rows of ``pool`` for steps first_step .. first_step + num_steps - 1: [num_steps, batch].

    The pool is read as an endless sequence of its permutations (permutation e drawn from
    fold_in(key, e)); step s takes positions s*batch .. s*batch + batch - 1 of it. So
    every example is seen once per pass, and any step's batch follows from (key, s) alone.
    """
    n = pool.shape[0]
    positions = first_step.astype(jnp.int64 if jax.config.jax_enable_x64 else jnp.int32) * batch
    positions = positions + jnp.arange(num_steps * batch)
    passes = positions // n
    first_pass = passes[0]
    num_passes = -(-num_steps * batch // n) + 1  # static upper bound on passes touched
    perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n))(
        first_pass + jnp.arange(num_passes)
    )
    rows = pool[perms[passes - first_pass, positions % n]]
    return rows.reshape(num_steps, batch)
