"""Sweeps: a grid of runs (grid.py), running it (run.py) and reporting it (report.py: results.csv
and summary.md; plots.py: the PNGs).

    cells = build_grid(["full", "baseline"], [100, 1000, "all"], [0, 1], epochs=10)
    table = build_table(["full_100:0-4", "full_1000"], [0, 1, 2])  # full_100 with 5 seeds
    same_rows = build_grid(["full"], [100], [0, 1], splits={"100": "m100.json"})  # a manifest
    outcome = run_sweep(cells, "runs/label_sweep", run_group=run_cells_as_replicas,
                        report=lambda results, final: write_outputs(results, "runs/label_sweep",
                                                                    plot=final))
"""

from ladder_jax.sweep.grid import (
                                   MAX_ROW_SEEDS,
                                   Cell,
                                   build_grid,
                                   build_table,
                                   parse_splits,
                                   preset_families,
                                   preset_for,
                                   split_preset,
                                   split_row,
)
from ladder_jax.sweep.report import (
                                   LAST_EVALUATIONS,
                                   RowStats,
                                   SeedFigures,
                                   Stat,
                                   read_csv,
                                   row_stats,
                                   seed_figures,
                                   summary_markdown,
                                   table_markdown,
                                   write_outputs,
                                   write_table_outputs,
)
from ladder_jax.sweep.run import (
                                   FAILED,
                                   FINISHED,
                                   PENDING,
                                   CellResult,
                                   SweepResult,
                                   finished_result,
                                   report_sweep,
                                   run_cell,
                                   run_cells_as_replicas,
                                   run_cells_sequentially,
                                   run_sweep,
)

__all__ = [name for name in dir() if not name.startswith("_")]  # the names above
