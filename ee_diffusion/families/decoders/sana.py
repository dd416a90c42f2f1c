"""Sana's output head (`SanaTransformer2DModel`): `norm_out(h, embedded_timestep, scale_shift_table)`, `proj_out`,
then the unpatchify to (B, C, H, W)."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder


class SanaDecoder(ExitDecoder):
    """`time_embed` gives the blocks' modulation (B, 6D) and the embedded timestep (B, D) that modulates the final norm
    (with `guidance` on guidance-embedding checkpoints); `decode` repeats the model's head on any block's image
    stream, so decoding the last block is the model's output bit for bit. It reads the grid to unpatchify to from
    `sample`, the model's input, as the forward does.

    ```py
    >>> import torch
    >>> from ee_diffusion.adapters import get_adapter
    >>> from ee_diffusion.testing import sana_inputs, tiny_sana
    >>> model = tiny_sana()
    >>> inputs = sana_inputs(model, batch=2)
    >>> decoder = get_adapter(model).decoder
    >>> hidden = decoder.hidden_states_per_block(inputs["hidden_states"], inputs["timestep"],
    ...                                          inputs["encoder_hidden_states"], inputs["encoder_attention_mask"])
    >>> out = decoder.decode(hidden[-1], inputs["timestep"], inputs["hidden_states"])
    >>> torch.equal(out, model(**inputs).sample)
    True

    ```
    """

    decode_reads_sample = True

    def _time_embed(
        self, timestep: torch.Tensor, guidance: torch.Tensor | None, batch: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the blocks' modulation (B, 6D), the embedded timestep (B, D)), as the model's forward computes them."""
        if guidance is not None:
            return self.model.time_embed(timestep, guidance=guidance, hidden_dtype=dtype)
        return self.model.time_embed(timestep, batch_size=batch, hidden_dtype=dtype)

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        embed = self.model.time_embed
        if not self.model.config.guidance_embeds:
            embed = embed.emb  # AdaLayerNormSingle keeps its timestep embedder one level down
        return embed.timestep_embedder(embed.time_proj(timestep).to(dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None, guidance: torch.Tensor | None = None, **unused: Any,
    ) -> list[torch.Tensor]:
        """Every block's image stream (B, L, D) from one pass, as the model's forward computes them."""
        model = self.model
        batch, _, height, width = sample.shape
        p = model.config.patch_size
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            # (B, L_text) keep-mask -> (B, 1, L_text) additive bias, as the model's forward converts it.
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        hidden_states = model.patch_embed(sample)
        modulation, _ = self._time_embed(timestep, guidance, batch, hidden_states.dtype)
        text = model.caption_projection(encoder_hidden_states).view(batch, -1, hidden_states.shape[-1])
        text = model.caption_norm(text)
        outputs = []
        for index in range(len(self.blocks)):
            hidden_states = self.run_block(
                index, hidden_states=hidden_states, attention_mask=None, encoder_hidden_states=text,
                encoder_attention_mask=encoder_attention_mask, timestep=modulation, height=height // p,
                width=width // p,
            )
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
        guidance: torch.Tensor | None = None, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, C, H, W); `sample` is the model's input (B, C, H, W), whose height and width
        the head unpatchifies to."""
        model = self.model
        batch, _, height, width = sample.shape
        p = model.config.patch_size
        _, embedded = self._time_embed(timestep, guidance, batch, hidden_states.dtype)
        hidden_states = model.proj_out(model.norm_out(hidden_states, embedded, model.scale_shift_table))
        hidden_states = hidden_states.reshape(batch, height // p, width // p, p, p, -1)
        return hidden_states.permute(0, 5, 1, 3, 2, 4).reshape(batch, -1, height, width)
