"""Tiny random stand-ins of the newer transformer families and one call's inputs for each (`<family>_inputs`).

Every stand-in is width 16 as 2 heads of 8 (`models._stand_in`), randomly initialised (no zero gate makes a block the
identity) and in eval mode. Every call's inputs draw the noisy latents, then the text, then any pooled text from a
generator seeded with `seed`, and spread the timesteps over the batch (10 to 900; 0.01 to 0.9 for 0-1 models).

```py
>>> model = tiny_flux()
>>> len(model.transformer_blocks), len(model.single_transformer_blocks)
(2, 2)
>>> sorted(flux_inputs(model, batch=2))
['encoder_hidden_states', 'hidden_states', 'img_ids', 'pooled_projections', 'timestep', 'txt_ids']

```
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AuraFlowTransformer2DModel,
    ChromaTransformer2DModel,
    CogVideoXTransformer3DModel,
    CogView4Transformer2DModel,
    FluxTransformer2DModel,
    HunyuanVideoTransformer3DModel,
    LTXVideoTransformer3DModel,
    Lumina2Transformer2DModel,
    QwenImageTransformer2DModel,
    SanaTransformer2DModel,
    WanTransformer3DModel,
)

from .models import _randomise, _stand_in

def _call_inputs(batch: int, seed: int, sample_shape: tuple[int, ...], text_shape: tuple[int, int],
                 pooled_dim: int | None = None, unit_timestep: bool = False) -> dict[str, Any]:
    """Noisy latents (B, *sample_shape), text (B, *text_shape) and, with `pooled_dim`, pooled text (B, pooled_dim),
    drawn in that order; timesteps (B,) spread over 0-999, or over 0-1 with `unit_timestep`."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "hidden_states": torch.randn(batch, *sample_shape, generator=g),
        "timestep": torch.linspace(0.01, 0.9, batch) if unit_timestep else torch.linspace(10, 900, batch),
        "encoder_hidden_states": torch.randn(batch, *text_shape, generator=g),
    }
    if pooled_dim is not None:
        inputs["pooled_projections"] = torch.randn(batch, pooled_dim, generator=g)
    return inputs


def _text_mask(batch: int, text_len: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """(B, text_len) keep-mask whose odd rows have a padded tail of 2 tokens, as a pipeline pads shorter prompts."""
    mask = torch.ones(batch, text_len, dtype=dtype)
    mask[1::2, -2:] = 0
    return mask


def _position_ids(side: int, text_len: int) -> dict[str, torch.Tensor]:
    """The position ids FluxPipeline builds, shared by every row: text (text_len, 3) zeros, image (side^2, 3)."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    return {"txt_ids": torch.zeros(text_len, 3), "img_ids": image}


def tiny_flux(num_layers: int = 2, num_single_layers: int = 2, in_channels: int = 4, text_dim: int = 16,
              pooled_dim: int = 8, guidance: bool = False, seed: int = 0) -> FluxTransformer2DModel:
    """A FLUX.1 transformer (rotary axes 2+2+4): `num_layers` double-stream blocks, then `num_single_layers`
    single-stream blocks. `guidance=True`: guidance-distilled (dev)."""
    return _stand_in(
        FluxTransformer2DModel, seed, patch_size=1, in_channels=in_channels, num_layers=num_layers,
        num_single_layers=num_single_layers, joint_attention_dim=text_dim, pooled_projection_dim=pooled_dim,
        guidance_embeds=guidance, axes_dims_rope=(2, 2, 4),
    )


def flux_inputs(model: FluxTransformer2DModel, batch: int = 4, side: int = 4, text_len: int = 5,
                seed: int = 1) -> dict[str, Any]:
    """One call: `side` x `side` packed latent tokens and `text_len` text tokens per row, 0-1 timesteps, the position
    ids, and `guidance` for a guidance-distilled model."""
    config = model.config
    inputs = _call_inputs(batch, seed, (side * side, config.in_channels), (text_len, config.joint_attention_dim),
                          config.pooled_projection_dim, unit_timestep=True)
    inputs.update(_position_ids(side, text_len))
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs


def tiny_qwenimage(num_layers: int = 3, in_channels: int = 16, text_dim: int = 16, seed: int = 0
                   ) -> QwenImageTransformer2DModel:
    """A Qwen-Image MMDiT (patch 2, rotary axes 2+2+4)."""
    return _stand_in(
        QwenImageTransformer2DModel, seed, patch_size=2, in_channels=in_channels, out_channels=in_channels // 4,
        num_layers=num_layers, joint_attention_dim=text_dim, axes_dims_rope=(2, 2, 4),
    )


def qwenimage_inputs(model: QwenImageTransformer2DModel, batch: int = 4, side: int = 4, text_len: int = 5,
                     seed: int = 1) -> dict[str, Any]:
    """One call: `side` x `side` packed tokens per row, text and its mask, 0-1 timesteps, and `img_shapes` as
    QwenImagePipeline passes them."""
    config = model.config
    inputs = _call_inputs(batch, seed, (side * side, config.in_channels), (text_len, config.joint_attention_dim),
                          unit_timestep=True)
    inputs["encoder_hidden_states_mask"] = _text_mask(batch, text_len)
    return {**inputs, "img_shapes": [[(1, side, side)]] * batch}


def tiny_wan(num_layers: int = 3, in_channels: int = 4, text_dim: int = 16, seed: int = 0) -> WanTransformer3DModel:
    """A Wan 2.1 video DiT (patch (1, 2, 2))."""
    return _stand_in(
        WanTransformer3DModel, seed, patch_size=(1, 2, 2), in_channels=in_channels, out_channels=in_channels,
        text_dim=text_dim, freq_dim=16, ffn_dim=32, num_layers=num_layers, rope_max_seq_len=32,
    )


def wan_inputs(model: WanTransformer3DModel, batch: int = 4, frames: int = 2, side: int = 4, text_len: int = 5,
               seed: int = 1) -> dict[str, Any]:
    """One call: 5-D latents (B, C, frames, side, side) and text."""
    config = model.config
    return _call_inputs(batch, seed, (config.in_channels, frames, side, side), (text_len, config.text_dim))


def tiny_sana(num_layers: int = 3, in_channels: int = 4, caption_channels: int = 16, patch_size: int = 2,
              guidance: bool = False, seed: int = 0) -> SanaTransformer2DModel:
    """A Sana transformer (cross-attention 2 x 8). `guidance=True`: with a guidance embedding (Sana Sprint's
    architecture)."""
    return _stand_in(
        SanaTransformer2DModel, seed, in_channels=in_channels, out_channels=in_channels, num_layers=num_layers,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
        caption_channels=caption_channels, sample_size=8, patch_size=patch_size, guidance_embeds=guidance,
    )


def sana_inputs(model: SanaTransformer2DModel, batch: int = 4, height: int = 8, width: int = 8, text_len: int = 5,
                seed: int = 1) -> dict[str, Any]:
    """One call: latents (B, C, height, width), text and its keep-mask, 0-999 timesteps (SanaPipeline's convention)."""
    config = model.config
    inputs = _call_inputs(batch, seed, (config.in_channels, height, width), (text_len, config.caption_channels))
    return {**inputs, "encoder_attention_mask": _text_mask(batch, text_len)}


def tiny_cogvideox(num_layers: int = 3, in_channels: int = 4, text_dim: int = 16, text_len: int = 5, seed: int = 0
                   ) -> CogVideoXTransformer3DModel:
    """A CogVideoX video DiT (patch 2, sin-cos positions as CogVideoX-2b). Its positional table holds exactly
    `text_len` text tokens, so calls must pass that many."""
    return _stand_in(
        CogVideoXTransformer3DModel, seed, in_channels=in_channels, out_channels=in_channels, time_embed_dim=16,
        text_embed_dim=text_dim, num_layers=num_layers, sample_width=4, sample_height=4, sample_frames=5,
        max_text_seq_length=text_len,
    )


def cogvideox_inputs(model: CogVideoXTransformer3DModel, batch: int = 4, frames: int = 2, side: int = 4,
                     seed: int = 1) -> dict[str, Any]:
    """One call: 5-D latents (B, frames, C, side, side) as CogVideoXPipeline lays them out, and text."""
    config = model.config
    return _call_inputs(batch, seed, (frames, config.in_channels, side, side),
                        (config.max_text_seq_length, config.text_embed_dim))


def tiny_hunyuanvideo(num_layers: int = 2, num_single_layers: int = 2, in_channels: int = 4, text_dim: int = 16,
                      pooled_dim: int = 8, guidance: bool = False, seed: int = 0) -> HunyuanVideoTransformer3DModel:
    """A HunyuanVideo transformer (patch (1, 2, 2), rotary axes 2+2+4, one token-refiner block): `num_layers`
    dual-stream blocks, then `num_single_layers` single-stream blocks. `guidance=True`: guidance-distilled, as the
    released checkpoint."""
    return _stand_in(
        HunyuanVideoTransformer3DModel, seed, in_channels=in_channels, out_channels=in_channels,
        num_layers=num_layers, num_single_layers=num_single_layers, num_refiner_layers=1, patch_size=2,
        patch_size_t=1, guidance_embeds=guidance, text_embed_dim=text_dim, pooled_projection_dim=pooled_dim,
        rope_axes_dim=(2, 2, 4),
    )


def hunyuanvideo_inputs(model: HunyuanVideoTransformer3DModel, batch: int = 4, frames: int = 2, side: int = 4,
                        text_len: int = 5, seed: int = 1) -> dict[str, Any]:
    """One call: 5-D latents (B, C, frames, side, side), text and its mask, pooled text, and `guidance` (x 1000, as
    HunyuanVideoPipeline passes it) for a guidance-distilled model."""
    config = model.config
    inputs = _call_inputs(batch, seed, (config.in_channels, frames, side, side), (text_len, config.text_embed_dim),
                          config.pooled_projection_dim)
    inputs["encoder_attention_mask"] = _text_mask(batch, text_len)
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 6000.0)
    return inputs


def tiny_cogview4(num_layers: int = 3, in_channels: int = 4, text_dim: int = 16, seed: int = 0
                  ) -> CogView4Transformer2DModel:
    """A CogView4 MMDiT (patch 2, timestep embedding 16)."""
    return _stand_in(
        CogView4Transformer2DModel, seed, patch_size=2, in_channels=in_channels, out_channels=in_channels,
        num_layers=num_layers, text_embed_dim=text_dim, time_embed_dim=16, condition_dim=8, sample_size=8,
        rope_axes_dim=(8, 8),
    )


def cogview4_inputs(model: CogView4Transformer2DModel, batch: int = 4, height: int = 8, width: int = 8,
                    text_len: int = 5, seed: int = 1) -> dict[str, Any]:
    """One call: latents (B, C, height, width), text and its (float) keep-mask, and the size conditions (B, 2)
    CogView4Pipeline passes."""
    config = model.config
    inputs = _call_inputs(batch, seed, (config.in_channels, height, width), (text_len, config.text_embed_dim))
    size = torch.tensor([[height * 8.0, width * 8.0]]).repeat(batch, 1)  # pixels: the VAE downsamples by 8
    return {**inputs, "original_size": size, "target_size": size.clone(), "crop_coords": torch.zeros(batch, 2),
            "attention_mask": _text_mask(batch, text_len, torch.float32)}


def tiny_chroma(num_layers: int = 2, num_single_layers: int = 3, in_channels: int = 4, text_dim: int = 16,
                seed: int = 0) -> ChromaTransformer2DModel:
    """A Chroma transformer (rotary axes 2+2+4, a 2-layer modulation approximator): `num_layers` double-stream
    blocks, then `num_single_layers` single-stream blocks."""
    return _stand_in(
        ChromaTransformer2DModel, seed, patch_size=1, in_channels=in_channels, num_layers=num_layers,
        num_single_layers=num_single_layers, joint_attention_dim=text_dim, axes_dims_rope=(2, 2, 4),
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=2,
    )


def chroma_inputs(model: ChromaTransformer2DModel, batch: int = 4, side: int = 4, text_len: int = 5,
                  seed: int = 1) -> dict[str, Any]:
    """One call: `side` x `side` packed latent tokens and `text_len` text tokens per row, 0-1 timesteps, the position
    ids, and the joint (B, text_len + side * side) attention mask as ChromaPipeline builds it (float, the text's
    padded tail zeroed)."""
    config = model.config
    inputs = _call_inputs(batch, seed, (side * side, config.in_channels), (text_len, config.joint_attention_dim),
                          unit_timestep=True)
    mask = torch.cat([_text_mask(batch, text_len, torch.float32), torch.ones(batch, side * side)], dim=1)
    return {**inputs, **_position_ids(side, text_len), "attention_mask": mask}


def tiny_ltx(num_layers: int = 3, in_channels: int = 8, caption_channels: int = 16, seed: int = 0
             ) -> LTXVideoTransformer3DModel:
    """An LTX-Video transformer (patch 1)."""
    return _stand_in(
        LTXVideoTransformer3DModel, seed, in_channels=in_channels, out_channels=in_channels, cross_attention_dim=16,
        num_layers=num_layers, caption_channels=caption_channels,
    )


def ltx_inputs(model: LTXVideoTransformer3DModel, batch: int = 4, frames: int = 2, side: int = 4, text_len: int = 5,
               seed: int = 1) -> dict[str, Any]:
    """One call as LTXPipeline makes it: packed latent tokens (B, frames * side * side, C), text and its (float)
    keep-mask, the latent grid and the rotary interpolation scale (VAE compression 8 in time at 25 fps, 32 in
    space)."""
    config = model.config
    inputs = _call_inputs(batch, seed, (frames * side * side, config.in_channels), (text_len, config.caption_channels))
    return {**inputs, "encoder_attention_mask": _text_mask(batch, text_len, torch.float32), "num_frames": frames,
            "height": side, "width": side, "rope_interpolation_scale": (8 / 25, 32, 32)}


def tiny_auraflow(num_layers: int = 2, num_single_layers: int = 2, in_channels: int = 4, text_dim: int = 16,
                  seed: int = 0) -> AuraFlowTransformer2DModel:
    """An AuraFlow transformer on 8x8 latents in 2x2 patches: `num_layers` joint blocks, then `num_single_layers`
    single-stream blocks on [8 register + text tokens; image tokens]. Weights at half the other stand-ins' scale: its
    unmodulated feed-forward residuals would otherwise grow the output to ~80, where float32 rounding is ~1e-5."""
    return _stand_in(AuraFlowTransformer2DModel, seed, scale=0.1, sample_size=8, patch_size=2, in_channels=in_channels,
                     out_channels=in_channels, num_mmdit_layers=num_layers, num_single_dit_layers=num_single_layers,
                     joint_attention_dim=text_dim, caption_projection_dim=16, pos_embed_max_size=64)


def auraflow_inputs(model: AuraFlowTransformer2DModel, batch: int = 4, side: int = 8, text_len: int = 5,
                    seed: int = 1) -> dict[str, Any]:
    """One call: (B, C, side, side) latents, `text_len` text tokens per row, 0-1 timesteps."""
    config = model.config
    return _call_inputs(batch, seed, (config.in_channels, side, side), (text_len, config.joint_attention_dim),
                        unit_timestep=True)


def tiny_lumina2(num_layers: int = 3, in_channels: int = 4, text_dim: int = 16, sample_size: int = 8,
                 text_positions: int = 32, seed: int = 0) -> Lumina2Transformer2DModel:
    """A Lumina2 transformer (width 16 as 2 query heads of 8, 1 key-value head) on `sample_size` latents a side (its
    pipeline's default) in 2x2 patches, with one caption and one noise refiner block before its `num_layers` main
    blocks. Its rotary table holds `text_positions` caption positions: captions up to one token shorter."""
    model = Lumina2Transformer2DModel(sample_size=sample_size, patch_size=2, in_channels=in_channels, hidden_size=16,
                                      num_layers=num_layers, num_refiner_layers=1, num_attention_heads=2,
                                      num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 2, 2),
                                      axes_lens=(text_positions, 16, 16), cap_feat_dim=text_dim)
    _randomise(model, seed)
    return model.eval()


def lumina2_inputs(model: Lumina2Transformer2DModel, batch: int = 4, side: int = 8, text_len: int = 5,
                   seed: int = 1) -> dict[str, Any]:
    """One call: (B, C, side, side) latents, captions whose odd rows are 2 tokens shorter (per-row lengths), and
    the model's own timestep 1 - t/1000 for t spread over 10-900."""
    config = model.config
    inputs = _call_inputs(batch, seed, (config.in_channels, side, side), (text_len, config.cap_feat_dim))
    inputs["timestep"] = 1 - inputs["timestep"] / 1000
    inputs["encoder_attention_mask"] = _text_mask(batch, text_len, torch.bool)
    return inputs
