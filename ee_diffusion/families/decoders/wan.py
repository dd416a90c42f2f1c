"""Wan's output head (`WanTransformer3DModel`): `scale_shift_table` + temb modulate `norm_out`, `proj_out`, then the
3-D unpatchify."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder


class WanDecoder(ExitDecoder):
    """`decode` repeats the model's head on any block's image stream (B, L, D) -> (B, C, F, H, W), so decoding the
    last block is the model's output bit for bit; it needs the sample's (frames, height, width) to unpatchify, which
    it reads from `sample`, the model's input.

    ```py
    >>> import torch
    >>> from ee_diffusion.adapters import get_adapter
    >>> from ee_diffusion.testing import tiny_wan, wan_inputs
    >>> model = tiny_wan()
    >>> inputs = wan_inputs(model, batch=2)
    >>> decoder = get_adapter(model).decoder
    >>> hidden = decoder.hidden_states_per_block(inputs["hidden_states"], inputs["timestep"],
    ...                                          inputs["encoder_hidden_states"])
    >>> out = decoder.decode(hidden[-1], inputs["timestep"], inputs["encoder_hidden_states"], inputs["hidden_states"])
    >>> torch.equal(out, model(**inputs).sample)
    True

    ```
    """

    token_heads = True
    decode_reads_sample = True

    def _embed(self, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(temb (B, D), the blocks' modulation (B, 6, D), the embedded text (B, L_text, D)), as the forward makes them."""
        temb, projection, text, _ = self.model.condition_embedder(timestep, encoder_hidden_states, None)
        return temb, projection.unflatten(1, (6, -1)), text

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        embedder = self.model.condition_embedder
        return embedder.time_embedder(embedder.timesteps_proj(timestep).to(dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, **unused: Any
    ) -> list[torch.Tensor]:
        """Every block's image stream (B, L, D) from one pass, as the model's forward computes them."""
        model = self.model
        rotary = model.rope(sample)
        hidden_states = model.patch_embedding(sample).flatten(2).transpose(1, 2).contiguous()
        _, modulation, text = self._embed(timestep, encoder_hidden_states)
        outputs = []
        for index in range(len(self.blocks)):
            hidden_states = self.run_block(
                index, hidden_states=hidden_states, encoder_hidden_states=text, temb=modulation, rotary_emb=rotary
            )
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        sample: torch.Tensor, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, C, F, H, W); `sample` is the model's input (B, C, F, H, W), whose frames,
        height and width the head unpatchifies to (as the model reads them from its input)."""
        model = self.model
        _, _, frames, height, width = sample.shape
        p_t, p_h, p_w = model.config.patch_size
        temb, _, _ = self._embed(timestep, encoder_hidden_states)
        shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)  # each (B, 1, D)
        hidden_states = (model.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = model.proj_out(hidden_states)
        batch = hidden_states.shape[0]
        hidden_states = hidden_states.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
        return hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
