"""Process start-up: platform settings made once, before anything compiles.

``setup()`` registers the CPU's faster threefry lowering (below) and, if asked, JAX's
persistent compilation cache. The runners call it first thing; library entry points that
compile training programs call it too (it is idempotent), so notebooks get it as well.

Faster Gaussian noise on the CPU, with the same random numbers: JAX lowers its threefry2x32
hash on the CPU as a rolled loop to keep compile times short (on GPU and TPU it is
unrolled). The rolled loop cannot be fused, so every round reads and writes whole arrays.
The hash is the same function either way, so the bits, and every trained number, are
unchanged; only compile time grows slightly (BUILD_NOTES.md has the measured effect). The
registration is for the CPU platform only: programs lowered for accelerators keep JAX's own
rule (tests/test_export.py).

The unrolled lowering is JAX's own (the one it uses on accelerators), reached through a
private module; when a JAX version moves it, nothing is installed and training is just
slower.
"""

from __future__ import annotations

import os

import jax
from absl import logging

_installed = False


def setup(compilation_cache_dir: str | None = None) -> None:
    """Once per process: the unrolled threefry lowering on the CPU, and JAX's persistent
    compilation cache in ``compilation_cache_dir`` when given (runs and sweep cells with the
    same compiled program then load it instead of compiling it again)."""
    use_unrolled_threefry()
    if compilation_cache_dir:
        os.makedirs(compilation_cache_dir, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(compilation_cache_dir))


def use_unrolled_threefry() -> bool:
    """Registers JAX's unrolled threefry2x32 lowering for the CPU (idempotent).

    Affects programs compiled afterwards in this process. Returns whether it is in place.
    """
    global _installed
    if _installed:
        return True
    try:
        from jax._src.random import threefry2x32 as threefry_impl
        from jax.extend.random import threefry2x32_p
        from jax.interpreters import mlir

        rule = threefry_impl._threefry2x32_lowering_rule
    except (ImportError, AttributeError) as e:
        logging.info("unrolled threefry lowering unavailable in this JAX (%s); keeping the "
                     "rolled one", e)
        return False
    mlir.register_lowering(threefry2x32_p, rule, platform="cpu")
    _installed = True
    return True
