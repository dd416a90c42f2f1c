"""CogView4's output head (`CogView4Transformer2DModel`): `norm_out(h, temb)`, `proj_out`, then the unpatchify to
(B, C, H, W)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..decoder import ExitDecoder, unpatchify


class CogView4Decoder(ExitDecoder):
    """`temb` is the SiLU of the timestep embedding plus the embedding of the SDXL-style size conditions
    (`original_size`, `target_size`, `crop_coords`, each (B, 2)); `decode` repeats the model's head on any block's
    image stream, so decoding the last block is the model's output bit for bit. It reads the grid to unpatchify to
    from `sample`, the model's input, as the forward does.
    """

    decode_reads_sample = True
    time_embedder = "time_condition_embed"

    def embedding_dim(self) -> int:
        return self.model.config.time_embed_dim

    def _temb(
        self, timestep: torch.Tensor, original_size: torch.Tensor, target_size: torch.Tensor,
        crop_coords: torch.Tensor, dtype: torch.dtype,
    ) -> torch.Tensor:
        """(B, D_t), as the model's forward computes it (the SiLU included)."""
        return F.silu(self.model.time_condition_embed(timestep, original_size, target_size, crop_coords, dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        original_size: torch.Tensor, target_size: torch.Tensor, crop_coords: torch.Tensor,
        attention_mask: torch.Tensor | None = None, image_rotary_emb: tuple | None = None, **unused: Any,
    ) -> list[torch.Tensor]:
        model = self.model
        rotary = model.rope(sample) if image_rotary_emb is None else image_rotary_emb
        hidden_states, text = model.patch_embed(sample, encoder_hidden_states)
        temb = self._temb(timestep, original_size, target_size, crop_coords, hidden_states.dtype)
        return self.run_blocks(hidden_states, text, temb=temb, image_rotary_emb=rotary, attention_mask=attention_mask)

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor, original_size: torch.Tensor,
        target_size: torch.Tensor, crop_coords: torch.Tensor, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, C, H, W); `sample` is the model's input latent (B, C, H, W), whose height
        and width the head unpatchifies to."""
        model = self.model
        temb = self._temb(timestep, original_size, target_size, crop_coords, hidden_states.dtype)
        return self.arrange(model.proj_out(model.norm_out(hidden_states, temb)), sample)

    def arrange(self, tokens: torch.Tensor, sample: torch.Tensor, **unused: Any) -> torch.Tensor:
        p = self.model.config.patch_size
        return unpatchify(tokens, p, grid=(sample.shape[2] // p, sample.shape[3] // p), channels_last=False)
