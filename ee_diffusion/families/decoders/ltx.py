"""LTX-Video's output head (`LTXVideoTransformer3DModel`): `scale_shift_table` + the embedded timestep modulate
`norm_out`, then `proj_out`, on packed tokens."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, text_mask_bias


class LTXVideoDecoder(ExitDecoder):
    """The model predicts packed tokens (B, L, C) that its pipeline unpacks into a video; `decode` repeats its head on
    any block's image stream, so decoding the last block is the model's output bit for bit.
    """

    token_heads = True
    channel_dim = -1  # predictions are packed tokens (B, L, C)
    time_embedder = "time_embed.emb"

    def _time_embed(self, timestep: torch.Tensor, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(the blocks' modulation (B, 1, 6D), the embedded timestep (B, 1, D)), as the model's forward makes them."""
        temb, embedded = self.model.time_embed(timestep.flatten(), batch_size=batch, hidden_dtype=dtype)
        return temb.view(batch, -1, temb.size(-1)), embedded.view(batch, -1, embedded.size(-1))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None, num_frames: int | None = None, height: int | None = None,
        width: int | None = None, rope_interpolation_scale: tuple | torch.Tensor | None = None,
        video_coords: torch.Tensor | None = None, **unused: Any,
    ) -> list[torch.Tensor]:
        model = self.model
        batch = sample.shape[0]
        rotary = model.rope(sample, num_frames, height, width, rope_interpolation_scale, video_coords)
        hidden_states = model.proj_in(sample)
        temb, _ = self._time_embed(timestep, batch, hidden_states.dtype)
        text = model.caption_projection(encoder_hidden_states).view(batch, -1, hidden_states.size(-1))
        return self.run_blocks(
            hidden_states, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary,
            encoder_attention_mask=text_mask_bias(encoder_attention_mask, sample.dtype),
        )

    def decode(self, hidden_states: torch.Tensor, timestep: torch.Tensor, **unused: Any) -> torch.Tensor:
        """(B, L, D) image stream -> (B, L, C) packed tokens, the same operations as the model's own output head."""
        model = self.model
        _, embedded = self._time_embed(timestep, hidden_states.shape[0], hidden_states.dtype)
        # (1, 1, 2, D) + (B, 1, 1, D) -> shift, scale each (B, 1, D)
        shift_scale = model.scale_shift_table[None, None] + embedded[:, :, None]
        shift, scale = shift_scale[:, :, 0], shift_scale[:, :, 1]
        return model.proj_out(model.norm_out(hidden_states) * (1 + scale) + shift)
