"""Sana (`SanaTransformer2DModel`): blocks called positionally with the post-patch height and width (ints), a per-row
(B, 6D) modulation and text mask; the engine's property suite."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, run

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import apply_early_exit
from ee_diffusion.schedules import StaticDepth
from ee_diffusion.testing import sana_inputs, tiny_sana

NUM_BLOCKS = 4


def make_case(height: int = 8, width: int = 8) -> Case:
    model = tiny_sana(num_layers=NUM_BLOCKS)
    inputs = sana_inputs(model, batch=4, height=height, width=width)
    inputs["timestep"] = T.float()
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=NUM_BLOCKS,
    )


@pytest.fixture
def case():
    return make_case()


def test_a_wide_latent_exits_to_the_decode_of_its_block():
    """The head unpatchifies to the sample's own (height, width): a non-square latent decodes exactly."""
    case = make_case(height=8, width=12)
    assert torch.equal(case.hand_exit(case.inputs, NUM_BLOCKS), run(case))
    apply(case, EarlyExitConfig(policy=RowDepths([2, 2, 2, 2])))
    assert torch.equal(run(case), case.hand_exit(case.inputs, 2))


def test_the_family_is_found():
    adapter = get_adapter(tiny_sana(num_layers=2))
    assert adapter.family.name == "Sana"
    assert [name for name, _ in adapter.forecast_modules(0)] == ["attn1", "attn2", "ff"]


def test_a_guidance_embedding_model_decodes_exactly():
    """Sana Sprint's architecture embeds `guidance` with the timestep: the decoder passes it on, so an exit is the
    decode of its block there too."""
    model = tiny_sana(num_layers=NUM_BLOCKS, guidance=True)
    inputs = dict(sana_inputs(model, batch=4), timestep=T.float(), guidance=torch.full((4,), 4.5))
    decoder = get_adapter(model).decoder
    with torch.no_grad():
        stock = model(**inputs).sample
        hidden = decoder.hidden_states_per_block(inputs["hidden_states"], inputs["timestep"],
                                                 inputs["encoder_hidden_states"], inputs["encoder_attention_mask"],
                                                 guidance=inputs["guidance"])
        assert torch.equal(decoder.decode(hidden[-1], inputs["timestep"], inputs["hidden_states"],
                                          guidance=inputs["guidance"]), stock)
        apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(2)))
        assert torch.equal(model(**inputs).sample, decoder.decode(hidden[1], inputs["timestep"],
                                                                  inputs["hidden_states"], guidance=inputs["guidance"]))
    assert decoder.timestep_embedding(T.float(), torch.float32).shape == (4, 16)


def test_each_rows_text_mask_follows_it():
    """Row 1's padded text positions stay masked after rows before it leave (the mask is sliced with its rows)."""
    case = make_case()
    alone = run(case, case.select(case.inputs, [1]))  # the stock model on row 1 alone
    apply(case, EarlyExitConfig(policy=RowDepths([1, 4, 2, 4])))
    torch.testing.assert_close(run(case)[1:2], alone, rtol=0, atol=1e-5)


def test_controlnet_residuals_are_refused_while_exits_are_on():
    case = make_case()
    apply(case, EarlyExitConfig(policy=RowDepths([4, 4, 4, 4])))
    with pytest.raises(ValueError, match="controlnet_block_samples"):
        run(case, dict(case.inputs, controlnet_block_samples=(torch.zeros(4, 16, 16),)))
