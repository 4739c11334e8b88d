"""One label-efficiency figure from the results of several tables or sweeps: test error vs.
labeled examples, one panel per dataset, per preset family the median over seeds with the
min-max range, beside the published figures.

    python -m experiments.label_figure \
        --dirs=runs/paper_tables,runs/paper_tables_fashion --output=label_efficiency.png

Reads each directory's results.csv (finished cells only; a running table's too) and trains
nothing. Needs matplotlib: pip install 'ladder_jax[plots]'.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from experiments import entry
from ladder_jax.errors import ConfigError
from ladder_jax.sweep import plots, report

FLAGS = flags.FLAGS

flags.DEFINE_list("dirs", None, "Table or sweep directories, each holding a results.csv.",
                  required=True)
flags.DEFINE_list("families", ["full", "baseline"], "Preset families to draw, in this order "
                  "(a table's rows full_100, full_1000 and full_all are the family 'full').")
flags.DEFINE_string("output", "label_efficiency.png", "The PNG to write.")


def run(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every option is a --flag")
    try:
        import matplotlib  # noqa: F401 - only to say at once that it is missing
    except ImportError:
        raise ConfigError("the figure needs matplotlib: pip install 'ladder_jax[plots]'"
                          ) from None
    twice = [d for i, d in enumerate(FLAGS.dirs) if d in FLAGS.dirs[:i]]
    if twice:
        raise ConfigError(f"{twice[0]} is given twice in --dirs; name each directory once")
    points = [p for directory in FLAGS.dirs
              for p in report.points_from_csv(os.path.join(directory, report.RESULTS_CSV))]
    found = dict.fromkeys(p.family for p in points)
    absent = [f for f in FLAGS.families if f not in found]
    if absent:
        raise ConfigError(f"no finished cell of the family {absent[0]} in {','.join(FLAGS.dirs)}"
                          f" (finished: {', '.join(found) or 'none'}); check --dirs and "
                          "--families")
    plots.plot_label_efficiency(points, FLAGS.output, families=FLAGS.families)
    logging.info("wrote %s", FLAGS.output)
    print(FLAGS.output)
    return 0


main = entry.entry_point(run)

if __name__ == "__main__":
    app.run(main)
