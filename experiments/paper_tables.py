"""The paper's tables with seeds: every row x its seeds, full schedules, the seeds of a row
as replicas in one compiled program, resumable cell by cell.

    python -m experiments.paper_tables                        # every row, 5 seeds
    python -m experiments.paper_tables --rows=full_100,baseline_100 --seeds=0,1,2,3,4
    python -m experiments.paper_tables --seeds=0,1,2 \
        --rows=full_100:0-4,baseline_100:0-4,gamma_100:0-4,full_1000,full_all   # own seeds
    python -m experiments.paper_tables --rows=full_100,baseline_100 --report_only   # so far

A row named 'preset:seeds' (S or A-B, joined by '+') trains those seeds; the others take
--seeds. Writes <table_dir>/results.csv, summary.md (its protocol first; per row the final
test error, the median over the last 10 evaluations and, with --num_validation, the test
error at the lowest validation error, each as mean ± sample std with n, beside the figure
published for that row on that dataset; then each seed's figures), test_error_curves.png
(median and min-max band over seeds per row, log y) and label_efficiency.png (the rows'
families against their label counts). Re-running
skips finished cells and resumes the others; --report_only rewrites those files from what
the directory holds, without training. --splits=full_100=m.json,baseline_100=m.json trains
every seed of those rows on that split manifest's rows.
"""

from __future__ import annotations

from absl import app, flags

from experiments import compile_cache, entry, shared_flags, sweep_driver
from ladder_jax import config, references, sweep

FLAGS = flags.FLAGS

#: The rows, in the paper's order: permutation-invariant MNIST, then the conv models.
MLP_ROWS = ["full_100", "full_1000", "full_all", "bottom_100", "gamma_100", "baseline_100",
            "baseline_1000", "baseline_all", "amlp_100"]
CONV_ROWS = [r for r in ("conv_small_gamma_100", "conv_fc_100", "conv_small_baseline_100")
             if r in config.PRESETS]

flags.DEFINE_string("table_dir", "runs/paper_tables", "Directory of the table: one workdir per "
                    "cell (<family>_labels<N>_seed<S>) plus results.csv, summary.md, "
                    "test_error_curves.png and label_efficiency.png.")
flags.DEFINE_list("rows", MLP_ROWS + CONV_ROWS, "Presets to run, one table row each, in "
                  "the order given (of " + ", ".join(config.PRESETS) + "). 'preset:seeds' "
                  "gives a row seeds of its own: S or A-B (both included), joined by '+', e.g. "
                  "full_100:0-4 or gamma_100:0+2+5; a row without them takes --seeds.")
flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds of every row that names none of "
                  "its own.")
shared_flags.define_data_flags(per_run=False)
shared_flags.define_cell_splits_flag(
    "SHAPE is a row (full_100=m.json) or a label count (100=m.json: every row at 100 "
    "labels; a row's own wins).")
shared_flags.define_schedule_flags()
shared_flags.define_output_flags()
shared_flags.define_report_flag()
shared_flags.define_replicas_flag()
shared_flags.install_grouped_help()


def cells_from_flags() -> list[sweep.Cell]:
    """The table's cells: each row of --rows x its own seeds (else --seeds), the training
    flags applied."""
    return sweep.build_table(FLAGS.rows, shared_flags.ints_flag("seeds"),
                             splits=sweep.parse_splits(FLAGS.splits),
                             **shared_flags.train_changes_from_flags())


def run(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every option is a --flag")
    return sweep_driver.run_sweep_or_report(
        "experiments.paper_tables", cells_from_flags(), FLAGS.table_dir,
        shared_flags.run_group_from_flags(),
        lambda results, final, command: sweep.write_table_outputs(
            results, FLAGS.table_dir, references.PUBLISHED, command=command, plot=final,
            title="The paper's tables, reproduced"))


main = entry.entry_point(run, lambda: compile_cache.cache_dir(FLAGS.compilation_cache_dir,
                                                               FLAGS.table_dir))

if __name__ == "__main__":
    app.run(main)
