"""The paper's run: the full ladder on permutation-invariant MNIST, 100 labels, 150 epochs.
This is ``experiments.train`` with its defaults (--preset=full_100); every flag works.

    python -m experiments.mnist_100labels                          # the paper run, seed 0
    python -m experiments.mnist_100labels --epochs=3 --workdir=runs/demo    # a short demo
"""

from __future__ import annotations

from absl import app

from experiments.train import main

if __name__ == "__main__":
    app.run(main)
