"""LTX-Video (`LTXVideoTransformer3DModel`): packed video tokens, blocks that cross-attend to the text with a per-row
text mask and modulation; the engine's property suite."""

from __future__ import annotations

import pytest
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case

from ee_diffusion.adapters import get_adapter
from ee_diffusion.testing import ltx_inputs, tiny_ltx

NUM_BLOCKS = 4


def make_case() -> Case:
    model = tiny_ltx(num_layers=NUM_BLOCKS)
    inputs = ltx_inputs(model, batch=4)
    inputs["timestep"] = T.float()  # LTXPipeline passes the scheduler's 0-1000 timesteps as they are
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=NUM_BLOCKS,
    )


@pytest.fixture
def case():
    return make_case()


def test_the_family_is_found():
    adapter = get_adapter(tiny_ltx(num_layers=2))
    assert adapter.family.name == "LTX-Video"
    assert [name for name, _ in adapter.forecast_modules(0)] == ["attn1", "attn2", "ff"]
