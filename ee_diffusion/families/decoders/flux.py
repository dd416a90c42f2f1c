"""FLUX.1's output head (`FluxTransformer2DModel`): `norm_out(h, temb)`, `proj_out`, on packed tokens."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder


class FluxDecoder(ExitDecoder):
    """The model is called with a 0-1 `timestep` (and `guidance` on guidance-distilled checkpoints) that its forward
    scales by 1000 before `time_text_embed`; its output is the packed tokens (B, L, C) that the pipeline unpacks.
    `decode` repeats the head on any block's image stream, so decoding the last block is the model's output bit for
    bit.
    """

    token_heads = True
    channel_dim = -1  # predictions are packed tokens (B, L, C)

    def _temb(self, timestep: torch.Tensor, pooled_projections: torch.Tensor, guidance: torch.Tensor | None,
              dtype: torch.dtype) -> torch.Tensor:
        """(B, D) combined timestep, guidance and pooled-text embedding, as the model's forward computes it."""
        embed = self.model.time_text_embed
        timestep = timestep.to(dtype) * 1000
        if guidance is None:
            return embed(timestep, pooled_projections)
        return embed(timestep, guidance.to(dtype) * 1000, pooled_projections)

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor, txt_ids: torch.Tensor, img_ids: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        model = self.model
        hidden_states = model.x_embedder(sample)
        temb = self._temb(timestep, pooled_projections, guidance, hidden_states.dtype)
        rotary = model.pos_embed(torch.cat((txt_ids, img_ids), dim=0))  # (L_text + L, d) cos and sin
        return self.run_blocks(hidden_states, model.context_embedder(encoder_hidden_states), temb=temb,
                               image_rotary_emb=rotary)

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, pooled_projections: torch.Tensor,
        guidance: torch.Tensor | None = None, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, L, C) packed tokens, the same operations as the model's own output head."""
        model = self.model
        temb = self._temb(timestep, pooled_projections, guidance, hidden_states.dtype)
        return model.proj_out(model.norm_out(hidden_states, temb))
