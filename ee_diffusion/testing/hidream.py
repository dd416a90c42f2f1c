"""A tiny random HiDream-I1 (`HiDreamImageTransformer2DModel`), one call's inputs, and its stock pipeline.

HiDream's transformer reads four text encoders' outputs: the two CLIP projections side by side as one pooled
embedding (B, 2 x 4), T5's tokens (B, L, 16), and a stack of Llama hidden states (layers, B, L, 16) - note the
batch on the second dimension - from which each block takes its own layer (`llama_layers`, one per block). The
stand-in is width 16 as 2 heads of 8 (`models._stand_in`); its image feed-forwards are mixtures of 4 experts, 2
active per token, beside a shared expert, as in the released model.

```py
>>> model = tiny_hidream()
>>> len(model.double_stream_blocks), len(model.single_stream_blocks), model.config.llama_layers
(2, 2, [0, 1, 0, 1])
>>> sorted(hidream_inputs(model, batch=2))
['encoder_hidden_states_llama3', 'encoder_hidden_states_t5', 'hidden_states', 'pooled_embeds', 'timesteps']

```
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import HiDreamImageTransformer2DModel

from .models import _randomise, _stand_in
from .pipelines import tiny_clip, tiny_t5, tiny_tokenizer, tiny_vae

#: Hidden states of the tiny Llama the stand-in's inputs and pipeline hold (the pipeline stacks every layer's).
LLAMA_LAYERS = 2


def tiny_hidream(num_layers: int = 2, num_single_layers: int = 2, in_channels: int = 4, text_dim: int = 16,
                 pooled_dim: int = 8, seed: int = 0) -> HiDreamImageTransformer2DModel:
    """A HiDream-I1 transformer on latents in 2x2 patches (rotary axes 4+2+2): `num_layers` double-stream blocks,
    then `num_single_layers` single-stream blocks; block i reads Llama layer i mod 2. T5 and Llama tokens have
    `text_dim` features, the pooled CLIP embedding `pooled_dim`. Non-square latents are padded to the 64 tokens of
    its `max_resolution` (16 x 16 latents). Weights at half the other stand-ins' scale: at theirs, one row's output
    differs by ~1e-5 between a batch and a call of its own (float32 matmuls of other shapes)."""
    num_blocks = num_layers + num_single_layers
    return _stand_in(
        HiDreamImageTransformer2DModel, seed, scale=0.1, patch_size=2, in_channels=in_channels, num_layers=num_layers,
        num_single_layers=num_single_layers, caption_channels=[text_dim, text_dim], text_emb_dim=pooled_dim,
        axes_dims_rope=(4, 2, 2), max_resolution=(16, 16), llama_layers=[i % LLAMA_LAYERS for i in range(num_blocks)],
    )


def hidream_inputs(model: HiDreamImageTransformer2DModel, batch: int = 4, side: int = 8, text_len: int = 5,
                   seed: int = 1) -> dict[str, Any]:
    """One call as HiDreamImagePipeline makes it: (B, C, side, side) latents, then T5 tokens (B, text_len, D_t5),
    the Llama layers (2, B, text_len, D_llama) and the pooled CLIP embedding (B, D_pooled) drawn in that order; 0-999
    `timesteps` (the model's own name) spread over 10-900."""
    config = model.config
    g = torch.Generator().manual_seed(seed)
    t5_dim, llama_dim = config.caption_channels
    return {
        "hidden_states": torch.randn(batch, config.in_channels, side, side, generator=g),
        "timesteps": torch.linspace(10, 900, batch),
        "encoder_hidden_states_t5": torch.randn(batch, text_len, t5_dim, generator=g),
        "encoder_hidden_states_llama3": torch.randn(LLAMA_LAYERS, batch, text_len, llama_dim, generator=g),
        "pooled_embeds": torch.randn(batch, config.text_emb_dim, generator=g),
    }


def tiny_hidream_pipeline(seed: int = 0) -> Any:
    """The stock `HiDreamImagePipeline` around `tiny_hidream`, every component tiny, random and built in-process.

    The pooled embedding is the two CLIP projections side by side (4 + 4); T5 (width 16) reads `tiny_tokenizer`, as
    does the Llama (`LlamaForCausalLM`, 2 layers of width 16, whose stacked hidden states the pipeline passes on);
    the VAE (`tiny_vae`, with Flux's latent shift) compresses by 2 and the transformer patches 2x2. The pipeline
    rescales every call to the area of `default_sample_size` squared latents (128 in the pipeline: 256 pixels here);
    this one is set to 8 latents (16 pixels), which the pipeline does not save: a reloaded folder makes 256-pixel
    images. The CLIPs have the 128 positions of the pipeline's default `max_sequence_length`.

    ```py
    >>> pipe = tiny_hidream_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> pipe("a red cat", num_inference_steps=2, output_type="np", max_sequence_length=8).images.shape
    (1, 16, 16, 3)

    ```
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline
    from transformers import LlamaConfig, LlamaForCausalLM

    # The pipeline asks the Llama for its attention maps too: the eager attention returns them.
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=LLAMA_LAYERS, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=128, pad_token_id=0, bos_token_id=3, eos_token_id=2,
                                         attn_implementation="eager"))
    _randomise(llama, seed + 4, scale=0.2)
    pipe = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(shift_factor=0.1, seed=seed + 1),
        text_encoder=tiny_clip(positions=128, seed=seed + 2), tokenizer=tiny_tokenizer(clip=True),
        text_encoder_2=tiny_clip(positions=128, seed=seed + 3), tokenizer_2=tiny_tokenizer(clip=True),
        text_encoder_3=tiny_t5(16, seed=seed + 5), tokenizer_3=tiny_tokenizer(),
        text_encoder_4=llama.eval(), tokenizer_4=tiny_tokenizer(), transformer=tiny_hidream(seed=seed))
    pipe.default_sample_size = 8
    return pipe
