"""Early exit on a tiny real SD3Transformer2DModel (two-stream MMDiT blocks): the property suite, plus SD3 specifics."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import Case, T, run

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import apply_early_exit
from ee_diffusion.schedules import StaticDepth
from ee_diffusion.testing import tiny_sd3

NUM_BLOCKS = 4


@pytest.fixture
def case():
    model = tiny_sd3(num_layers=NUM_BLOCKS)
    g = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(4, 4, 8, 8, generator=g),
        "timestep": T.float(),
        "encoder_hidden_states": torch.randn(4, 5, 16, generator=g),
        "pooled_projections": torch.randn(4, 8, generator=g),
    }
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=NUM_BLOCKS,
    )


def test_adapter_is_found():
    assert get_adapter(tiny_sd3(num_layers=2)).family.name == "SD3"


def test_text_stream_is_compacted_with_its_rows(case):
    """Each row's text tokens follow it: a row's exit prediction does not depend on the other rows' prompts."""
    inputs = dict(case.inputs)
    other = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
    other["encoder_hidden_states"][0] += 1.0  # change row 0's prompt only (row 0 runs full depth)
    from _backbone_properties import RowDepths, apply

    apply(case, EarlyExitConfig(policy=RowDepths([4, 1, 2, 3])))
    a, b = run(case, inputs), run(case, other)
    assert not torch.allclose(a[0], b[0])
    torch.testing.assert_close(a[1:], b[1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, value", [("skip_layers", [1]), ("block_controlnet_hidden_states", [torch.zeros(1)])])
def test_unsupported_arguments_raise(case, name, value):
    apply_early_exit(case.model, EarlyExitConfig(policy=StaticDepth(2)))
    with pytest.raises(ValueError, match=name):
        run(case, dict(case.inputs, **{name: value}))


def test_exit_outputs_for_training(case):
    from ee_diffusion.heads import UncertaintyHeads
    from ee_diffusion.training.losses import DeeDiffLossConfig, deediff_loss_terms

    conditioning = {k: case.inputs[k] for k in ("encoder_hidden_states", "pooled_projections")}
    hidden, predictions = get_adapter(case.model).decoder.exit_outputs(case.inputs["hidden_states"], T.float(), **conditioning)
    assert torch.equal(predictions[-1].detach(), run(case))
    heads = UncertaintyHeads.from_model(case.model)
    terms = deediff_loss_terms(predictions, [heads(i, h) for i, h in enumerate(hidden)],
                               torch.randn(4, 4, 8, 8), DeeDiffLossConfig())
    terms["loss"].backward()
    assert case.model.transformer_blocks[0].attn.to_q.weight.grad is not None
