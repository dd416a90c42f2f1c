"""DiT (`DiTTransformer2DModel`): the engine's property suite, as for every family (tests/test_engine.py holds the
engine's own, DiT-based tests)."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case

from ee_diffusion.testing import tiny_dit

NUM_BLOCKS = 4


@pytest.fixture
def case():
    model = tiny_dit(num_layers=NUM_BLOCKS)
    g = torch.Generator().manual_seed(1)
    inputs = {"hidden_states": torch.randn(4, 1, 8, 8, generator=g), "timestep": T,
              "class_labels": torch.tensor([1, 2, 3, 4])}
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=NUM_BLOCKS,
        cfg_pairs=False,  # DiT's guidance batch is recognised by its null labels (tests/test_engine.py), not latents
    )
