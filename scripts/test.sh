#!/usr/bin/env bash
# One command: set up a venv and run the test suite. Extra args go to pytest, e.g.
# `bash scripts/test.sh -m slow` for the long tests.
#
#   bash scripts/test.sh                        the default lane: ./.venv, all extras, every
#                                               test file
#   bash scripts/test.sh --lane=py312-jax0.11.2 Python 3.12 + jax/jaxlib 0.11.2 (the
#                                               accelerator image's JAX), the device-relevant
#                                               test files, in ./.venv-py312-jax0.11.2
#   bash scripts/test.sh --lane=py312-newest    Python 3.12 + the newest jax/jaxlib the package
#                                               index serves (pinned when the venv is made;
#                                               remove the venv to take a newer one)
#   bash scripts/test.sh --lane=all             the three lanes one after the other (CI)
#
# The Python 3.12 lanes find python3.12 on PATH, under pyenv, or at $PYTHON312.
set -euo pipefail
cd "$(dirname "$0")/.."
lane=default
if [[ "${1:-}" == --lane=* ]]; then
  lane="${1#--lane=}"
  shift
fi
# The files that exercise what runs on an accelerator: the models, the training procedure,
# replicas, data parallelism, the runner, conv, the notebook, the export for accelerators.
DEVICE_TESTS=(tests/test_model.py tests/test_training_procedure.py tests/test_replicas.py
              tests/test_parallel.py tests/test_runner.py tests/test_conv.py
              tests/test_conv_training.py tests/test_notebook.py tests/test_export.py
              tests/test_layout.py tests/test_flax_interop.py)

find_python312() {
  local candidates=("${PYTHON312:-}" "$(command -v python3.12 || true)")
  if command -v pyenv >/dev/null 2>&1; then  # its root, and where the pyenv binary lives
    candidates+=("$(pyenv root)"/versions/3.12*/bin/python3.12)
    candidates+=("$(dirname "$(dirname "$(command -v pyenv)")")"/versions/3.12*/bin/python3.12)
  fi
  for candidate in "${candidates[@]}"; do
    if [ -n "$candidate" ] && "$candidate" -c \
        'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "error: the $lane lane needs Python 3.12; install it or set PYTHON312=/path/to/python3.12" >&2
  return 1
}

files=()
case "$lane" in
  default)
    source scripts/setup.sh "dev,tfds,plots,tensorboard,flax" ;;
  py312-jax0.11.2|py312-newest)
    python312="$(find_python312)"
    pins=""
    [ "$lane" = py312-jax0.11.2 ] && pins="jax==0.11.2 jaxlib==0.11.2"
    LADDER_JAX_VENV="$PWD/.venv-$lane" PYTHON="$python312" LADDER_JAX_PINS="$pins" \
      source scripts/setup.sh "dev,plots,tensorboard,flax"
    files=("${DEVICE_TESTS[@]}") ;;
  all)
    status=0
    for each in default py312-jax0.11.2 py312-newest; do
      echo "=== test lane $each ===" >&2
      bash "$0" --lane="$each" "$@" || status=1
    done
    exit "$status" ;;
  *)
    echo "error: unknown --lane=$lane; use default, py312-jax0.11.2, py312-newest or all" >&2
    exit 2 ;;
esac
python -c 'import sys, jax; print(f"test lane '"$lane"': Python {sys.version.split()[0]}, jax {jax.__version__}")' >&2
# Two workers, each test file whole on one of them (its module fixtures are built once);
# the run time is in BUILD_NOTES. `bash scripts/test.sh -n 0` runs serially.
python -m pytest -n 2 --dist loadfile "${files[@]}" "$@"
