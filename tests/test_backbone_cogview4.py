"""CogView4 (`CogView4Transformer2DModel`): blocks return (hidden_states, encoder_hidden_states) - image first - and
take a per-row temb and text mask; the engine's property suite."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, run

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.testing import cogview4_inputs, tiny_cogview4

NUM_BLOCKS = 4


def make_case(height: int = 8, width: int = 8) -> Case:
    model = tiny_cogview4(num_layers=NUM_BLOCKS)
    inputs = cogview4_inputs(model, batch=4, height=height, width=width)
    inputs["timestep"] = T.float()  # CogView4Pipeline passes the scheduler's 0-1000 timesteps as they are
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=NUM_BLOCKS,
    )


@pytest.fixture
def case():
    return make_case()


def test_the_family_is_found():
    adapter = get_adapter(tiny_cogview4(num_layers=2))
    assert adapter.family.name == "CogView4"
    assert adapter.stack(0).returns == ("image", "text")
    assert [name for name, _ in adapter.forecast_modules(0)] == ["attn1"]


def test_a_wide_latent_exits_to_the_decode_of_its_block():
    """The head unpatchifies to the sample's own (height, width): a non-square latent decodes exactly."""
    case = make_case(height=8, width=12)
    assert torch.equal(case.hand_exit(case.inputs, NUM_BLOCKS), run(case))
    apply(case, EarlyExitConfig(policy=RowDepths([2, 2, 2, 2])))
    assert torch.equal(run(case), case.hand_exit(case.inputs, 2))


def test_each_rows_text_mask_and_text_stream_follow_it():
    """Row 1's padded text positions stay masked, and its text stream (returned second) stays its own, after rows
    before it leave: both are compacted with their rows."""
    case = make_case()
    alone = run(case, case.select(case.inputs, [1]))  # the stock model on row 1 alone
    apply(case, EarlyExitConfig(policy=RowDepths([1, 4, 2, 4])))
    torch.testing.assert_close(run(case)[1:2], alone, rtol=0, atol=1e-5)
