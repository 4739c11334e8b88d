"""Choose a setting on the validation split: compare sweeps (one per candidate setting, each
run with --num_validation > 0) by their final validation errors, never their test errors.

    for noise in 0.15 0.3; do
      python -m experiments.label_sweep --dataset=fashion_mnist --num_labels=100 \
          --presets=full --seeds=0,1 --num_validation=10000 --epochs=10 \
          --noise_std=$noise --sweep_dir=runs/grid/noise$noise
    done
    python -m experiments.choose_on_validation --dirs=runs/grid/noise0.15,runs/grid/noise0.3 \
        --output=runs/grid/choice.md

Prints (and with --output writes) a table of each candidate's differing config fields and
its validation error, the chosen one marked; trains nothing.
"""

from __future__ import annotations

import shlex
import sys

from absl import app, flags

from experiments import entry
from ladder_jax import files
from ladder_jax.sweep import choice

FLAGS = flags.FLAGS

flags.DEFINE_list("dirs", None, "Sweep directories, one per candidate setting.", required=True)
flags.DEFINE_string("output", None, "Markdown file to write the comparison to.")


def run(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every option is a --flag")
    candidates = choice.compare(FLAGS.dirs)
    command = "python -m experiments.choose_on_validation " + shlex.join(sys.argv[1:])
    text = choice.choice_markdown(candidates, command)
    if FLAGS.output:
        files.write_text_atomic(FLAGS.output, text)
    print(text, end="")
    return 0


main = entry.entry_point(run)

if __name__ == "__main__":
    app.run(main)
