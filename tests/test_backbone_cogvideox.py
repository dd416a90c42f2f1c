"""CogVideoX (`CogVideoXTransformer3DModel`): 5-D video latents (B, F, C, H, W), blocks that return (hidden_states,
encoder_hidden_states) - image first, where SD3 and Flux return the text first; the engine's property suite."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, run
from diffusers import CogVideoXTransformer3DModel

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import early_exit
from ee_diffusion.schedules import StaticDepth
from ee_diffusion.testing import cogvideox_inputs, tiny_cogvideox
from ee_diffusion.testing.models import _randomise

NUM_BLOCKS = 4


def make_case() -> Case:
    model = tiny_cogvideox(num_layers=NUM_BLOCKS)
    inputs = cogvideox_inputs(model, batch=4)
    inputs["timestep"] = T.float()
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=NUM_BLOCKS,
    )


@pytest.fixture
def case():
    return make_case()


def test_the_family_is_found():
    adapter = get_adapter(tiny_cogvideox(num_layers=2))
    assert adapter.family.name == "CogVideoX"
    assert adapter.stack(0).returns == ("image", "text")
    assert [name for name, _ in adapter.forecast_modules(0)] == ["attn1", "ff"]


def test_an_exited_row_keeps_the_others_text_stream_in_order():
    """Blocks return the image stream first: a row that leaves takes its own text tokens with it, so changing the
    prompt of the row that runs on changes that row alone."""
    case = make_case()
    other = dict(case.inputs, encoder_hidden_states=case.inputs["encoder_hidden_states"].clone())
    other["encoder_hidden_states"][0] += 1.0  # row 0's prompt only; row 0 runs full depth
    apply(case, EarlyExitConfig(policy=RowDepths([4, 3, 2, 1])))
    a, b = run(case), run(case, other)
    assert not torch.equal(a[0], b[0])
    assert torch.equal(a[1:], b[1:])


def test_the_1_5_image_to_video_layout_is_decoded_exactly():
    """CogVideoX 1.5 I2V: temporal patches (`patch_size_t`) in the unpatchify and an `ofs` embedding added to temb;
    an exit after block 1 is its decode."""
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=16,
        ofs_embed_dim=16, text_embed_dim=16, num_layers=2, sample_width=4, sample_height=4, sample_frames=5,
        patch_size_t=2, max_text_seq_length=5, use_rotary_positional_embeddings=True,
    )
    _randomise(model, seed=0)
    model.eval()
    inputs = dict(cogvideox_inputs(model, batch=2), ofs=torch.tensor([1.0, 2.0]))
    decoder = get_adapter(model).decoder
    with torch.no_grad():
        stock = model(**inputs).sample
        with early_exit(model, EarlyExitConfig(policy=StaticDepth(1))):
            exited = model(**inputs).sample
        conditioning = {k: v for k, v in inputs.items() if k not in ("hidden_states", "timestep")}
        _, predictions = decoder.exit_outputs(inputs["hidden_states"], inputs["timestep"], **conditioning)
    assert torch.equal(predictions[-1], stock)
    assert torch.equal(predictions[0], exited)
    assert predictions[0].shape == stock.shape and not torch.allclose(predictions[0], stock, atol=1e-4)


def test_training_predictions_keep_every_frame():
    """CogVideoX predicts (B, F, C, H, W): the decoder's training pass keeps the channels on dim 2, so a clip with more
    frames than channels keeps all of them and its last prediction is the model's output."""
    model = tiny_cogvideox()
    inputs = cogvideox_inputs(model, batch=2, frames=6)
    sample, timestep = inputs.pop("hidden_states"), inputs.pop("timestep")
    _, predictions = get_adapter(model).decoder.exit_outputs(sample, timestep, **inputs)
    with torch.no_grad():
        assert torch.equal(predictions[-1], model(hidden_states=sample, timestep=timestep, **inputs).sample)
