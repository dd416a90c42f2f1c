"""Wan (`WanTransformer3DModel`): 5-D video latents, blocks called positionally, a per-row (B, 6, D) modulation and
a rotary table shared by every row; the engine's property suite."""

from __future__ import annotations

import pytest
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case

from ee_diffusion.adapters import get_adapter
from ee_diffusion.testing import tiny_wan, wan_inputs

NUM_BLOCKS = 4


@pytest.fixture
def case():
    model = tiny_wan(num_layers=NUM_BLOCKS)
    inputs = wan_inputs(model, batch=4)
    inputs["timestep"] = T.float()
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=NUM_BLOCKS,
    )


def test_the_family_is_found():
    adapter = get_adapter(tiny_wan(num_layers=2))
    assert adapter.family.name == "Wan"
    assert [name for name, _ in adapter.forecast_modules(0)] == ["attn1", "attn2", "ffn"]
