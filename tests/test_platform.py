"""The unrolled threefry lowering draws exactly the numbers of JAX's default CPU lowering."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np

from ladder_jax import cpu_rng

DRAW = """
import jax, numpy as np, sys
{install}
key = jax.random.fold_in(jax.random.key(7), 3)
x = jax.jit(lambda k: jax.random.normal(k, (1000, 37)))(key)
np.save(sys.argv[1], np.asarray(x))
"""


def _draw_in_fresh_process(path, install: bool) -> np.ndarray:
    code = DRAW.format(install="from ladder_jax import cpu_rng; "
                               "assert cpu_rng.use_unrolled_threefry()" if install else "")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], check=False,
                          capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.load(path)


def test_unrolled_threefry_draws_the_default_numbers(tmp_path):
    default = _draw_in_fresh_process(tmp_path / "default.npy", install=False)
    unrolled = _draw_in_fresh_process(tmp_path / "unrolled.npy", install=True)
    np.testing.assert_array_equal(unrolled, default)
    assert default.std() > 0.9  # real normals, not a constant


def test_unrolled_lowering_is_in_place_and_compiles_without_a_loop():
    assert cpu_rng.use_unrolled_threefry()
    assert cpu_rng.use_unrolled_threefry()  # idempotent
    hlo = jax.jit(lambda k: jax.random.bits(k, (64,))).lower(jax.random.key(0)).as_text()
    assert "while" not in hlo, "threefry still lowered as a rolled loop"
