"""Qwen-Image's output head (`QwenImageTransformer2DModel`): `norm_out(h, temb)`, `proj_out`, on packed tokens."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder


class QwenImageDecoder(ExitDecoder):
    """The model takes a 0-1 `timestep` (its time projection scales it by 1000) and predicts packed tokens (B, L, C);
    `decode` repeats its head on any block's image stream, so decoding the last block is the model's output bit for
    bit. The edit models' `zero_cond_t` (a second, zero-timestep modulation for the reference image) is not decoded.
    """

    token_heads = True
    channel_dim = -1  # predictions are packed tokens (B, L, C)

    def _temb(self, timestep: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, D), as the forward embeds the 0-1 timestep (`hidden_states` gives the dtype)."""
        if self.model.zero_cond_t:
            raise ValueError("decoding a Qwen-Image edit model (zero_cond_t) is not supported: its blocks modulate the "
                             "reference image's tokens with a second, zero timestep")
        return self.model.time_text_embed(timestep.to(hidden_states.dtype), hidden_states)

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # `timestep` here is the engine's 0-999 timestep; the model's projection takes it in 0-1 and scales by 1000.
        embed = self.model.time_text_embed
        return embed.timestep_embedder(embed.time_proj(timestep / 1000).to(dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        img_shapes: list, encoder_hidden_states_mask: torch.Tensor | None = None, **unused: Any,
    ) -> list[torch.Tensor]:
        model = self.model
        hidden_states = model.img_in(sample)
        temb = self._temb(timestep, hidden_states)
        text = model.txt_in(model.txt_norm(encoder_hidden_states))
        mask = None if encoder_hidden_states_mask is None else encoder_hidden_states_mask.to(torch.bool)
        rotary = model.pos_embed(img_shapes, max_txt_seq_len=text.shape[1], device=sample.device)
        return self.run_blocks(hidden_states, text, encoder_hidden_states_mask=mask, temb=temb, image_rotary_emb=rotary)

    def decode(self, hidden_states: torch.Tensor, timestep: torch.Tensor, **unused: Any) -> torch.Tensor:
        """(B, L, D) image stream -> (B, L, C) packed tokens, the same operations as the model's own output head."""
        temb = self._temb(timestep, hidden_states)
        return self.model.proj_out(self.model.norm_out(hidden_states, temb))
