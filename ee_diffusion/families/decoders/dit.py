"""DiT's output head (`DiTTransformer2DModel`): re-embed (t, y) with block 0's AdaLN embedder, modulate, project."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..decoder import ExitDecoder, unpatchify


class DiTDecoder(ExitDecoder):
    """The model's output head re-embeds (t, y) with block 0's AdaLN embedder, modulates the final LayerNorm and
    projects each token to a patch; `decode` repeats exactly those operations, so decoding the last block reproduces
    the model's output bit for bit and decoding block i gives the DeeDiff/ASE prediction "exited after block i".

    ```py
    >>> import torch
    >>> from ee_diffusion.adapters import get_adapter
    >>> from ee_diffusion.testing import tiny_dit
    >>> model = tiny_dit(num_layers=3)
    >>> decoder = get_adapter(model).decoder
    >>> x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 900]), torch.tensor([1, 2])
    >>> hidden = decoder.hidden_states_per_block(x, t, class_labels=y)
    >>> torch.equal(decoder.decode(hidden[-1], timestep=t, class_labels=y), model(x, t, class_labels=y).sample)
    True

    ```
    """

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = self.blocks[0].norm1.emb
        return emb.timestep_embedder(emb.time_proj(timestep).to(dtype=dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
    ) -> list[torch.Tensor]:
        """Every block's hidden state (B, L, D) from one pass, as the model's forward computes them."""
        hidden_states = self.model.pos_embed(sample)  # (B, C, H, W) -> (B, L, D) patch tokens
        outputs = []
        for index in range(len(self.blocks)):
            hidden_states = self.run_block(
                index, hidden_states=hidden_states, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, timestep=timestep, cross_attention_kwargs=None, class_labels=class_labels,
            )
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor, **unused
    ) -> torch.Tensor:
        """(B, L, D) hidden state -> (B, C_out, H, W), the same operations as the model's own output head."""
        model = self.model
        conditioning = self.blocks[0].norm1.emb(timestep, class_labels, hidden_dtype=hidden_states.dtype)
        shift, scale = model.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        hidden_states = model.norm_out(hidden_states) * (1 + scale[:, None]) + shift[:, None]
        hidden_states = model.proj_out_2(hidden_states)
        return unpatchify(hidden_states, model.patch_size, model.out_channels)
