"""Label-efficiency sweep: preset families x label counts x seeds, one workdir per cell.

    python -m experiments.label_sweep --num_labels=100,1000,all --seeds=0,1 --epochs=1

Writes <sweep_dir>/results.csv, summary.md (its protocol and dataset first; per label count
and family the final test error, the median over the last 10 evaluations and, with
--num_validation, the test error at the lowest validation error; then each seed's figures)
and label_efficiency.png (with matplotlib: pip install 'ladder_jax[plots]'). Re-running
skips finished cells and resumes unfinished ones; a failing cell is reported and the others
still run (exit code 1 if any failed). --report_only rewrites those files from what the
directory holds, without training. --splits=100=m100.json,1000=m1000.json trains every seed
of a label count on that split manifest's rows.
"""

from __future__ import annotations

from absl import app, flags

from experiments import compile_cache, entry, shared_flags, sweep_driver
from ladder_jax import config, sweep

FLAGS = flags.FLAGS

flags.DEFINE_string("sweep_dir", "runs/label_sweep", "Directory of the sweep: one workdir per "
                    "cell (<family>_labels<N>_seed<S>) plus results.csv, summary.md and "
                    "label_efficiency.png.")
flags.DEFINE_list("num_labels", ["20", "50", "100", "600", "1000", "3000", "all"],
                  "Label counts (multiples of the class count, or 'all').")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each is a separate run per cell.")
flags.DEFINE_list("presets", ["full", "gamma", "baseline"],
                  "Preset families (" + ", ".join(sweep.preset_families()) + "): the paper's "
                  "settings for the cell's label count where the paper gives them (full_50, "
                  "full_100, full_1000, full_all, ...), and the family's 100-label preset "
                  "otherwise.")
shared_flags.define_model_flags(preset=False)
shared_flags.define_data_flags(per_run=False)
shared_flags.define_cell_splits_flag(
    "SHAPE is a label count (100=m100.json: every family at 100 labels) or a family at one "
    "(full_100=m.json, which wins over the label count's).")
shared_flags.define_schedule_flags()
shared_flags.define_output_flags()
shared_flags.define_report_flag()
shared_flags.define_replicas_flag()
shared_flags.install_grouped_help()


def cells_from_flags() -> list[sweep.Cell]:
    """The sweep's cells from the flags."""
    if FLAGS.conv_layers is not None:
        raise config.ConfigError("--conv_layers sets one network; a sweep takes its families' "
                                 "networks (use experiments.train for one conv net)")
    layer_sizes = None
    if FLAGS.layer_sizes is not None:
        layer_sizes = shared_flags.ints_flag("layer_sizes")
    return sweep.build_grid(FLAGS.presets, FLAGS.num_labels, shared_flags.ints_flag("seeds"),
                            layer_sizes=layer_sizes,
                            model_changes=shared_flags.model_changes_from_flags(None),
                            splits=sweep.parse_splits(FLAGS.splits),
                            **shared_flags.train_changes_from_flags())


def run(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every option is a --flag")
    return sweep_driver.run_sweep_or_report(
        "experiments.label_sweep", cells_from_flags(), FLAGS.sweep_dir,
        shared_flags.run_group_from_flags(),
        lambda results, final, command: sweep.write_outputs(results, FLAGS.sweep_dir,
                                                            command=command, plot=final))


main = entry.entry_point(run, lambda: compile_cache.cache_dir(FLAGS.compilation_cache_dir,
                                                               FLAGS.sweep_dir))

if __name__ == "__main__":
    app.run(main)
