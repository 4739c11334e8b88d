"""Label-efficiency sweep: preset families x label counts x seeds, one workdir per cell.

    python -m experiments.label_sweep --num_labels=100,1000,all --seeds=0,1 --epochs=1

Writes <sweep_dir>/results.csv, summary.md and label_efficiency.png (with matplotlib:
pip install 'ladder_jax[plots]'). Re-running skips finished cells and resumes unfinished
ones; a failing cell is reported and the others still run (exit code 1 if any failed).
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags

from experiments import common
from ladder_jax import config as config_lib
from ladder_jax import data, sweep

FLAGS = flags.FLAGS

flags.DEFINE_string("sweep_dir", "runs/label_sweep", "Directory of the sweep: one workdir per "
                    "cell (<preset>_labels<N>_seed<S>) plus results.csv, summary.md and "
                    "label_efficiency.png.")
flags.DEFINE_list("num_labels", ["20", "50", "100", "600", "1000", "3000", "all"],
                  "Label counts (multiples of 10, or 'all').")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each is a separate run per cell.")
flags.DEFINE_list("presets", ["full", "gamma", "baseline"],
                  "Preset families (" + ", ".join(sweep.preset_families()) + "): the paper's "
                  "lambdas and noise for the cell's label count where the paper gives them "
                  "(full_50, full_100, full_1000, full_all), and the family's 100-label preset "
                  "otherwise (e.g. full at 20, 600 or 3000 labels uses full_100's settings; "
                  "gamma and baseline always use gamma_100 / baseline_100).")
flags.DEFINE_integer("epochs", None, "Epochs per cell. Default: the preset's (150).",
                     lower_bound=1)
flags.DEFINE_integer("max_steps", None, "Stop every cell after this many steps; the "
                     "learning-rate schedule still spans --epochs.", lower_bound=0)
flags.DEFINE_float("lr", None, "Adam learning rate before the decay. Paper: 0.002.")
flags.DEFINE_integer("batch_size", None, "Labeled (and unlabeled) examples per step.",
                     lower_bound=1)
flags.DEFINE_integer("eval_every", None, "Evaluate on the test set every N epochs.",
                     lower_bound=1)
flags.DEFINE_integer("checkpoint_every", None, "Steps between checkpoints (0: at evaluations "
                     "and the end only).", lower_bound=0)
flags.DEFINE_integer("steps_per_call", None, "Training steps per compiled call (lax.scan).",
                     lower_bound=1)
flags.DEFINE_enum("data_source", None, list(data.SOURCES), "Where MNIST comes from: pypi "
                  "(offline wheel cache), idx (--data_dir of IDX files) or tfds.")
flags.DEFINE_string("data_dir", None, "Directory of IDX files (idx) or TFDS data_dir (tfds).")
flags.DEFINE_list("layer_sizes", None, "Override the network widths (input first) for quick "
                  "sweeps, e.g. 784,100,10; the presets' per-layer lambdas and noise keep "
                  "their bottom layers and their top layer.")

flags.DEFINE_string("compilation_cache_dir", None, "JAX persistent compilation cache (cells "
                    "with identical compiled programs, and re-runs, reuse them). Default: "
                    "$JAX_COMPILATION_CACHE_DIR if set, else <sweep_dir>/jax_cache; 'none' "
                    "turns it off.")


flags.DEFINE_bool("replicas", True, "Train the seeds of a cell shape (same preset and label "
                  "count) as replicas in one compiled program; --noreplicas runs every cell "
                  "on its own.")


def _ints(name: str, values: list[str]) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise config_lib.ConfigError(
            f"--{name}={','.join(values)} must be integers separated by commas") from None


def cells_from_flags() -> list[sweep.Cell]:
    """The sweep's cells from the flags."""
    changes = {}
    for name in ("epochs", "max_steps", "lr", "eval_every", "checkpoint_every",
                 "steps_per_call", "data_source", "data_dir"):
        if FLAGS[name].value is not None:
            changes[name] = FLAGS[name].value
    if FLAGS.batch_size is not None:
        changes["batch_size"] = changes["unlabeled_batch_size"] = FLAGS.batch_size
    layer_sizes = None if FLAGS.layer_sizes is None else _ints("layer_sizes", FLAGS.layer_sizes)
    return sweep.build_grid(FLAGS.presets, FLAGS.num_labels, _ints("seeds", FLAGS.seeds),
                            layer_sizes=layer_sizes, **changes)


def main(argv: list[str]) -> int:
    common.quiet_library_logs()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every option is a --flag")
    command = shlex.join(["python", "-m", "experiments.label_sweep", *sys.argv[1:]])
    try:
        cells = cells_from_flags()
        cache = FLAGS.compilation_cache_dir
        if cache is None and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            cache = os.path.join(FLAGS.sweep_dir, "jax_cache")
        if cache and cache.lower() != "none":
            sweep.enable_compilation_cache(cache)
        run_group = sweep.run_cells_as_replicas if FLAGS.replicas else None
        outcome = sweep.run_sweep(cells, FLAGS.sweep_dir, command=command,
                                  run_group=run_group)
    except (config_lib.ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed = outcome.failed
    print(f"{len(cells) - len(failed)}/{len(cells)} cells finished in "
          f"{outcome.wall_time_s / 60:.1f} min; results in {outcome.outputs['csv']}")
    for r in failed:
        print(f"failed: {r.cell.name}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(main)
