#!/usr/bin/env bash
# Creates ./.venv with Python >= 3.11 and installs ladder_jax with the given extras.
# Usage: source scripts/setup.sh [EXTRAS]    (EXTRAS like "dev,tfds,plots")
set -euo pipefail
extras="${1:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3 python3.13 python3.12 python3.11 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c \
        'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      python="$candidate"; break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "error: ladder_jax needs Python >= 3.11; install it or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
venv="${LADDER_JAX_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
"$venv/bin/python" -m pip install --quiet -e "$spec"
export PATH="$venv/bin:$PATH"
