"""Hunyuan-DiT's output head (`HunyuanDiT2DModel`): `norm_out(h, temb)`, `proj_out`, then the unpatchify to
(B, C, H, W)."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, unpatchify


class HunyuanDiTDecoder(ExitDecoder):
    """`temb` is the timestep embedding plus the embedding of the pooled T5 text, the image size conditions
    (`image_meta_size`, (B, 6)) and the `style` id; `decode` repeats the model's head on any block's image stream, so
    decoding the last block is the model's output bit for bit. It reads the grid to unpatchify to from `sample`, the
    model's input, as the forward does.
    """

    decode_reads_sample = True
    time_embedder = "time_extra_emb"

    def _temb(self, timestep: torch.Tensor, encoder_hidden_states_t5: torch.Tensor,
              image_meta_size: torch.Tensor | None, style: torch.Tensor | None) -> torch.Tensor:
        """(B, D), as the model's forward computes it."""
        return self.model.time_extra_emb(timestep, encoder_hidden_states_t5, image_meta_size, style,
                                         hidden_dtype=timestep.dtype)

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        text_embedding_mask: torch.Tensor, encoder_hidden_states_t5: torch.Tensor,
        text_embedding_mask_t5: torch.Tensor, image_meta_size: torch.Tensor | None = None,
        style: torch.Tensor | None = None, image_rotary_emb: tuple | None = None, **unused: Any,
    ) -> list[torch.Tensor]:
        model = self.model
        hidden_states = model.pos_embed(sample)
        temb = self._temb(timestep, encoder_hidden_states_t5, image_meta_size, style)
        # The T5 text (B, L_t5, D_t5) projected to the BERT text's width, the two joined, padding tokens replaced by
        # the model's learned padding.
        batch, length, width = encoder_hidden_states_t5.shape
        t5 = model.text_embedder(encoder_hidden_states_t5.view(-1, width)).view(batch, length, -1)
        text = torch.cat([encoder_hidden_states, t5], dim=1)
        keep = torch.cat([text_embedding_mask, text_embedding_mask_t5], dim=-1).unsqueeze(2).bool()
        text = torch.where(keep, text, model.text_embedding_padding)
        # The model's loop: the outputs of blocks 0..N/2-2 are kept, and each block past the middle takes the last one
        # kept as its skip (block i gets block N-1-i's).
        half, skips, outputs = model.config.num_layers // 2, [], []
        for index in range(len(self.blocks)):
            skip = {"skip": skips.pop()} if index > half else {}
            hidden_states = self.run_block(index, hidden_states=hidden_states, temb=temb, encoder_hidden_states=text,
                                           image_rotary_emb=image_rotary_emb, **skip)
            if index < half - 1:
                skips.append(hidden_states)
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
        encoder_hidden_states_t5: torch.Tensor, image_meta_size: torch.Tensor | None = None,
        style: torch.Tensor | None = None, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, C_out, H, W); `sample` is the model's input latent (B, C, H, W), whose
        height and width the head unpatchifies to."""
        model = self.model
        temb = self._temb(timestep, encoder_hidden_states_t5, image_meta_size, style)
        return self.arrange(model.proj_out(model.norm_out(hidden_states, temb.to(torch.float32))), sample)

    def arrange(self, tokens: torch.Tensor, sample: torch.Tensor, **unused: Any) -> torch.Tensor:
        p = self.model.config.patch_size
        return unpatchify(tokens, p, grid=(sample.shape[2] // p, sample.shape[3] // p))
