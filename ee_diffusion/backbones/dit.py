"""Adapter for diffusers' `DiTTransformer2DModel` (class-conditional DiT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel

from .base import BackboneAdapter


class DiTAdapter(BackboneAdapter):
    """Blocks are `transformer_blocks` (`BasicTransformerBlock`, ada_norm_zero).

    The model's output head re-embeds (t, y) with block 0's AdaLN embedder, modulates the final LayerNorm and
    projects each token to a patch. `decode` repeats exactly those operations, so decoding the last block's
    hidden state reproduces the model's output bit for bit and decoding block i gives the DeeDiff/ASE
    prediction "exited after block i".
    """

    model_classes = (DiTTransformer2DModel,)
    batch_inputs = ("timestep", "class_labels", "attention_mask", "encoder_hidden_states", "encoder_attention_mask")
    #: BasicTransformerBlock: self-attention, cross-attention (None on class-conditional DiT), feed-forward.
    forecast_submodules = ("attn1", "attn2", "ff")

    def null_class_id(self) -> int | None:
        """`num_embeds_ada_norm`: the label id the model reserves for "no class" (classifier-free guidance)."""
        classes = self.model.config.num_embeds_ada_norm
        return None if classes is None else int(classes)

    def is_cfg_pair_batch(self, inputs: dict, timesteps: torch.Tensor) -> bool:
        # DiTPipeline and EarlyExitDiTPipeline build guidance batches as cat([x, x]) with labels
        # cat([y, null]) and equal timesteps; recognise exactly that layout (one host sync per call).
        labels = inputs.get("class_labels")
        hidden = inputs["hidden_states"]
        batch = hidden.shape[0]
        if labels is None or batch % 2 or labels.ndim != 1 or labels.shape[0] != batch:
            return False
        half = batch // 2
        same = (
            (labels[half:] == self.null_class_id()).all()
            & (timesteps[:half] == timesteps[half:]).all()
            & (hidden[:half] == hidden[half:]).all()
        )
        return bool(same)

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = self.blocks[0].norm1.emb
        return emb.timestep_embedder(emb.time_proj(timestep).to(dtype=dtype))

    def embed(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latents -> (B, L, D) patch tokens with position embedding."""
        return self.model.pos_embed(sample)

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
    ) -> list[torch.Tensor]:
        """Run every block once, as the model's own forward does; return the N hidden states, each (B, L, D).

        `decode(hidden_states_per_block(x, t, y)[-1], t, y)` is the model's output `model(x, t, y).sample`.
        Training uses this to get every block's exit prediction from a single pass.
        """
        hidden_states = self.embed(sample)
        outputs = []
        for block in self.blocks:
            hidden_states = self.run_block(
                block,
                hidden_states=hidden_states,
                attention_mask=None,
                encoder_hidden_states=None,
                encoder_attention_mask=None,
                timestep=timestep,
                cross_attention_kwargs=None,
                class_labels=class_labels,
            )
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor, **unused
    ) -> torch.Tensor:
        """(B, L, D) hidden state -> (B, C_out, H, W), the same operations as the model's own output head."""
        model = self.model
        conditioning = self.blocks[0].norm1.emb(timestep, class_labels, hidden_dtype=hidden_states.dtype)
        shift, scale = model.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        hidden_states = model.norm_out(hidden_states) * (1 + scale[:, None]) + shift[:, None]
        hidden_states = model.proj_out_2(hidden_states)
        return unpatchify(hidden_states, model.patch_size, model.out_channels)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(B, L, p*p*C) tokens of a square grid -> (B, C, H, W) image, in the layout DiT uses."""
    side = int(tokens.shape[1] ** 0.5)
    tokens = tokens.reshape(-1, side, side, patch_size, patch_size, channels)
    tokens = torch.einsum("nhwpqc->nchpwq", tokens)
    return tokens.reshape(-1, channels, side * patch_size, side * patch_size)
