"""Wan's output head (`WanTransformer3DModel`): `scale_shift_table` + temb modulate `norm_out`, `proj_out`, then the
3-D unpatchify."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, unpatchify


class WanDecoder(ExitDecoder):
    """`decode` repeats the model's head on any block's image stream (B, L, D) -> (B, C, F, H, W), so decoding the
    last block is the model's output bit for bit; it needs the sample's (frames, height, width) to unpatchify, which
    it reads from `sample`, the model's input.
    """

    token_heads = True
    decode_reads_sample = True

    def _embed(self, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(temb (B, D), the blocks' modulation (B, 6, D), the embedded text (B, L_text, D)), as the forward makes
        them."""
        temb, projection, text, _ = self.model.condition_embedder(timestep, encoder_hidden_states, None)
        return temb, projection.unflatten(1, (6, -1)), text

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        embedder = self.model.condition_embedder
        return embedder.time_embedder(embedder.timesteps_proj(timestep).to(dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, **unused: Any
    ) -> list[torch.Tensor]:
        model = self.model
        rotary = model.rope(sample)
        hidden_states = model.patch_embedding(sample).flatten(2).transpose(1, 2).contiguous()
        _, modulation, text = self._embed(timestep, encoder_hidden_states)
        return self.run_blocks(hidden_states, encoder_hidden_states=text, temb=modulation, rotary_emb=rotary)

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        sample: torch.Tensor, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, C, F, H, W); `sample` is the model's input (B, C, F, H, W), whose frames,
        height and width the head unpatchifies to (as the model reads them from its input)."""
        model = self.model
        temb, _, _ = self._embed(timestep, encoder_hidden_states)
        shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)  # each (B, 1, D)
        hidden_states = (model.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        return self.arrange(model.proj_out(hidden_states), sample)

    def arrange(self, tokens: torch.Tensor, sample: torch.Tensor, **unused: Any) -> torch.Tensor:
        _, _, frames, height, width = sample.shape
        p_t, p_h, p_w = self.model.config.patch_size
        return unpatchify(tokens, (p_t, p_h, p_w), grid=(frames // p_t, height // p_h, width // p_w))
