"""CogVideoX's output head (`CogVideoXTransformer3DModel`): `norm_final`, `norm_out(h, temb)`, `proj_out`, then the
unpatchify to (B, F, C, H, W)."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, unpatchify


class CogVideoXDecoder(ExitDecoder):
    """`decode` repeats the model's head on any block's image stream (B, L, D) -> (B, F, C, H, W), so decoding the
    last block is the model's output bit for bit; it reads the frames, height and width to unpatchify from `sample`,
    the model's input (as the forward does).
    """

    token_heads = True
    decode_reads_sample = True
    channel_dim = 2  # predictions are (B, F, C, H, W)

    def embedding_dim(self) -> int:
        return self.model.config.time_embed_dim

    def _temb(self, timestep: torch.Tensor, dtype: torch.dtype, timestep_cond: torch.Tensor | None = None,
              ofs: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D_t): the timestep embedding, plus the image-to-video models' `ofs` embedding, as the forward adds it."""
        model = self.model
        emb = model.time_embedding(model.time_proj(timestep).to(dtype), timestep_cond)
        if model.ofs_embedding is not None:
            emb = emb + model.ofs_embedding(model.ofs_proj(ofs).to(dtype))
        return emb

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        model = self.model
        return model.time_embedding(model.time_proj(timestep).to(dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None, ofs: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None, attention_kwargs: dict | None = None,
        **unused: Any,
    ) -> list[torch.Tensor]:
        model = self.model
        emb = self._temb(timestep, sample.dtype, timestep_cond, ofs)
        # The patch embedding returns the joint sequence [text; video] (B, L_text + L, D); the forward splits it.
        joint = model.embedding_dropout(model.patch_embed(encoder_hidden_states, sample))
        text_len = encoder_hidden_states.shape[1]
        text, hidden_states = joint[:, :text_len], joint[:, text_len:]
        return self.run_blocks(
            hidden_states, text, temb=emb, image_rotary_emb=image_rotary_emb, attention_kwargs=attention_kwargs
        )

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
        timestep_cond: torch.Tensor | None = None, ofs: torch.Tensor | None = None, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, F, C, H, W); `sample` is the model's input (B, F, C, H, W), whose frames,
        height and width the head unpatchifies to."""
        model = self.model
        emb = self._temb(timestep, sample.dtype, timestep_cond, ofs)
        return self.arrange(model.proj_out(model.norm_out(model.norm_final(hidden_states), temb=emb)), sample)

    def arrange(self, tokens: torch.Tensor, sample: torch.Tensor, **unused: Any) -> torch.Tensor:
        _, frames, _, height, width = sample.shape
        p, p_t = self.model.config.patch_size, self.model.config.patch_size_t or 1  # CogVideoX 1.0 patches no frames
        grid = ((frames + p_t - 1) // p_t, height // p, width // p)
        output = unpatchify(tokens, (p_t, p, p), grid=grid, channels_last=False)
        return output.transpose(1, 2)  # (B, C, F, H, W) -> (B, F, C, H, W), the model's layout
