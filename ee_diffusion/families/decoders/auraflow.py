"""AuraFlow's output head (`AuraFlowTransformer2DModel`): the image part of the stream, `norm_out(h, temb)`,
`proj_out`, the square unpatchify."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, unpatchify


class AuraFlowDecoder(ExitDecoder):
    """The model is called with a 0-1 `timestep` that its sinusoidal embedding scales by 1000; a single-stream
    block's stream is the joint sequence, whose image tokens are its last L = (H/p)(W/p), read from `sample`.
    """

    decode_reads_sample = True

    def _temb(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, D) the model's embedding of its own 0-1 `timestep`."""
        return self.model.time_step_proj(self.model.time_step_embed(timestep).to(dtype))

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self._temb(timestep / 1000, dtype)  # 0-999 -> the model's own 0-1

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, **unused: Any
    ) -> list[torch.Tensor]:
        model = self.model
        hidden_states = model.pos_embed(sample)
        text = model.context_embedder(encoder_hidden_states)
        registers = model.register_tokens.to(text.dtype).repeat(text.shape[0], 1, 1)
        temb = self._temb(timestep, next(model.parameters()).dtype)
        return self.run_blocks(hidden_states, torch.cat([registers, text], dim=1), temb=temb)

    def decode(self, hidden_states: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor, **unused: Any
               ) -> torch.Tensor:
        """(B, L, D) image stream, or (B, L_text + L, D) joint sequence -> (B, C, H, W)."""
        model = self.model
        image = hidden_states[:, -self._image_tokens(sample):]
        temb = self._temb(timestep, next(model.parameters()).dtype)
        return self.arrange(model.proj_out(model.norm_out(image, temb)), sample)

    def arrange(self, tokens: torch.Tensor, sample: torch.Tensor, **unused: Any) -> torch.Tensor:
        p = self.model.config.patch_size
        image = tokens[:, -self._image_tokens(sample):]
        return unpatchify(image, p, grid=(sample.shape[2] // p, sample.shape[3] // p))

    def _image_tokens(self, sample: torch.Tensor) -> int:
        p = self.model.config.patch_size
        return (sample.shape[2] // p) * (sample.shape[3] // p)
