import pytest
import torch

from ee_diffusion.testing import tiny_dit


@pytest.fixture
def dit():
    """A 6-block random DiT on 8x8x1 inputs, 10 classes (null id 10), eval mode."""
    return tiny_dit(num_layers=6)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([10, 300, 600, 900])
    y = torch.tensor([1, 2, 3, 4])
    return x, t, y
