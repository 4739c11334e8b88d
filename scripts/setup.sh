#!/usr/bin/env bash
# Creates ./.venv with Python >= 3.11 and installs ladder_jax (editable) with the given extras.
# Usage: source scripts/setup.sh [EXTRAS]    (EXTRAS like "dev,tfds,plots")
#
# Runs pip only when needed: a stamp file inside the venv records the sha256 of pyproject.toml,
# the venv's Python version, the checkout it points at and the union of the extras installed so
# far. When the stamp matches and the requested extras are among those installed, set-up is
# silent and takes well under a second. Otherwise pip runs with its output in a log file inside
# the venv; only on failure is the log's tail printed.
# Overrides: LADDER_JAX_VENV=/path/to/venv (default ./.venv), PYTHON=/path/to/python3.11+
# (used when the venv is created), LADDER_JAX_PINS="jax==0.11.2 jaxlib==0.11.2" (requirements
# installed beside the package, e.g. a test lane's JAX; recorded in the stamp).
set -euo pipefail
extras="${1:-}"
pins="${LADDER_JAX_PINS:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LADDER_JAX_VENV:-$root/.venv}"

if [ ! -x "$venv/bin/python" ]; then
  python="${PYTHON:-}"
  if [ -z "$python" ]; then
    for candidate in python3 python3.13 python3.12 python3.11 python; do
      if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c \
          'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
        python="$candidate"; break
      fi
    done
  elif ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
      2>/dev/null; then
    echo "error: PYTHON=$python is not a working Python >= 3.11" >&2
    exit 1
  fi
  if [ -z "$python" ]; then
    echo "error: ladder_jax needs Python >= 3.11; install it or set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  if ! "$python" -m venv "$venv"; then
    echo "error: could not create a venv at $venv with $python" >&2
    exit 1
  fi
fi

stamp="$venv/ladder_jax-setup.stamp"
log="$venv/ladder_jax-setup.log"
# Prints the extras to install (the union of the requested and the recorded ones) and exits 10
# when pip must run, exits 0 when the stamp says everything requested is installed, and exits 2
# (with a message) on an unknown extra.
ladder_jax_stamp_check='
import hashlib, importlib.metadata, json, pathlib, sys, tomllib
mode, root, requested, stamp, pins = sys.argv[1:6]
pyproject = pathlib.Path(root, "pyproject.toml").read_bytes()
known = set(tomllib.loads(pyproject.decode())["project"].get("optional-dependencies", {}))
want = {e.strip() for e in requested.split(",") if e.strip()}
unknown = sorted(want - known)
if unknown:
    print(f"error: unknown extra(s) {unknown}; pyproject.toml defines {sorted(known)}",
          file=sys.stderr)
    sys.exit(2)
state = {"pyproject_sha256": hashlib.sha256(pyproject).hexdigest(),
         "python": sys.version.split()[0], "root": root, "pins": pins}
try:
    old = json.loads(pathlib.Path(stamp).read_text())
except (OSError, ValueError):
    old = {}
had = set(old.get("extras", [])) & known
if mode == "write":
    state["extras"] = sorted(want | had)
    pathlib.Path(stamp).write_text(json.dumps(state, indent=1) + "\n")
    sys.exit(0)
try:  # the package must still be installed, editable, from this checkout
    url = json.loads(importlib.metadata.distribution("ladder_jax").read_text("direct_url.json"))
    installed_here = url.get("url") == pathlib.Path(root).as_uri()
except Exception:
    installed_here = False
fresh = installed_here and all(old.get(k) == v for k, v in state.items())
print(",".join(sorted(want | had)))
sys.exit(0 if fresh and want <= had else 10)
'
set +e
install_extras="$("$venv/bin/python" -I -c "$ladder_jax_stamp_check" check "$root" "$extras" \
  "$stamp" "$pins")"
check_rc=$?
set -e
if [ "$check_rc" -eq 2 ]; then
  exit 2
elif [ "$check_rc" -ne 0 ]; then
  spec="$root"
  [ -n "$install_extras" ] && spec="$root[$install_extras]"
  echo "ladder_jax set-up: installing ladder_jax${spec#"$root"} into $venv (log: $log) ..." >&2
  rm -f "$stamp"
  # setuptools' editable build warns "Editable installation. Please be careful with folders in
  # your working directory..." (an InformationOnly warning that pip re-raises as
  # BuildBackendWarning); it is expected for this layout, so it is filtered in the backend.
  if ! (
    export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation"
    "$venv/bin/python" -m pip install --upgrade pip ||
      echo "ladder_jax set-up: upgrading pip failed; going on with the venv's pip"
    # shellcheck disable=SC2086  # the pins are separate requirements
    "$venv/bin/python" -m pip install -e "$spec" $pins
  ) >"$log" 2>&1; then
    tail -n 25 "$log" >&2
    echo "error: pip could not install ladder_jax${spec#"$root"} into $venv (full log: $log);" \
      "check the network access to the package index, or remove $venv and rerun" >&2
    exit 1
  fi
  "$venv/bin/python" -I -c "$ladder_jax_stamp_check" write "$root" "$install_extras" "$stamp" \
    "$pins"
fi
unset ladder_jax_stamp_check install_extras check_rc pins
export PATH="$venv/bin:$PATH"
