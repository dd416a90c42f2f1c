"""HunyuanVideo's output head (`HunyuanVideoTransformer3DModel`): `norm_out(h, temb)`, `proj_out`, then the 3-D
unpatchify to (B, C, F, H, W)."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, unpatchify


class HunyuanVideoDecoder(ExitDecoder):
    """`decode` repeats the model's head on any block's image stream (B, L, D) -> (B, C, F, H, W), so decoding the
    last block is the model's output bit for bit; it reads the frames, height and width to unpatchify from `sample`,
    the model's input (as the forward does). The image-to-video models' token replacement is not decoded.
    """

    token_heads = True
    decode_reads_sample = True

    def _temb(self, timestep: torch.Tensor, pooled_projections: torch.Tensor,
              guidance: torch.Tensor | None) -> torch.Tensor:
        """(B, D): timestep, guidance and pooled-text embedding, as the forward makes it."""
        if self.model.config.image_condition_type == "token_replace":
            raise ValueError("decoding a HunyuanVideo image-to-video model (image_condition_type='token_replace') is "
                             "not supported: its blocks modulate the first frame's tokens with a second embedding")
        return self.model.time_text_embed(timestep, pooled_projections, guidance)[0]

    def block_inputs(self, index: int, inputs: dict[str, Any]) -> dict[str, Any]:
        # the dual-stream blocks name the rotary table `freqs_cis`, the single-stream ones `image_rotary_emb`
        inputs = dict(inputs)
        inputs["freqs_cis" if index < len(self.model.transformer_blocks) else "image_rotary_emb"] = inputs.pop("rotary")
        return inputs

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor, pooled_projections: torch.Tensor, guidance: torch.Tensor | None = None,
        **unused: Any,
    ) -> list[torch.Tensor]:
        model = self.model
        rotary = model.rope(sample)  # (L, d) cos and sin of the 3-D positions
        temb = self._temb(timestep, pooled_projections, guidance)
        hidden_states = model.x_embedder(sample)
        # the token refiner: the text stream (B, L_text, D) the blocks start from
        text = model.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)
        # Joint attention mask (B, 1, 1, L + L_text): every image token, then each row's unpadded text tokens.
        kept = hidden_states.shape[1] + encoder_attention_mask.sum(dim=1, dtype=torch.int)  # (B,)
        positions = torch.arange(hidden_states.shape[1] + text.shape[1], device=sample.device)
        mask = (positions[None, :] < kept[:, None])[:, None, None, :]
        return self.run_blocks(hidden_states, text, temb=temb, attention_mask=mask, rotary=rotary)

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, pooled_projections: torch.Tensor,
        sample: torch.Tensor, guidance: torch.Tensor | None = None, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, C, F, H, W); `sample` is the model's input (B, C, F, H, W), whose frames,
        height and width the head unpatchifies to."""
        model = self.model
        temb = self._temb(timestep, pooled_projections, guidance)
        return self.arrange(model.proj_out(model.norm_out(hidden_states, temb)), sample)

    def arrange(self, tokens: torch.Tensor, sample: torch.Tensor, **unused: Any) -> torch.Tensor:
        _, _, frames, height, width = sample.shape
        p, p_t = self.model.config.patch_size, self.model.config.patch_size_t
        return unpatchify(tokens, (p_t, p, p), grid=(frames // p_t, height // p, width // p), channels_last=False)
