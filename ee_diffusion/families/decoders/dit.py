"""DiT's output head (`DiTTransformer2DModel`): re-embed (t, y) with block 0's AdaLN embedder, modulate, project."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..decoder import ExitDecoder, unpatchify


class DiTDecoder(ExitDecoder):
    """The model's output head re-embeds (t, y) with block 0's AdaLN embedder, modulates the final LayerNorm and
    projects each token to a patch; `decode` repeats exactly those operations, so decoding the last block reproduces
    the model's output bit for bit and decoding block i gives the DeeDiff/ASE prediction "exited after block i".
    """

    time_embedder = "transformer_blocks.0.norm1.emb"  # each block embeds (t, y) with its own AdaLN embedder

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
    ) -> list[torch.Tensor]:
        hidden_states = self.model.pos_embed(sample)  # (B, C, H, W) -> (B, L, D) patch tokens
        return self.run_blocks(
            hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
            timestep=timestep, cross_attention_kwargs=None, class_labels=class_labels,
        )

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor, **unused
    ) -> torch.Tensor:
        """(B, L, D) hidden state -> (B, C_out, H, W), the same operations as the model's own output head."""
        model = self.model
        conditioning = self.blocks[0].norm1.emb(timestep, class_labels, hidden_dtype=hidden_states.dtype)
        shift, scale = model.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        hidden_states = model.norm_out(hidden_states) * (1 + scale[:, None]) + shift[:, None]
        return self.arrange(model.proj_out_2(hidden_states))

    def arrange(self, tokens: torch.Tensor, **unused: Any) -> torch.Tensor:
        return unpatchify(tokens, self.model.patch_size)
