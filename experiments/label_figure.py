"""One label-efficiency figure from the results of several tables or sweeps: test error vs.
labeled examples, one panel per dataset, per preset family the median over seeds with the
min-max range, beside the published figures.

    python -m experiments.label_figure \
        --dirs=docs/paper_tables,docs/fashion_mnist_tables --output=docs/label_efficiency.png

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
    points = [p for directory in FLAGS.dirs
              for p in plots.points_from_csv(os.path.join(directory, report.RESULTS_CSV))]
    if not any(p.family in FLAGS.families for p in points):
        raise ConfigError(f"no finished cell of the families {','.join(FLAGS.families)} in "
                          f"{','.join(FLAGS.dirs)}; check --dirs and --families")
    if not plots.plot_label_efficiency(points, FLAGS.output, families=FLAGS.families):
        return 1  # matplotlib missing: the warning says how to install it
    logging.info("wrote %s", FLAGS.output)
    print(FLAGS.output)
    return 0


main = entry.entry_point(run)

if __name__ == "__main__":
    app.run(main)
