"""Chroma's output head (`ChromaTransformer2DModel`): the image part of the joint sequence, `norm_out` modulated by
the table's last two rows, `proj_out`, on packed tokens."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder


class ChromaDecoder(ExitDecoder):
    """The model is called with a 0-1 `timestep` that its forward scales by 1000; its approximator turns it into a
    per-row modulation table (B, 3 * N_single + 12 * N_double + 2, D) that the forward slices per block. A
    double-stream block's image stream is (B, L, D), a single-stream block's the joint sequence [text; image]
    (B, L_text + L, D); `decode` takes the last L tokens (L from `img_ids`) and repeats the head, so decoding the last
    block is the model's output bit for bit.
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
        model = self.model
        hidden_states = model.x_embedder(sample)
        return self.run_blocks(
            hidden_states, model.context_embedder(encoder_hidden_states),
            table=self._modulation(timestep, hidden_states.dtype),
            image_rotary_emb=model.pos_embed(torch.cat((txt_ids, img_ids), dim=0)),  # (L_text + L, d) cos and sin
            attention_mask=attention_mask, joint_attention_kwargs=joint_attention_kwargs,
        )

    def block_inputs(self, index: int, inputs: dict[str, Any]) -> dict[str, Any]:
        # The table holds the single blocks' rows first (3 each), then the double blocks' image rows (6 each), then
        # their text rows (6 each); a double block's modulation is its image rows then its text rows (B, 12, D).
        inputs = dict(inputs)
        table = inputs.pop("table")
        num_single, num_double = len(self.model.single_transformer_blocks), len(self.model.transformer_blocks)
        if index < num_double:
            image, text = 3 * num_single + 6 * index, 3 * num_single + 6 * (num_double + index)
            inputs["temb"] = torch.cat((table[:, image : image + 6], table[:, text : text + 6]), dim=1)
        else:
            single = index - num_double
            inputs["temb"] = table[:, 3 * single : 3 * single + 3]
        return inputs

    def decode(self, hidden_states: torch.Tensor, timestep: torch.Tensor, img_ids: torch.Tensor, **unused: Any
               ) -> torch.Tensor:
        """(B, L, D) image stream or (B, L_text + L, D) joint sequence -> (B, L, C) packed tokens, the same
        operations as the model's head."""
        model = self.model
        table = self._modulation(timestep, hidden_states.dtype)
        return model.proj_out(model.norm_out(self.arrange(hidden_states, img_ids), table[:, -2:]))

    def arrange(self, tokens: torch.Tensor, img_ids: torch.Tensor, **unused: Any) -> torch.Tensor:
        """The image tokens' (B, L, P) of per-token outputs on either stream: its last L = len(img_ids) tokens."""
        return tokens[:, -img_ids.shape[-2] :]
