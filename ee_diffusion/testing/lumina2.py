"""A tiny stock Lumina-Image 2.0 pipeline (`Lumina2Pipeline`) around `tiny_lumina2`, every component built in-process.

How the pipeline runs the model, which the caches see: guidance as two calls per step, the prompts' ("cond") then
the negative prompts' ("uncond"), on the very same latents tensor and timestep and with no cache context (as
Chroma); the second call stops after `cfg_trunc_ratio` of the steps (1.0 by default: never). The text is Gemma 2's
second hidden state from the end, each prompt behind the pipeline's system prompt and " <Prompt Start> " (30 tokens
of `tiny_tokenizer`, every word of it but "an", "the" and "of" `<unk>`; negative prompts go in bare), padded to
`max_sequence_length` (256 by default): the transformer takes each row's caption length from the mask. The pipeline
compresses by 8 whatever its VAE (`vae_scale_factor` is fixed), so sizes are multiples of 16.

```py
>>> pipe = tiny_lumina2_pipeline()
>>> pipe.set_progress_bar_config(disable=True)
>>> pipe("a red cat", num_inference_steps=2, output_type="np").images.shape
(1, 32, 32, 3)

```
"""

from __future__ import annotations

from typing import Any

from .families import tiny_lumina2
from .models import _randomise
from .pipelines import tiny_tokenizer


def tiny_lumina2_pipeline(seed: int = 0) -> Any:
    """`Lumina2Pipeline` around `tiny_lumina2` with a random two-layer Gemma 2 (width 16, the transformer's caption
    width) over `tiny_tokenizer`'s vocabulary and a 4-level VAE (compression 8, with the latent shift the pipeline
    undoes). The transformer's `sample_size` of 4 latents makes a call without a size 32 pixels, also from a reloaded
    folder (the pipeline reads it from the transformer's config); its rotary table holds the pipeline's default 256
    caption tokens. Called as `tiny_family_pipeline("lumina2")` with `TINY_CALLS["lumina2"]`.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Lumina2Pipeline
    from transformers import Gemma2Config, Gemma2Model

    # Two layers: the hidden state the pipeline reads (the second from the end) is the first layer's output. Its 512
    # positions are the longest `max_sequence_length` the pipeline accepts.
    gemma = Gemma2Model(Gemma2Config(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                     max_position_embeddings=512, pad_token_id=0, bos_token_id=None,
                                     eos_token_id=None))
    vae = AutoencoderKL(
        latent_channels=4, block_out_channels=(8,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4, sample_size=32,
        shift_factor=0.1)
    # The VAE's 0.15: its images vary with the latents without saturating (std about 0.06 in [0, 1]).
    for module, offset, scale in ((gemma, 2, 0.2), (vae, 1, 0.15)):
        _randomise(module, seed + offset, scale)
    return Lumina2Pipeline(
        transformer=tiny_lumina2(sample_size=4, text_positions=257, seed=seed),
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), text_encoder=gemma.eval(),
        tokenizer=tiny_tokenizer(max_length=256))
