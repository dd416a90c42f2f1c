"""A tiny random Hunyuan-DiT (`HunyuanDiT2DModel`), one call's inputs for it, and its tiny stock `HunyuanDiTPipeline`.

The stand-in is width 16 as 2 heads of 8 on 8x8 latents in 2x2 patches, with a BERT text of `text_len` tokens and a T5
text of `text_len_t5` tokens (the lengths its learned padding and its T5 pooler are built for), learned variance as the
released model. Its inputs draw the noisy latents and the BERT text from a generator seeded with `seed`, then the T5
text from one seeded `seed + 1`, and spread the timesteps over the batch (10 to 900, the 0-999 convention the pipeline
calls it with).

```py
>>> model = tiny_hunyuandit()
>>> len(model.blocks), [block.skip_linear is not None for block in model.blocks]
(6, [False, False, False, False, True, True])
>>> model(**hunyuandit_inputs(model, batch=2)).sample.shape  # eps and variance channels
torch.Size([2, 8, 8, 8])

```
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import HunyuanDiT2DModel
from diffusers.models.embeddings import get_2d_rotary_pos_embed

from .families import _call_inputs, _text_mask
from .models import _randomise, _stand_in
from .pipelines import tiny_t5, tiny_tokenizer


def tiny_hunyuandit(num_layers: int = 6, in_channels: int = 4, text_dim: int = 16, text_len: int = 4,
                    text_len_t5: int = 5, seed: int = 0) -> HunyuanDiT2DModel:
    """A Hunyuan-DiT transformer: `num_layers` blocks (even: the model pairs block i with block N-1-i, and the last
    N/2 - 1 take the skips), BERT and T5 text both `text_dim` wide, `text_len` and `text_len_t5` tokens long. Weights
    at half the other stand-ins' scale: at theirs its output grows to ~13, where float32 rounding between a batch and
    a row alone passes the suite's 1e-5."""
    return _stand_in(
        HunyuanDiT2DModel, seed, scale=0.1, in_channels=in_channels, patch_size=2, sample_size=8, hidden_size=16,
        num_layers=num_layers, cross_attention_dim=text_dim, cross_attention_dim_t5=text_dim, pooled_projection_dim=8,
        text_len=text_len, text_len_t5=text_len_t5,
    )


def _rotary_table(model: HunyuanDiT2DModel, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (cos, sin) rotary table as HunyuanDiTPipeline builds it for a (height, width) latent, each (L, head width),
    its positions spread over the patch grid itself (the pipeline spreads them over a 32-patch base grid)."""
    p = model.config.patch_size
    grid = (height // p, width // p)
    return get_2d_rotary_pos_embed(model.inner_dim // model.num_heads, ((0, 0), grid), grid, output_type="pt")


def hunyuandit_inputs(model: HunyuanDiT2DModel, batch: int = 4, height: int = 8, width: int = 8, seed: int = 1
                      ) -> dict[str, Any]:
    """One call: (B, C, height, width) latents; BERT and T5 text whose odd rows have a padded tail of 2 tokens; the
    size conditions (B, 6) and style id (B,) the pipeline gives; the shared rotary table; 0-999 timesteps."""
    config = model.config
    inputs = _call_inputs(batch, seed, (config.in_channels, height, width),
                          (config.text_len, config.cross_attention_dim))
    t5 = torch.randn(batch, config.text_len_t5, config.cross_attention_dim_t5,
                     generator=torch.Generator().manual_seed(seed + 1))
    # original size, target size, crop top-left: the pipeline's defaults (1024, 1024), the image's pixels, (0, 0)
    size = torch.tensor([[1024.0, 1024.0, 8.0 * height, 8.0 * width, 0.0, 0.0]]).repeat(batch, 1)
    return {**inputs, "text_embedding_mask": _text_mask(batch, config.text_len), "encoder_hidden_states_t5": t5,
            "text_embedding_mask_t5": _text_mask(batch, config.text_len_t5), "image_meta_size": size,
            "style": torch.zeros(batch, dtype=torch.long), "image_rotary_emb": _rotary_table(model, height, width)}


def tiny_hunyuandit_pipeline(seed: int = 0) -> Any:
    """`HunyuanDiTPipeline` around `tiny_hunyuandit` (6 blocks) with a random one-layer BERT and T5 (width 16) over
    `tiny_tokenizer`'s vocabulary and a 4-level VAE; no safety checker. Called as `tiny_family_pipeline("hunyuandit")`
    with `TINY_CALLS["hunyuandit"]`.

    The pipeline pads the BERT prompt to 77 tokens and the T5 prompt to 256 (the lengths the transformer is built
    for), builds its rotary table for height // 8 latents (so the VAE compresses 8-fold: a 64-pixel image is the
    transformer's 8x8 latent), and maps every size to 768-1280 pixels unless `use_resolution_binning=False`.

    ```py
    >>> pipe = tiny_hunyuandit_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> pipe("a red cat", num_inference_steps=2, output_type="np", use_resolution_binning=False).images.shape
    (1, 64, 64, 3)

    ```
    """
    from diffusers import AutoencoderKL, DDPMScheduler, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=77, pad_token_id=0))
    vae = AutoencoderKL(
        latent_channels=4, block_out_channels=(8,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4, sample_size=64)
    # The VAE's 0.15: its images vary with the latents without saturating (std about 0.06 in [0, 1]).
    for module, offset, scale in ((bert, 2, 0.2), (vae, 1, 0.15)):
        _randomise(module, seed + offset, scale)
    return HunyuanDiTPipeline(
        # BERT's prompts framed by start and end tokens, as its [CLS] and [SEP]
        vae=vae.eval(), text_encoder=bert.eval(), tokenizer=tiny_tokenizer(max_length=77, clip=True),
        transformer=tiny_hunyuandit(text_len=77, text_len_t5=256, seed=seed),
        scheduler=DDPMScheduler(clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, text_encoder_2=tiny_t5(16, seed=seed + 3),
        tokenizer_2=tiny_tokenizer(max_length=256))
