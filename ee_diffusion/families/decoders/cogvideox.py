"""CogVideoX's output head (`CogVideoXTransformer3DModel`): `norm_final`, `norm_out(h, temb)`, `proj_out`, then the
unpatchify to (B, F, C, H, W)."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder


class CogVideoXDecoder(ExitDecoder):
    """`decode` repeats the model's head on any block's image stream (B, L, D) -> (B, F, C, H, W), so decoding the
    last block is the model's output bit for bit; it reads the frames, height and width to unpatchify from `sample`,
    the model's input (as the forward does).

    ```py
    >>> import torch
    >>> from ee_diffusion.adapters import get_adapter
    >>> from ee_diffusion.testing import cogvideox_inputs, tiny_cogvideox
    >>> model = tiny_cogvideox()
    >>> inputs = cogvideox_inputs(model, batch=2)
    >>> decoder = get_adapter(model).decoder
    >>> hidden = decoder.hidden_states_per_block(inputs["hidden_states"], inputs["timestep"],
    ...                                          inputs["encoder_hidden_states"])
    >>> out = decoder.decode(hidden[-1], inputs["timestep"], inputs["hidden_states"])
    >>> torch.equal(out, model(**inputs).sample)
    True

    ```
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
        """Every block's image stream (B, L, D) from one pass, as the model's forward computes them."""
        model = self.model
        emb = self._temb(timestep, sample.dtype, timestep_cond, ofs)
        # The patch embedding returns the joint sequence [text; video] (B, L_text + L, D); the forward splits it.
        joint = model.embedding_dropout(model.patch_embed(encoder_hidden_states, sample))
        text_len = encoder_hidden_states.shape[1]
        text, hidden_states = joint[:, :text_len], joint[:, text_len:]
        outputs = []
        for index in range(len(self.blocks)):
            hidden_states, text = self.run_block(
                index, hidden_states=hidden_states, encoder_hidden_states=text, temb=emb,
                image_rotary_emb=image_rotary_emb, attention_kwargs=attention_kwargs,
            )
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
        timestep_cond: torch.Tensor | None = None, ofs: torch.Tensor | None = None, **unused: Any,
    ) -> torch.Tensor:
        """(B, L, D) image stream -> (B, F, C, H, W); `sample` is the model's input (B, F, C, H, W), whose frames,
        height and width the head unpatchifies to."""
        model = self.model
        batch, frames, _, height, width = sample.shape
        emb = self._temb(timestep, sample.dtype, timestep_cond, ofs)
        hidden_states = model.proj_out(model.norm_out(model.norm_final(hidden_states), temb=emb))
        p, p_t = model.config.patch_size, model.config.patch_size_t
        if p_t is None:
            output = hidden_states.reshape(batch, frames, height // p, width // p, -1, p, p)
            return output.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
        output = hidden_states.reshape(batch, (frames + p_t - 1) // p_t, height // p, width // p, -1, p_t, p, p)
        return output.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)
