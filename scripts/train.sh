#!/usr/bin/env bash
# One command: set up ./.venv and run the main job (the paper's 100-label full ladder).
# Extra args are runner flags, e.g. `bash scripts/train.sh --epochs=2 --workdir=runs/demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "tensorboard"
python -m experiments.mnist_100labels "$@"
