"""ladder_jax.platform: the unrolled threefry lowering draws exactly the numbers of JAX's
default CPU lowering, and setup() installs it (and the compilation cache when asked)."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np

from ladder_jax import platform

DRAW = """
import jax, numpy as np, sys
{install}
key = jax.random.fold_in(jax.random.key(7), 3)
x = jax.jit(lambda k: jax.random.normal(k, (1000, 37)))(key)
np.save(sys.argv[1], np.asarray(x))
"""

SETUP = """
import os, sys, jax
from ladder_jax import platform
cache = os.path.join(sys.argv[1], "cache", "nested")
platform.setup(cache)
platform.setup(cache)  # idempotent
hlo = jax.jit(lambda k: jax.random.bits(k, (64,))).lower(jax.random.key(0)).as_text()
assert "while" not in hlo, "setup() left threefry lowered as a rolled loop"
assert os.path.isdir(cache), cache
assert jax.config.jax_compilation_cache_dir == os.path.abspath(cache), \
    jax.config.jax_compilation_cache_dir
"""


def _run_fresh(code: str, arg) -> None:
    proc = subprocess.run([sys.executable, "-c", code, str(arg)], check=False,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _draw_in_fresh_process(path, install: bool) -> np.ndarray:
    _run_fresh(DRAW.format(install="from ladder_jax import platform; "
                                   "assert platform.use_unrolled_threefry()" if install else ""),
               path)
    return np.load(path)


def test_unrolled_threefry_draws_the_default_numbers(tmp_path):
    default = _draw_in_fresh_process(tmp_path / "default.npy", install=False)
    unrolled = _draw_in_fresh_process(tmp_path / "unrolled.npy", install=True)
    np.testing.assert_array_equal(unrolled, default)
    assert default.std() > 0.9  # real normals, not a constant


def test_unrolled_lowering_is_in_place_and_compiles_without_a_loop():
    assert platform.use_unrolled_threefry()
    assert platform.use_unrolled_threefry()  # idempotent
    hlo = jax.jit(lambda k: jax.random.bits(k, (64,))).lower(jax.random.key(0)).as_text()
    assert "while" not in hlo, "threefry still lowered as a rolled loop"


def test_setup_installs_the_lowering_and_the_compilation_cache(tmp_path):
    # In a fresh process: the cache directory is process-wide JAX configuration.
    _run_fresh(SETUP, tmp_path)
