"""Lumina2's output head (`Lumina2Transformer2DModel`): `norm_out(h, temb)` (with its projection) on the padded joint
sequence, then each row's image tokens (after its own caption length) unpatchified."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, unpatchify


class Lumina2Decoder(ExitDecoder):
    """The model is called with 1 - t/1000; the main stack's stream is the padded joint sequence, whose row i holds
    its caption's first `encoder_attention_mask[i].sum()` tokens, then the image tokens. `decode` repeats the head
    on it, so decoding the last block is the model's output bit for bit.
    """

    decode_reads_sample = True

    def hidden_dim(self) -> int:
        return self.model.config.hidden_size

    def embedding_dim(self) -> int:
        return self.model.time_caption_embed.timestep_embedder.linear_2.out_features

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        embed = self.model.time_caption_embed  # the engine's 0-999 t -> the model's own 1 - t/1000
        return embed.timestep_embedder(embed.time_proj(1 - timestep / 1000).to(dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor, **unused: Any,
    ) -> list[torch.Tensor]:
        model = self.model
        temb, text = model.time_caption_embed(sample, timestep, encoder_hidden_states)
        hidden_states, text_rotary, image_rotary, rotary, text_lengths, lengths = model.rope_embedder(
            sample, encoder_attention_mask)
        hidden_states = model.x_embedder(hidden_states)
        for layer in model.context_refiner:
            text = layer(text, encoder_attention_mask, text_rotary)
        for layer in model.noise_refiner:
            hidden_states = layer(hidden_states, None, image_rotary, temb)
        # The padded joint sequence (B, L_max, D) and its mask, as the model's forward builds them.
        mask = hidden_states.new_zeros(sample.shape[0], max(lengths), dtype=torch.bool)
        joint = hidden_states.new_zeros(sample.shape[0], max(lengths), hidden_states.shape[-1])
        for i, (text_length, length) in enumerate(zip(text_lengths, lengths)):
            mask[i, :length] = True
            joint[i, :text_length] = text[i, :text_length]
            joint[i, text_length:length] = hidden_states[i]
        mask = mask if len(set(lengths)) > 1 else None
        return self.run_blocks(joint, attention_mask=mask, image_rotary_emb=rotary, temb=temb)

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
        encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor, **unused: Any,
    ) -> torch.Tensor:
        """(B, L_max, D) joint sequence -> (B, C, H, W)."""
        model = self.model
        temb, _ = model.time_caption_embed(sample, timestep, encoder_hidden_states)
        return self.arrange(model.norm_out(hidden_states, temb), sample, encoder_attention_mask)

    def arrange(self, tokens: torch.Tensor, sample: torch.Tensor, encoder_attention_mask: torch.Tensor,
                **unused: Any) -> torch.Tensor:
        """Each row's image tokens, after its own caption length, unpatchified: (B, L_max, P) -> (B, C, H, W)."""
        p = self.model.config.patch_size
        grid = (sample.shape[2] // p, sample.shape[3] // p)
        image = grid[0] * grid[1]
        rows = [tokens[i, start : start + image] for i, start in enumerate(encoder_attention_mask.sum(dim=1).tolist())]
        return unpatchify(torch.stack(rows), p, grid=grid)
