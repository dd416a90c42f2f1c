"""HunyuanVideo (`HunyuanVideoTransformer3DModel`): 5-D video latents, two block stacks (dual-stream, then
single-stream) that both return (hidden_states, encoder_hidden_states) - image first -, a text token refiner in the
preamble, a per-row joint attention mask and 3-D rotary tables; the engine's property suite across both stacks."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, decoded_exit, run
from diffusers import HunyuanVideoTransformer3DModel

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.testing import hunyuanvideo_inputs, tiny_hunyuanvideo


def make_case(guidance: bool) -> Case:
    model = tiny_hunyuanvideo(num_layers=2, num_single_layers=2, guidance=guidance)
    inputs = hunyuanvideo_inputs(model, batch=4)
    inputs["timestep"] = T.float()
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=4,
    )


@pytest.fixture(params=[False, True], ids=["plain", "guidance-distilled"])
def case(request):
    return make_case(request.param)


def test_the_family_spans_both_stacks():
    adapter = get_adapter(tiny_hunyuanvideo(num_layers=2, num_single_layers=3))
    assert adapter.family.name == "HunyuanVideo"
    assert adapter.num_blocks == 5
    assert [adapter.stack(i).attr for i in (1, 2)] == ["transformer_blocks", "single_transformer_blocks"]
    assert adapter.stack(4).returns == ("image", "text")
    assert [name for name, _ in adapter.forecast_modules(4)] == ["attn", "proj_mlp", "proj_out"]


def test_an_exit_inside_the_single_stack_keeps_each_rows_text_and_mask():
    """Rows leaving inside the second stack: the text stream (returned second) and the per-row attention mask are
    compacted with them, so the padded rows 1 and 3 keep their own masks."""
    case = make_case(False)
    other = dict(case.inputs, encoder_hidden_states=case.inputs["encoder_hidden_states"].clone())
    other["encoder_hidden_states"][0] += 1.0  # row 0's prompt only; row 0 runs full depth
    apply(case, EarlyExitConfig(policy=RowDepths([4, 3, 3, 2])))
    a, b = run(case), run(case, other)
    assert not torch.equal(a[0], b[0])
    assert torch.equal(a[1:], b[1:])


def test_the_image_to_video_token_replacement_is_not_decoded():
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4),
        image_condition_type="token_replace",
    )
    inputs = hunyuanvideo_inputs(model, batch=2)
    with pytest.raises(ValueError, match="token_replace"):
        decoded_exit(model, inputs, 1)
