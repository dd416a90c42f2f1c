"""PixArt's output head (`PixArtTransformer2DModel`): `adaln_single`'s embedded timestep modulates the final norm."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, text_mask_bias, unpatchify


class PixArtDecoder(ExitDecoder):
    """The model embeds the timestep once with `adaln_single`, which returns the per-block modulation (B, 6D) - the
    `timestep` every block receives - and the embedded timestep (B, D) that the output head adds to
    `scale_shift_table` to modulate the final LayerNorm. `decode` repeats those operations, so the decode of the
    last block is the model's output bit for bit.
    """

    time_embedder = "adaln_single.emb"

    def _modulation(
        self, timestep: torch.Tensor, batch_size: int, dtype: torch.dtype, added_cond_kwargs: dict | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 6D) block modulation and (B, D) embedded timestep, as the model's forward computes them."""
        model = self.model
        if added_cond_kwargs is None and model.use_additional_conditions:
            raise ValueError("this PixArt model uses additional conditions: pass `added_cond_kwargs`")
        return model.adaln_single(timestep, added_cond_kwargs, batch_size=batch_size, hidden_dtype=dtype)

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict | None = None, encoder_attention_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        model = self.model
        batch = sample.shape[0]
        hidden_states = model.pos_embed(sample)
        modulation, _ = self._modulation(timestep, batch, hidden_states.dtype, added_cond_kwargs)
        if model.caption_projection is not None:
            encoder_hidden_states = model.caption_projection(encoder_hidden_states)
            encoder_hidden_states = encoder_hidden_states.view(batch, -1, hidden_states.shape[-1])
        return self.run_blocks(
            hidden_states, attention_mask=None, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=text_mask_bias(encoder_attention_mask, sample.dtype), timestep=modulation,
            cross_attention_kwargs=None, class_labels=None,
        )

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, added_cond_kwargs: dict | None = None, **unused: Any
    ) -> torch.Tensor:
        """(B, L, D) hidden state -> (B, C_out, H, W): the model's final modulation, projection, unpatchify."""
        model = self.model
        _, embedded = self._modulation(timestep, hidden_states.shape[0], hidden_states.dtype, added_cond_kwargs)
        # (1, 2, D) + (B, 1, D) -> shift, scale each (B, 1, D)
        shift, scale = (model.scale_shift_table[None] + embedded[:, None]).chunk(2, dim=1)
        hidden_states = model.norm_out(hidden_states) * (1 + scale) + shift
        return self.arrange(model.proj_out(hidden_states))

    def arrange(self, tokens: torch.Tensor, **unused: Any) -> torch.Tensor:
        return unpatchify(tokens, self.model.config.patch_size)
