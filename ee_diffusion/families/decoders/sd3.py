"""SD3's output head (`SD3Transformer2DModel`): `norm_out(h, temb)`, `proj_out`, unpatchify."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, unpatchify


class SD3Decoder(ExitDecoder):
    """`temb` (B, D) is the combined timestep and pooled-text embedding; `decode` repeats the model's head, so
    decoding the last block is the model's output bit for bit.
    """

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
    ) -> list[torch.Tensor]:
        model = self.model
        hidden_states = model.pos_embed(sample).contiguous()
        temb = model.time_text_embed(timestep, pooled_projections)
        return self.run_blocks(hidden_states, model.context_embedder(encoder_hidden_states), temb=temb)

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, pooled_projections: torch.Tensor, **unused: Any
    ) -> torch.Tensor:
        """(B, L, D) image tokens -> (B, C_out, H, W), the same operations as the model's own output head."""
        model = self.model
        temb = model.time_text_embed(timestep, pooled_projections)  # (B, D)
        return self.arrange(model.proj_out(model.norm_out(hidden_states, temb)))

    def arrange(self, tokens: torch.Tensor, **unused: Any) -> torch.Tensor:
        return unpatchify(tokens, self.model.config.patch_size)
