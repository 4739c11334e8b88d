"""JAX's persistent compilation cache for the runners: where it is, and switching it on."""

from __future__ import annotations

import os

import jax

from ladder_jax import platform

#: --compilation_cache_dir's value for no cache (also when $JAX_COMPILATION_CACHE_DIR is set).
NO_CACHE = "none"


def use_compilation_cache(directory: str | None) -> None:
    """Runs platform.setup(), with JAX's persistent compilation cache in ``directory``.

    The directory is not made here: JAX makes it at the first compile, so a run refused for
    a bad flag leaves nothing behind (path_checks.check_paths has checked that it can be
    made).

    Args:
      directory: the cache directory; None, empty or NO_CACHE (any case): no cache.
    """
    platform.setup()
    if directory and directory.lower() != NO_CACHE:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))


def cache_dir(flag_value: str | None, run_dir: str) -> str:
    """A sweep's compilation cache directory, so that cells of one shape and re-runs load
    their compiled programs instead of compiling them again.

    Args:
      flag_value: --compilation_cache_dir as given (None: not given).
      run_dir: the sweep's (or table's) directory.

    Returns:
      ``flag_value`` if given (NO_CACHE: no cache, even with $JAX_COMPILATION_CACHE_DIR
      set); else $JAX_COMPILATION_CACHE_DIR, else <run_dir>/jax_cache.
    """
    if flag_value is not None:
        return flag_value
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(run_dir, "jax_cache")
