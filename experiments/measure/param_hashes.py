"""sha256 of the trained parameters after a few paper steps: the check that a refactor of the
engine left the numbers unchanged (same machine, same library versions).

    python -m experiments.measure.param_hashes --steps=30

Prints one line per run: full_100, gamma_100, baseline_100 (seed 0) and a 3-replica group of
full_100 (seeds 0, 1, 2), each trained through the library's own loop in a temporary workdir.
"""

from __future__ import annotations

import hashlib
import tempfile

import jax
import numpy as np
from absl import app, flags

from experiments import entry
from ladder_jax import config as config_lib
from ladder_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 30, "Training steps per run.", lower_bound=1)


def params_sha256(params) -> str:
    """sha256 over the raw bytes of every parameter leaf, in pytree order."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def run(argv: list[str]) -> int:
    del argv
    dataset = train.load_dataset(config_lib.preset("full_100"))
    for name in ("full_100", "gamma_100", "baseline_100"):
        cfg = config_lib.preset(name).replace(max_steps=FLAGS.steps)
        with tempfile.TemporaryDirectory() as workdir:
            result = train.train_and_evaluate(cfg, workdir, dataset=dataset)
        print(f"{name:<22} {params_sha256(result.state.params)}")
    cfgs = [config_lib.preset("full_100").replace(max_steps=FLAGS.steps, seed=s)
            for s in range(3)]
    with tempfile.TemporaryDirectory() as workdir:
        runs = train.train_group(cfgs, workdir, dataset)
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[r.state.params for r in runs])
    print(f"{'full_100 x3 replicas':<22} {params_sha256(stacked)}")
    return 0


main = entry.entry_point(run)

if __name__ == "__main__":
    app.run(main)
