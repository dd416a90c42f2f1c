"""Tiny random stand-ins of the newer transformer families and one call's inputs for each (`<family>_inputs`)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    ChromaTransformer2DModel,
    CogVideoXTransformer3DModel,
    CogView4Transformer2DModel,
    FluxTransformer2DModel,
    HunyuanVideoTransformer3DModel,
    LTXVideoTransformer3DModel,
    QwenImageTransformer2DModel,
    SanaTransformer2DModel,
    WanTransformer3DModel,
)

from .models import _randomise


def tiny_flux(num_layers: int = 2, num_single_layers: int = 2, in_channels: int = 4, text_dim: int = 16,
              pooled_dim: int = 8, guidance: bool = False, seed: int = 0) -> FluxTransformer2DModel:
    """A randomly initialised FLUX.1 transformer (width 16, 2 heads, rotary axes 2+2+4) in eval mode: `num_layers`
    double-stream blocks, then `num_single_layers` single-stream blocks. `guidance=True`: guidance-distilled (dev).

    ```py
    >>> model = tiny_flux()
    >>> len(model.transformer_blocks), len(model.single_transformer_blocks)
    (2, 2)

    ```
    """
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=text_dim, pooled_projection_dim=pooled_dim,
        guidance_embeds=guidance, axes_dims_rope=(2, 2, 4),
    )
    _randomise(model, seed)
    return model.eval()


def flux_inputs(model: FluxTransformer2DModel, batch: int = 4, side: int = 4, text_len: int = 5,
                seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call of `model`: `side` x `side` packed latent tokens and `text_len` text tokens per row,
    0-1 timesteps spread over the batch, and the position ids FluxPipeline builds (2-D, shared by every row)."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    inputs = {
        "hidden_states": torch.randn(batch, side * side, config.in_channels, generator=g),
        "timestep": torch.linspace(0.01, 0.9, batch),
        "encoder_hidden_states": torch.randn(batch, text_len, config.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, config.pooled_projection_dim, generator=g),
        "txt_ids": torch.zeros(text_len, 3),
        "img_ids": torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float(),
    }
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs


def tiny_qwenimage(num_layers: int = 3, in_channels: int = 16, text_dim: int = 16, seed: int = 0
                   ) -> QwenImageTransformer2DModel:
    """A randomly initialised Qwen-Image MMDiT (width 16, 2 heads, rotary axes 2+2+4) in eval mode.

    ```py
    >>> len(tiny_qwenimage().transformer_blocks)
    3

    ```
    """
    model = QwenImageTransformer2DModel(
        patch_size=2, in_channels=in_channels, out_channels=in_channels // 4, num_layers=num_layers,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=text_dim, axes_dims_rope=(2, 2, 4),
    )
    _randomise(model, seed)
    return model.eval()


def qwenimage_inputs(model: QwenImageTransformer2DModel, batch: int = 4, side: int = 4, text_len: int = 5,
                     seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call: `side` x `side` packed tokens per row, a text mask with a padded tail on odd rows,
    0-1 timesteps spread over the batch, and `img_shapes` as QwenImagePipeline passes them."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[1::2, -2:] = 0
    return {
        "hidden_states": torch.randn(batch, side * side, model.config.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_len, model.config.joint_attention_dim, generator=g),
        "encoder_hidden_states_mask": mask,
        "timestep": torch.linspace(0.01, 0.9, batch),
        "img_shapes": [[(1, side, side)]] * batch,
    }


def tiny_wan(num_layers: int = 3, in_channels: int = 4, text_dim: int = 16, seed: int = 0) -> WanTransformer3DModel:
    """A randomly initialised Wan 2.1 video DiT (width 16, 2 heads, patch (1, 2, 2)) in eval mode.

    ```py
    >>> len(tiny_wan().blocks)
    3

    ```
    """
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=in_channels,
        out_channels=in_channels, text_dim=text_dim, freq_dim=16, ffn_dim=32, num_layers=num_layers,
        rope_max_seq_len=32,
    )
    _randomise(model, seed)
    return model.eval()


def wan_inputs(model: WanTransformer3DModel, batch: int = 4, frames: int = 2, side: int = 4, text_len: int = 5,
               seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call: 5-D latents (B, C, frames, side, side), text, 0-999 timesteps over the batch."""
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, model.config.in_channels, frames, side, side, generator=g),
        "timestep": torch.linspace(10, 900, batch),
        "encoder_hidden_states": torch.randn(batch, text_len, model.config.text_dim, generator=g),
    }


def tiny_sana(num_layers: int = 3, in_channels: int = 4, caption_channels: int = 16, patch_size: int = 2,
              guidance: bool = False, seed: int = 0) -> SanaTransformer2DModel:
    """A randomly initialised Sana transformer (width 16, 2 heads, cross-attention 2 x 8, patch 2) in eval mode.
    `guidance=True`: with a guidance embedding (Sana Sprint's architecture).

    ```py
    >>> len(tiny_sana().transformer_blocks)
    3

    ```
    """
    model = SanaTransformer2DModel(
        in_channels=in_channels, out_channels=in_channels, num_attention_heads=2, attention_head_dim=8,
        num_layers=num_layers, num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
        caption_channels=caption_channels, sample_size=8, patch_size=patch_size, guidance_embeds=guidance,
    )
    _randomise(model, seed)
    return model.eval()


def sana_inputs(model: SanaTransformer2DModel, batch: int = 4, height: int = 8, width: int = 8, text_len: int = 5,
                seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call: latents (B, C, height, width), text with a padded tail on odd rows (its keep-mask),
    0-999 timesteps spread over the batch (SanaPipeline's convention)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[1::2, -2:] = 0
    return {
        "hidden_states": torch.randn(batch, model.config.in_channels, height, width, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_len, model.config.caption_channels, generator=g),
        "encoder_attention_mask": mask,
        "timestep": torch.linspace(10, 900, batch),
    }


def tiny_cogvideox(num_layers: int = 3, in_channels: int = 4, text_dim: int = 16, text_len: int = 5, seed: int = 0
                   ) -> CogVideoXTransformer3DModel:
    """A randomly initialised CogVideoX video DiT (width 16, 2 heads, patch 2, sin-cos positions as CogVideoX-2b) in
    eval mode. Its positional table holds exactly `text_len` text tokens, so calls must pass that many.

    ```py
    >>> len(tiny_cogvideox().transformer_blocks)
    3

    ```
    """
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=in_channels, out_channels=in_channels,
        time_embed_dim=16, text_embed_dim=text_dim, num_layers=num_layers, sample_width=4, sample_height=4,
        sample_frames=5, max_text_seq_length=text_len,
    )
    _randomise(model, seed)
    return model.eval()


def cogvideox_inputs(model: CogVideoXTransformer3DModel, batch: int = 4, frames: int = 2, side: int = 4,
                     seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call: 5-D latents (B, frames, C, side, side) as CogVideoXPipeline lays them out, text,
    0-999 timesteps over the batch."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    return {
        "hidden_states": torch.randn(batch, frames, config.in_channels, side, side, generator=g),
        "timestep": torch.linspace(10, 900, batch),
        "encoder_hidden_states": torch.randn(batch, config.max_text_seq_length, config.text_embed_dim, generator=g),
    }


def tiny_hunyuanvideo(num_layers: int = 2, num_single_layers: int = 2, in_channels: int = 4, text_dim: int = 16,
                      pooled_dim: int = 8, guidance: bool = False, seed: int = 0) -> HunyuanVideoTransformer3DModel:
    """A randomly initialised HunyuanVideo transformer (width 16, 2 heads, patch (1, 2, 2), rotary axes 2+2+4, one
    token-refiner block) in eval mode: `num_layers` dual-stream blocks, then `num_single_layers` single-stream blocks.
    `guidance=True`: guidance-distilled, as the released checkpoint.

    ```py
    >>> model = tiny_hunyuanvideo()
    >>> len(model.transformer_blocks), len(model.single_transformer_blocks)
    (2, 2)

    ```
    """
    model = HunyuanVideoTransformer3DModel(
        in_channels=in_channels, out_channels=in_channels, num_attention_heads=2, attention_head_dim=8,
        num_layers=num_layers, num_single_layers=num_single_layers, num_refiner_layers=1, patch_size=2,
        patch_size_t=1, guidance_embeds=guidance, text_embed_dim=text_dim, pooled_projection_dim=pooled_dim,
        rope_axes_dim=(2, 2, 4),
    )
    _randomise(model, seed)
    return model.eval()


def hunyuanvideo_inputs(model: HunyuanVideoTransformer3DModel, batch: int = 4, frames: int = 2, side: int = 4,
                        text_len: int = 5, seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call: 5-D latents (B, C, frames, side, side), text with a padded tail on odd rows (its
    mask), pooled text, 0-999 timesteps over the batch, and `guidance` (x 1000, as HunyuanVideoPipeline passes it)
    for a guidance-distilled model."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[1::2, -2:] = 0
    inputs = {
        "hidden_states": torch.randn(batch, config.in_channels, frames, side, side, generator=g),
        "timestep": torch.linspace(10, 900, batch),
        "encoder_hidden_states": torch.randn(batch, text_len, config.text_embed_dim, generator=g),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(batch, config.pooled_projection_dim, generator=g),
    }
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 6000.0)
    return inputs


def tiny_cogview4(num_layers: int = 3, in_channels: int = 4, text_dim: int = 16, seed: int = 0
                  ) -> CogView4Transformer2DModel:
    """A randomly initialised CogView4 MMDiT (width 16, 2 heads, patch 2, timestep embedding 16) in eval mode.

    ```py
    >>> len(tiny_cogview4().transformer_blocks)
    3

    ```
    """
    model = CogView4Transformer2DModel(
        patch_size=2, in_channels=in_channels, out_channels=in_channels, num_layers=num_layers, attention_head_dim=8,
        num_attention_heads=2, text_embed_dim=text_dim, time_embed_dim=16, condition_dim=8, sample_size=8,
        rope_axes_dim=(8, 8),
    )
    _randomise(model, seed)
    return model.eval()


def cogview4_inputs(model: CogView4Transformer2DModel, batch: int = 4, height: int = 8, width: int = 8,
                    text_len: int = 5, seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call: latents (B, C, height, width), text with a padded tail on odd rows (its keep-mask),
    0-999 timesteps spread over the batch, and the size conditions (B, 2) CogView4Pipeline passes."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_len)
    mask[1::2, -2:] = 0
    size = torch.tensor([[height * 8.0, width * 8.0]]).repeat(batch, 1)  # pixels: the VAE downsamples by 8
    return {
        "hidden_states": torch.randn(batch, model.config.in_channels, height, width, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_len, model.config.text_embed_dim, generator=g),
        "timestep": torch.linspace(10, 900, batch),
        "original_size": size,
        "target_size": size.clone(),
        "crop_coords": torch.zeros(batch, 2),
        "attention_mask": mask,
    }


def tiny_chroma(num_layers: int = 2, num_single_layers: int = 3, in_channels: int = 4, text_dim: int = 16,
                seed: int = 0) -> ChromaTransformer2DModel:
    """A randomly initialised Chroma transformer (width 16, 2 heads, rotary axes 2+2+4, a 2-layer modulation
    approximator) in eval mode: `num_layers` double-stream blocks, then `num_single_layers` single-stream blocks.

    ```py
    >>> model = tiny_chroma()
    >>> len(model.transformer_blocks), len(model.single_transformer_blocks)
    (2, 3)

    ```
    """
    model = ChromaTransformer2DModel(
        patch_size=1, in_channels=in_channels, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=text_dim, axes_dims_rope=(2, 2, 4),
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=2,
    )
    _randomise(model, seed)
    return model.eval()


def chroma_inputs(model: ChromaTransformer2DModel, batch: int = 4, side: int = 4, text_len: int = 5,
                  seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call: `side` x `side` packed latent tokens and `text_len` text tokens per row, 0-1
    timesteps over the batch, the shared 2-D position ids, and the joint (B, text_len + side * side) attention mask
    as ChromaPipeline builds it (float, the padded text tail of odd rows zeroed)."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    mask = torch.ones(batch, text_len + side * side)
    mask[1::2, text_len - 2 : text_len] = 0
    return {
        "hidden_states": torch.randn(batch, side * side, config.in_channels, generator=g),
        "timestep": torch.linspace(0.01, 0.9, batch),
        "encoder_hidden_states": torch.randn(batch, text_len, config.joint_attention_dim, generator=g),
        "txt_ids": torch.zeros(text_len, 3),
        "img_ids": torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float(),
        "attention_mask": mask,
    }


def tiny_ltx(num_layers: int = 3, in_channels: int = 8, caption_channels: int = 16, seed: int = 0
             ) -> LTXVideoTransformer3DModel:
    """A randomly initialised LTX-Video transformer (width 16, 2 heads, patch 1) in eval mode.

    ```py
    >>> len(tiny_ltx().transformer_blocks)
    3

    ```
    """
    model = LTXVideoTransformer3DModel(
        in_channels=in_channels, out_channels=in_channels, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=num_layers, caption_channels=caption_channels,
    )
    _randomise(model, seed)
    return model.eval()


def ltx_inputs(model: LTXVideoTransformer3DModel, batch: int = 4, frames: int = 2, side: int = 4, text_len: int = 5,
               seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call as LTXPipeline makes them: packed latent tokens (B, frames * side * side, C), text
    with a padded tail on odd rows (its keep-mask), 0-999 timesteps over the batch, the latent grid and the rotary
    interpolation scale (VAE compression 8 in time at 25 fps, 32 in space)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_len)
    mask[1::2, -2:] = 0
    return {
        "hidden_states": torch.randn(batch, frames * side * side, model.config.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_len, model.config.caption_channels, generator=g),
        "timestep": torch.linspace(10, 900, batch),
        "encoder_attention_mask": mask,
        "num_frames": frames,
        "height": side,
        "width": side,
        "rope_interpolation_scale": (8 / 25, 32, 32),
    }
