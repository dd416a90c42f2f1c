"""PixArt's output head (`PixArtTransformer2DModel`): `adaln_single`'s embedded timestep modulates the final norm."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, unpatchify


class PixArtDecoder(ExitDecoder):
    """The model embeds the timestep once with `adaln_single`, which returns the per-block modulation (B, 6D) - the
    `timestep` every block receives - and the embedded timestep (B, D) that the output head adds to
    `scale_shift_table` to modulate the final LayerNorm. `decode` repeats those operations, so the decode of the
    last block is the model's output bit for bit.

    ```py
    >>> import torch
    >>> from ee_diffusion.adapters import get_adapter
    >>> from ee_diffusion.testing import tiny_pixart
    >>> model = tiny_pixart(num_layers=3)
    >>> decoder = get_adapter(model).decoder
    >>> x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 16)
    >>> hidden = decoder.hidden_states_per_block(x, t, encoder_hidden_states=text)
    >>> out = model(x, encoder_hidden_states=text, timestep=t).sample
    >>> torch.equal(decoder.decode(hidden[-1], timestep=t), out)
    True

    ```
    """

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = self.model.adaln_single.emb
        return emb.timestep_embedder(emb.time_proj(timestep).to(dtype=dtype))

    def _modulation(
        self, timestep: torch.Tensor, batch_size: int, dtype: torch.dtype, added_cond_kwargs: dict | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 6D) block modulation and (B, D) embedded timestep, as the model's forward computes them."""
        model = self.model
        if added_cond_kwargs is None and model.use_additional_conditions:
            raise ValueError("this PixArt model uses additional conditions: pass `added_cond_kwargs`")
        return model.adaln_single(timestep, added_cond_kwargs, batch_size=batch_size, hidden_dtype=dtype)

    def hidden_states_per_block(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Every block's hidden state (B, L, D) from one pass, as the model's forward computes them."""
        model = self.model
        batch = sample.shape[0]
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            # (B, L_text) keep-mask -> (B, 1, L_text) additive bias, as the model's forward converts it.
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        hidden_states = model.pos_embed(sample)
        modulation, _ = self._modulation(timestep, batch, hidden_states.dtype, added_cond_kwargs)
        if model.caption_projection is not None:
            encoder_hidden_states = model.caption_projection(encoder_hidden_states)
            encoder_hidden_states = encoder_hidden_states.view(batch, -1, hidden_states.shape[-1])
        outputs = []
        for index in range(len(self.blocks)):
            hidden_states = self.run_block(
                index, hidden_states=hidden_states, attention_mask=None, encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask, timestep=modulation, cross_attention_kwargs=None,
                class_labels=None,
            )
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, added_cond_kwargs: dict | None = None, **unused: Any
    ) -> torch.Tensor:
        """(B, L, D) hidden state -> (B, C_out, H, W): the model's final modulation, projection, unpatchify."""
        model = self.model
        _, embedded = self._modulation(timestep, hidden_states.shape[0], hidden_states.dtype, added_cond_kwargs)
        # (1, 2, D) + (B, 1, D) -> shift, scale each (B, 1, D)
        shift, scale = (model.scale_shift_table[None] + embedded[:, None]).chunk(2, dim=1)
        hidden_states = model.norm_out(hidden_states) * (1 + scale) + shift
        hidden_states = model.proj_out(hidden_states)
        return unpatchify(hidden_states, model.config.patch_size, model.out_channels)
