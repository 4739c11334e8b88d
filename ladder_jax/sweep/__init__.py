"""Sweeps: a grid of runs (grid.py), running it (run.py) and reporting it (report.py).

    cells = build_grid(["full", "baseline"], [100, 1000, "all"], [0, 1], epochs=10)
    outcome = run_sweep(cells, "runs/label_sweep", run_group=run_cells_as_replicas,
                        report=lambda results, final: write_outputs(results, "runs/label_sweep",
                                                                    plot=final))
"""

from ladder_jax.sweep.grid import (
                                   Cell,
                                   build_grid,
                                   build_table,
                                   preset_families,
                                   preset_for,
                                   split_preset,
)
from ladder_jax.sweep.report import (
                                   PAPER_FULL_LADDER,
                                   aggregate,
                                   read_csv,
                                   row_stats,
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
