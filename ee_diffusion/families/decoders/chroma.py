"""Chroma's output head (`ChromaTransformer2DModel`): the image part of the joint sequence, `norm_out` modulated by
the table's last two rows, `proj_out`, on packed tokens."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder


class ChromaDecoder(ExitDecoder):
    """The model is called with a 0-1 `timestep` that its forward scales by 1000; its approximator turns it into a
    per-row modulation table (B, 3 * N_single + 12 * N_double + 2, D) that the forward slices per block. The declared
    blocks are the single-stream ones, whose stream is the joint sequence [text; image] (B, L_text + L, D); `decode`
    slices its image tokens and repeats the head, so decoding the last block is the model's output bit for bit.

    ```py
    >>> import torch
    >>> from ee_diffusion.adapters import get_adapter
    >>> from ee_diffusion.testing import chroma_inputs, tiny_chroma
    >>> model = tiny_chroma()
    >>> inputs = chroma_inputs(model, batch=2)
    >>> decoder = get_adapter(model).decoder
    >>> hidden = decoder.hidden_states_per_block(inputs.pop("hidden_states"), inputs.pop("timestep"), **inputs)
    >>> len(hidden), tuple(hidden[-1].shape)  # 3 single blocks; 5 text + 16 image tokens
    (3, (2, 21, 16))

    ```
    """

    token_heads = True
    channel_dim = -1  # predictions are packed tokens (B, L, C)

    def embedding_dim(self) -> int:
        return self.model.time_text_embed.time_proj.num_channels

    def _modulation(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, M, D): the per-row modulation table, as the forward computes it from the 0-1 timestep."""
        model = self.model
        return model.distilled_guidance_layer(model.time_text_embed(timestep.to(dtype) * 1000))

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Chroma has no (B, D) timestep embedding (its approximator makes a table of modulations): heads read the
        # sinusoidal projection the table starts from. `timestep` is the engine's 0-999 one (the argument x 1000).
        return self.model.time_text_embed.time_proj(timestep).to(dtype)

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        txt_ids: torch.Tensor, img_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        joint_attention_kwargs: dict | None = None, **unused: Any,
    ) -> list[torch.Tensor]:
        """Every single-stream block's joint sequence (B, L_text + L, D) from one pass, as the forward computes them
        (the double-stream blocks, which are not exits, run first)."""
        model = self.model
        hidden_states = model.x_embedder(sample)
        table = self._modulation(timestep, hidden_states.dtype)
        text = model.context_embedder(encoder_hidden_states)
        rotary = model.pos_embed(torch.cat((txt_ids, img_ids), dim=0))  # (L_text + L, d) cos and sin
        num_single, num_double = len(model.single_transformer_blocks), len(model.transformer_blocks)
        for index, block in enumerate(model.transformer_blocks):
            # rows 6 of the image's modulation, then 6 of the text's, from the table's double-stream part
            image_rows, text_rows = 3 * num_single + 6 * index, 3 * num_single + 6 * (num_double + index)
            temb = torch.cat((table[:, image_rows : image_rows + 6], table[:, text_rows : text_rows + 6]), dim=1)
            text, hidden_states = block(
                hidden_states=hidden_states, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary,
                attention_mask=attention_mask, joint_attention_kwargs=joint_attention_kwargs,
            )
        hidden_states = torch.cat([text, hidden_states], dim=1)
        outputs = []
        for index in range(num_single):
            hidden_states = self.run_block(
                index, hidden_states=hidden_states, temb=table[:, 3 * index : 3 * index + 3], image_rotary_emb=rotary,
                attention_mask=attention_mask, joint_attention_kwargs=joint_attention_kwargs,
            )
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        **unused: Any,
    ) -> torch.Tensor:
        """(B, L_text + L, D) joint sequence -> (B, L, C) packed tokens, the same operations as the model's head."""
        model = self.model
        table = self._modulation(timestep, hidden_states.dtype)
        hidden_states = hidden_states[:, encoder_hidden_states.shape[1] :]
        return model.proj_out(model.norm_out(hidden_states, table[:, -2:]))
