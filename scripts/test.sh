#!/usr/bin/env bash
# One command: set up ./.venv (all extras) and run the test suite. Extra args go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the long tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "dev,tfds,plots,tensorboard"
# Two workers, each test file whole on one of them (its module fixtures are built once);
# the run time is in BUILD_NOTES. `bash scripts/test.sh -n 0` runs serially.
python -m pytest -n 2 --dist loadfile "$@"
