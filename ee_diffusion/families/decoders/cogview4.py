"""CogView4's output head (`CogView4Transformer2DModel`): `norm_out(h, temb)`, `proj_out`, then the unpatchify to
(B, C, H, W)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..decoder import ExitDecoder


class CogView4Decoder(ExitDecoder):
    """`temb` is the SiLU of the timestep embedding plus the embedding of the SDXL-style size conditions
    (`original_size`, `target_size`, `crop_coords`, each (B, 2)); `decode` repeats the model's head on any block's
    image stream, so decoding the last block is the model's output bit for bit. It reads the grid to unpatchify to
    from `sample`, the model's input, as the forward does.

    ```py
    >>> import torch
    >>> from ee_diffusion.adapters import get_adapter
    >>> from ee_diffusion.testing import cogview4_inputs, tiny_cogview4
    >>> model = tiny_cogview4()
    >>> inputs = cogview4_inputs(model, batch=2)
    >>> decoder = get_adapter(model).decoder
    >>> conditioning = {k: v for k, v in inputs.items() if k not in ("hidden_states", "timestep")}
    >>> hidden = decoder.hidden_states_per_block(inputs["hidden_states"], inputs["timestep"], **conditioning)
    >>> out = decoder.decode(hidden[-1], inputs["timestep"], inputs["hidden_states"], **conditioning)
    >>> torch.equal(out, model(**inputs).sample)
    True

    ```
    """

    decode_reads_sample = True

    def embedding_dim(self) -> int:
        return self.model.config.time_embed_dim

    def _temb(
        self, timestep: torch.Tensor, original_size: torch.Tensor, target_size: torch.Tensor,
        crop_coords: torch.Tensor, dtype: torch.dtype,
    ) -> torch.Tensor:
        """(B, D_t), as the model's forward computes it (the SiLU included)."""
        return F.silu(self.model.time_condition_embed(timestep, original_size, target_size, crop_coords, dtype))

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        embed = self.model.time_condition_embed
        return embed.timestep_embedder(embed.time_proj(timestep).to(dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        original_size: torch.Tensor, target_size: torch.Tensor, crop_coords: torch.Tensor,
        attention_mask: torch.Tensor | None = None, image_rotary_emb: tuple | None = None, **unused: Any,
    ) -> list[torch.Tensor]:
        """Every block's image stream (B, L, D) from one pass, as the model's forward computes them."""
        model = self.model
        rotary = model.rope(sample) if image_rotary_emb is None else image_rotary_emb
        hidden_states, text = model.patch_embed(sample, encoder_hidden_states)
        temb = self._temb(timestep, original_size, target_size, crop_coords, hidden_states.dtype)
        outputs = []
        for index in range(len(self.blocks)):
            hidden_states, text = self.run_block(
                index, hidden_states=hidden_states, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary,
                attention_mask=attention_mask,
            )
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor, original_size: torch.Tensor,
        target_size: torch.Tensor, crop_coords: torch.Tensor, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, C, H, W); `sample` is the model's input latent (B, C, H, W), whose height
        and width the head unpatchifies to."""
        model = self.model
        batch, _, height, width = sample.shape
        p = model.config.patch_size
        temb = self._temb(timestep, original_size, target_size, crop_coords, hidden_states.dtype)
        hidden_states = model.proj_out(model.norm_out(hidden_states, temb))
        hidden_states = hidden_states.reshape(batch, height // p, width // p, -1, p, p)
        return hidden_states.permute(0, 3, 1, 4, 2, 5).flatten(4, 5).flatten(2, 3)
