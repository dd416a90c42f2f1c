"""Early exit on a tiny real PixArtTransformer2DModel: the engine's property suite, plus PixArt specifics."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import Case, T, run

from ee_diffusion.adapters import get_adapter
from ee_diffusion.heads import UncertaintyHeads
from ee_diffusion.testing import tiny_pixart

NUM_BLOCKS = 4


@pytest.fixture
def case():
    model = tiny_pixart(num_layers=NUM_BLOCKS)
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(4, 5)
    mask[1, 3:] = 0  # a padded prompt: the mask must be sliced with its row
    inputs = {
        "hidden_states": torch.randn(4, 4, 8, 8, generator=g),
        "timestep": T,
        "encoder_hidden_states": torch.randn(4, 5, 16, generator=g),
        "encoder_attention_mask": mask,
    }
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=NUM_BLOCKS,
    )


def test_adapter_is_found_and_heads_fit():
    model = tiny_pixart(num_layers=2)
    assert get_adapter(model).family.name == "PixArt"
    heads = UncertaintyHeads.from_model(model)
    assert heads.config.model_class == "PixArtTransformer2DModel"
    assert heads.config.out_channels == 4  # eps channels, not the learned-variance half
    x = torch.randn(2, 4, 8, 8)
    hidden = get_adapter(model).decoder.hidden_states_per_block(x, torch.tensor([1, 2]), torch.randn(2, 5, 16))
    assert heads(1, hidden[1]).shape == (2, 4, 8, 8)


def test_mask_matters(case):
    """Guards the mask-slicing test above: the padded row's output depends on its mask."""
    inputs = dict(case.inputs, encoder_attention_mask=torch.ones(4, 5))
    assert not torch.allclose(run(case, inputs)[1], run(case)[1], atol=1e-5)


def test_exit_outputs_for_training(case):
    from ee_diffusion.training.losses import DeeDiffLossConfig, deediff_loss_terms

    conditioning = {k: case.inputs[k] for k in ("encoder_hidden_states", "encoder_attention_mask")}
    hidden, predictions = get_adapter(case.model).decoder.exit_outputs(case.inputs["hidden_states"], T, **conditioning)
    assert torch.equal(predictions[-1].detach(), run(case)[:, :4])  # eps half of the learned-variance output
    heads = UncertaintyHeads.from_model(case.model)
    terms = deediff_loss_terms(predictions, [heads(i, h) for i, h in enumerate(hidden)],
                               torch.randn(4, 4, 8, 8), DeeDiffLossConfig())
    terms["loss"].backward()
    assert case.model.transformer_blocks[0].attn2.to_k.weight.grad is not None
