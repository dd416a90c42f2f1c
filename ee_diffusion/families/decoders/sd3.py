"""SD3's output head (`SD3Transformer2DModel`): `norm_out(h, temb)`, `proj_out`, unpatchify."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, unpatchify


class SD3Decoder(ExitDecoder):
    """`temb` (B, D) is the combined timestep and pooled-text embedding; `decode` repeats the model's head, so
    decoding the last block is the model's output bit for bit.

    ```py
    >>> import torch
    >>> from ee_diffusion.adapters import get_adapter
    >>> from ee_diffusion.testing import tiny_sd3
    >>> model = tiny_sd3(num_layers=3)
    >>> decoder = get_adapter(model).decoder
    >>> x, t = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0])
    >>> text, pooled = torch.randn(2, 5, 16), torch.randn(2, 8)
    >>> hidden = decoder.hidden_states_per_block(x, t, encoder_hidden_states=text, pooled_projections=pooled)
    >>> out = model(x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t).sample
    >>> torch.equal(decoder.decode(hidden[-1], timestep=t, pooled_projections=pooled), out)
    True

    ```
    """

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = self.model.time_text_embed
        return emb.timestep_embedder(emb.time_proj(timestep).to(dtype=dtype))

    def hidden_states_per_block(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Every block's image-token hidden state (B, L, D) from one pass, as the model's forward computes them."""
        model = self.model
        hidden_states = model.pos_embed(sample).contiguous()
        temb = model.time_text_embed(timestep, pooled_projections)
        encoder_hidden_states = model.context_embedder(encoder_hidden_states)
        outputs = []
        for index in range(len(self.blocks)):
            encoder_hidden_states, hidden_states = self.run_block(
                index, hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb
            )
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, pooled_projections: torch.Tensor, **unused: Any
    ) -> torch.Tensor:
        """(B, L, D) image tokens -> (B, C_out, H, W), the same operations as the model's own output head."""
        model = self.model
        temb = model.time_text_embed(timestep, pooled_projections)  # (B, D)
        hidden_states = model.proj_out(model.norm_out(hidden_states, temb))
        return unpatchify(hidden_states, model.config.patch_size, model.out_channels)
