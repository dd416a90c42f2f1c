"""HiDream-I1's output head (`HiDreamImageTransformer2DModel`): `final_layer(h[:, :image tokens], temb)`, then the
unpatchify to (B, C, H, W)."""

from __future__ import annotations

from typing import Any

import torch

from ..decoder import ExitDecoder, unpatchify


class HiDreamDecoder(ExitDecoder):
    """The model is called with 0-999 `timesteps` and a pooled CLIP embedding, summed into `temb`; each block reads
    its own projected Llama layer, which the forward appends to the text before the block and cuts off after it.
    A double-stream block's image stream is (B, L, D); a single-stream block's is the sequence [image; text; its
    Llama tokens] (B, L + L_text, D), whose first L tokens are the image's. `decode` repeats the head in eval mode
    (a model in training mode lays its output out as (B, C, L, p * p) instead), so decoding the last block is the
    model's output bit for bit. Latents are (B, C, H, W); non-square ones are padded to the model's `max_seq`
    tokens with a per-row mask, as the forward pads them.
    """

    decode_reads_sample = True
    time_embedder = "t_embedder"

    def _temb(self, timestep: torch.Tensor, pooled_embeds: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, D): the timestep embedding plus the pooled text's, as the model's forward computes it."""
        return self.model.t_embedder(timestep, dtype) + self.model.p_embedder(pooled_embeds)

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states_t5: torch.Tensor,
        encoder_hidden_states_llama3: torch.Tensor, pooled_embeds: torch.Tensor, **unused: Any,
    ) -> list[torch.Tensor]:
        model, batch = self.model, sample.shape[0]
        hidden_states, masks, _, img_ids = model.patchify(sample)
        hidden_states = model.x_embedder(hidden_states)
        temb = self._temb(timestep, pooled_embeds, sample.dtype)
        width = hidden_states.shape[-1]
        # Every block's Llama layer (layers, B, L_llama, D_llama), then T5, each through its own projection.
        text = [*(encoder_hidden_states_llama3[k] for k in model.config.llama_layers), encoder_hidden_states_t5]
        text = [project(t).view(batch, -1, width) for project, t in zip(model.caption_projection, text)]
        txt_ids = img_ids.new_zeros(batch, text[-1].shape[1] + text[-2].shape[1] + text[0].shape[1], 3)
        inputs = {"temb": temb, "image_rotary_emb": model.pe_embedder(torch.cat((img_ids, txt_ids), dim=1))}
        num_double = len(model.double_stream_blocks)
        shared = torch.cat([text[-1], text[-2]], dim=1)  # (B, L_text, D): T5, then the last block's Llama layer
        outputs = []
        for index in range(num_double):
            hidden_states, shared = self.run_block(
                index, hidden_states=hidden_states, hidden_states_masks=masks,
                encoder_hidden_states=torch.cat([shared, text[index]], dim=1), **inputs)
            shared = shared[:, : text[-1].shape[1] + text[-2].shape[1]]
            outputs.append(hidden_states)
        hidden_states = torch.cat([hidden_states, shared], dim=1)  # (B, L + L_text, D), the image first
        length = hidden_states.shape[1]
        if masks is not None:  # the text is never masked
            masks = torch.cat([masks, masks.new_ones(batch, shared.shape[1] + text[0].shape[1])], dim=1)
        for index in range(num_double, len(self.blocks)):
            out = self.run_block(index, hidden_states=torch.cat([hidden_states, text[index]], dim=1),
                                 hidden_states_masks=masks, encoder_hidden_states=None, **inputs)
            outputs.append(out)
            hidden_states = out[:, :length]
        return outputs

    def decode(self, hidden_states: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
               pooled_embeds: torch.Tensor, **unused: Any) -> torch.Tensor:
        """(B, L, D) image stream or (B, L + L_text, D) sequence -> (B, C, H, W)."""
        height, width = sample.shape[2:]
        # The image tokens: the grid's, or `max_seq` where the forward padded a non-square grid.
        tokens = self.model.max_seq if height != width else self._grid_tokens(sample)
        temb = self._temb(timestep, pooled_embeds, sample.dtype)
        return self.arrange(self.model.final_layer(hidden_states[:, :tokens], temb), sample)

    def arrange(self, tokens: torch.Tensor, sample: torch.Tensor, **unused: Any) -> torch.Tensor:
        """(B, L', P) per-token outputs whose first tokens are the image's -> (B, C, H, W)."""
        p = self.model.config.patch_size
        grid = (sample.shape[2] // p, sample.shape[3] // p)
        return unpatchify(tokens[:, : self._grid_tokens(sample)], p, grid=grid)

    def _grid_tokens(self, sample: torch.Tensor) -> int:
        p = self.model.config.patch_size
        return (sample.shape[2] // p) * (sample.shape[3] // p)
