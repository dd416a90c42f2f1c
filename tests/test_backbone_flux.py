"""FLUX.1 (`FluxTransformer2DModel`): two block stacks (double-stream, then single-stream), a 0-1 timestep, packed
tokens; the engine's property suite runs across both stacks."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, run

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import get_exit_stats
from ee_diffusion.testing import flux_inputs, tiny_flux

SHARED = ("txt_ids", "img_ids")  # position ids: one table for every row


def make_case(guidance: bool) -> Case:
    model = tiny_flux(num_layers=2, num_single_layers=2, guidance=guidance)
    inputs = flux_inputs(model, batch=4)
    inputs["timestep"] = T.float() / 1000  # FluxPipeline calls the model with t / 1000
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=4,
        shared=SHARED,
    )


@pytest.fixture(params=[False, True], ids=["schnell", "dev-guidance"])
def case(request):
    return make_case(request.param)


def test_the_family_spans_both_stacks():
    adapter = get_adapter(tiny_flux(num_layers=2, num_single_layers=3))
    assert adapter.family.name == "Flux"
    assert adapter.num_blocks == 5
    assert [adapter.stack(i).attr for i in (1, 2)] == ["transformer_blocks", "single_transformer_blocks"]
    assert [name for name, _ in adapter.forecast_modules(4)] == ["attn", "proj_mlp", "proj_out"]


def test_timesteps_are_read_in_the_0_999_scale():
    """Schedules are written in 0-999 timesteps; Flux's 0-1 argument is scaled by the family's declaration."""
    case = make_case(False)
    apply(case, EarlyExitConfig(policy=RowDepths([4, 3, 2, 1])))
    run(case)
    torch.testing.assert_close(get_exit_stats(case.model).timesteps[0], T.float())


def test_an_exit_inside_the_single_stack_carries_the_text_stream():
    """Rows leaving inside the second stack: the text stream (returned by both stacks) is compacted with them."""
    case = make_case(False)
    other = dict(case.inputs, encoder_hidden_states=case.inputs["encoder_hidden_states"].clone())
    other["encoder_hidden_states"][0] += 1.0  # row 0's prompt only; row 0 runs full depth
    apply(case, EarlyExitConfig(policy=RowDepths([4, 3, 3, 2])))
    a, b = run(case), run(case, other)
    assert not torch.equal(a[0], b[0])
    assert torch.equal(a[1:], b[1:])


def test_controlnet_residuals_are_refused_while_exits_are_on():
    case = make_case(False)
    apply(case, EarlyExitConfig(policy=RowDepths([4, 4, 4, 4])))
    with pytest.raises(ValueError, match="controlnet_block_samples"):
        run(case, dict(case.inputs, controlnet_block_samples=[torch.zeros(4, 16, 16)]))


def test_training_predictions_keep_every_token():
    """Flux predicts packed tokens (B, L, C): the decoder's training pass keeps the channels on the last dimension,
    so every token stays and its last prediction is the model's output."""
    model = tiny_flux()
    inputs = flux_inputs(model, batch=2)
    sample, timestep = inputs.pop("hidden_states"), inputs.pop("timestep")
    _, predictions = get_adapter(model).decoder.exit_outputs(sample, timestep, **inputs)
    with torch.no_grad():
        assert torch.equal(predictions[-1], model(hidden_states=sample, timestep=timestep, **inputs).sample)
