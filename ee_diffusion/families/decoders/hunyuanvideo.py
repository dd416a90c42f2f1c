"""HunyuanVideo's output head (`HunyuanVideoTransformer3DModel`): `norm_out(h, temb)`, `proj_out`, then the 3-D
unpatchify to (B, C, F, H, W)."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder


class HunyuanVideoDecoder(ExitDecoder):
    """`decode` repeats the model's head on any block's image stream (B, L, D) -> (B, C, F, H, W), so decoding the
    last block is the model's output bit for bit; it reads the frames, height and width to unpatchify from `sample`,
    the model's input (as the forward does). The image-to-video models' token replacement is not decoded.

    ```py
    >>> import torch
    >>> from ee_diffusion.adapters import get_adapter
    >>> from ee_diffusion.testing import hunyuanvideo_inputs, tiny_hunyuanvideo
    >>> model = tiny_hunyuanvideo()
    >>> inputs = hunyuanvideo_inputs(model, batch=2)
    >>> decoder = get_adapter(model).decoder
    >>> conditioning = {k: v for k, v in inputs.items() if k not in ("hidden_states", "timestep")}
    >>> hidden = decoder.hidden_states_per_block(inputs["hidden_states"], inputs["timestep"], **conditioning)
    >>> out = decoder.decode(hidden[-1], inputs["timestep"], sample=inputs["hidden_states"], **conditioning)
    >>> torch.equal(out, model(**inputs).sample)
    True

    ```
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

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        embed = self.model.time_text_embed
        return embed.timestep_embedder(embed.time_proj(timestep).to(dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor, pooled_projections: torch.Tensor, guidance: torch.Tensor | None = None,
        **unused: Any,
    ) -> list[torch.Tensor]:
        """Every block's image stream (B, L, D) from one pass over both stacks, as the model's forward computes them."""
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
        num_double = len(model.transformer_blocks)
        outputs = []
        for index in range(len(self.blocks)):
            # the dual-stream blocks name the rotary table `freqs_cis`, the single-stream ones `image_rotary_emb`
            rope = {"freqs_cis" if index < num_double else "image_rotary_emb": rotary}
            hidden_states, text = self.run_block(
                index, hidden_states=hidden_states, encoder_hidden_states=text, temb=temb, attention_mask=mask, **rope
            )
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, pooled_projections: torch.Tensor,
        sample: torch.Tensor, guidance: torch.Tensor | None = None, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, C, F, H, W); `sample` is the model's input (B, C, F, H, W), whose frames,
        height and width the head unpatchifies to."""
        model = self.model
        batch, _, frames, height, width = sample.shape
        p, p_t = model.config.patch_size, model.config.patch_size_t
        temb = self._temb(timestep, pooled_projections, guidance)
        hidden_states = model.proj_out(model.norm_out(hidden_states, temb))
        hidden_states = hidden_states.reshape(batch, frames // p_t, height // p, width // p, -1, p_t, p, p)
        hidden_states = hidden_states.permute(0, 4, 1, 5, 2, 6, 3, 7)
        return hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)
