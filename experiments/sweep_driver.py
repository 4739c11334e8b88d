"""Driving a sweep (or a table) from a runner: train its cells or, with --report_only, only
write its outputs from what the directory holds; then its last lines and exit code."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence

from absl import flags

from ladder_jax import sweep


def without_flag(args: Sequence[str], name: str) -> list[str]:
    """Command-line arguments less a boolean flag.

    Args:
      args: the arguments.
      name: the flag's name.

    Returns:
      ``args`` less every form of the flag (--name, --noname, --name=...).
    """
    def is_it(arg: str) -> bool:
        flag = arg.lstrip("-").split("=", 1)[0]
        return arg.startswith("-") and flag in (name, f"no{name}")
    return [a for a in args if not is_it(a)]


def run_sweep_or_report(module: str, cells: Sequence, sweep_dir: str, run_group,
                        write: Callable[[list, bool, str], dict]) -> int:
    """Trains the sweep's cells or, with --report_only, only writes the outputs of what its
    directory holds now; prints the last lines (print_sweep_outcome).

    Args:
      module: the runner's module, for the command the outputs name.
      cells: the sweep's cells (sweep.Cell).
      sweep_dir: the sweep's directory.
      run_group: how cells of one shape train together (sweep.run_sweep's run_group), or
        None: each on its own.
      write: ``write(results, final, command)`` writes the outputs and returns their paths
        by kind.

    Returns:
      The exit code: 1 if any cell failed.
    """
    command = shlex.join(["python", "-m", module,
                          *without_flag(sys.argv[1:], "report_only")])
    report = lambda results, final: write(results, final, command)
    if flags.FLAGS.report_only:
        outcome = sweep.report_sweep(cells, sweep_dir, report)
    else:
        outcome = sweep.run_sweep(cells, sweep_dir, run_group=run_group, report=report)
    return print_sweep_outcome(outcome, len(cells))


def print_sweep_outcome(outcome, num_cells: int) -> int:
    """Prints the sweep's last lines: cells finished and pending, where the results are,
    and each failure.

    Args:
      outcome: what sweep.run_sweep or sweep.report_sweep returned.
      num_cells: the sweep's cells.

    Returns:
      The exit code: 1 if any cell failed.
    """
    failed = outcome.failed
    finished = sum(r.status == sweep.FINISHED for r in outcome.results)
    pending = num_cells - finished - len(failed)
    print(f"{finished}/{num_cells} cells finished" + (f", {pending} pending" if pending else "")
          + f" ({outcome.wall_time_s / 60:.1f} min); results in {outcome.outputs.get('csv')}")
    for r in failed:
        print(f"failed: {r.cell.name}: {r.error}", file=sys.stderr)
    return 1 if failed else 0
