"""Sana's output head (`SanaTransformer2DModel`): `norm_out(h, embedded_timestep, scale_shift_table)`, `proj_out`,
then the unpatchify to (B, C, H, W)."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, text_mask_bias, unpatchify


class SanaDecoder(ExitDecoder):
    """`time_embed` gives the blocks' modulation (B, 6D) and the embedded timestep (B, D) that modulates the final norm
    (with `guidance` on guidance-embedding checkpoints); `decode` repeats the model's head on any block's image
    stream, so decoding the last block is the model's output bit for bit. It reads the grid to unpatchify to from
    `sample`, the model's input, as the forward does.
    """

    decode_reads_sample = True

    def _time_embed(
        self, timestep: torch.Tensor, guidance: torch.Tensor | None, batch: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the blocks' modulation (B, 6D), the embedded timestep (B, D)), as the model's forward computes them."""
        if guidance is not None:
            return self.model.time_embed(timestep, guidance=guidance, hidden_dtype=dtype)
        return self.model.time_embed(timestep, batch_size=batch, hidden_dtype=dtype)

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        embed = self.model.time_embed
        if not self.model.config.guidance_embeds:
            embed = embed.emb  # AdaLayerNormSingle keeps its timestep embedder one level down
        return embed.timestep_embedder(embed.time_proj(timestep).to(dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None, guidance: torch.Tensor | None = None, **unused: Any,
    ) -> list[torch.Tensor]:
        model = self.model
        batch, _, height, width = sample.shape
        p = model.config.patch_size
        hidden_states = model.patch_embed(sample)
        modulation, _ = self._time_embed(timestep, guidance, batch, hidden_states.dtype)
        text = model.caption_projection(encoder_hidden_states).view(batch, -1, hidden_states.shape[-1])
        text = model.caption_norm(text)
        return self.run_blocks(
            hidden_states, attention_mask=None, encoder_hidden_states=text, timestep=modulation, height=height // p,
            encoder_attention_mask=text_mask_bias(encoder_attention_mask, sample.dtype), width=width // p,
        )

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
        guidance: torch.Tensor | None = None, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, C, H, W); `sample` is the model's input (B, C, H, W), whose height and width
        the head unpatchifies to."""
        model = self.model
        _, embedded = self._time_embed(timestep, guidance, sample.shape[0], hidden_states.dtype)
        return self.arrange(model.proj_out(model.norm_out(hidden_states, embedded, model.scale_shift_table)), sample)

    def arrange(self, tokens: torch.Tensor, sample: torch.Tensor, **unused: Any) -> torch.Tensor:
        p = self.model.config.patch_size
        return unpatchify(tokens, p, grid=(sample.shape[2] // p, sample.shape[3] // p))
