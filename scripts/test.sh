#!/usr/bin/env bash
# One command: set up ./.venv (all extras) and run the test suite. Extra args go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the long tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "dev,tfds,plots,tensorboard"
python -m pytest "$@"
