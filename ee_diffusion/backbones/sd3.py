"""Adapter for diffusers' `SD3Transformer2DModel` (Stable Diffusion 3 / 3.5 MMDiT)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import SD3Transformer2DModel

from .base import BackboneAdapter
from .dit import unpatchify


class SD3Adapter(BackboneAdapter):
    """Blocks are `transformer_blocks` (`JointTransformerBlock`, two streams).

    Each block takes the image tokens `hidden_states` (B, L, D) and the text tokens `encoder_hidden_states`
    (B, L_text, D) and returns `(encoder_hidden_states, hidden_states)`. The engine compacts and parks the
    image stream and carries the text stream along: when rows exit, their text tokens are dropped from the
    batch with them (they only feed later blocks), and `temb` (B, D), the combined timestep and pooled-text
    embedding, is sliced to the active rows. The last block is `context_pre_only` and returns no text
    stream. The output head is `norm_out(h, temb)` (AdaLayerNormContinuous), `proj_out`, unpatchify;
    `decode` repeats it, so decoding the last block is the model's output bit for bit.

    Not supported while exits are on (raise `ValueError`): `block_controlnet_hidden_states`,
    `skip_layers`, and IP-adapter embeddings in `joint_attention_kwargs`.

    ```py
    >>> import torch
    >>> from ee_diffusion.backbones import SD3Adapter
    >>> from ee_diffusion.testing import tiny_sd3
    >>> model = tiny_sd3(num_layers=3)
    >>> adapter = SD3Adapter(model)
    >>> x, t = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0])
    >>> text, pooled = torch.randn(2, 5, 16), torch.randn(2, 8)
    >>> hidden = adapter.hidden_states_per_block(x, t, encoder_hidden_states=text, pooled_projections=pooled)
    >>> out = model(x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t).sample
    >>> torch.equal(adapter.decode(hidden[-1], timestep=t, pooled_projections=pooled), out)
    True

    ```
    """

    model_classes = (SD3Transformer2DModel,)
    batch_inputs = ("temb",)
    #: JointTransformerBlock: the joint attention (returns the image and the text stream), the second image
    #: attention of SD3.5 (`use_dual_attention`), the image feed-forward, the text feed-forward (None on the
    #: last, `context_pre_only` block).
    forecast_submodules = ("attn", "attn2", "ff", "ff_context")

    def is_cfg_pair_batch(self, inputs: dict, timesteps: torch.Tensor) -> bool:
        return self.latent_cfg_pair(inputs, timesteps)

    def check_call(self, inputs: dict[str, Any]) -> None:
        for name in ("block_controlnet_hidden_states", "skip_layers"):
            if inputs.get(name) is not None:
                raise ValueError(
                    f"early exit on SD3Transformer2DModel does not support `{name}`; got "
                    f"{type(inputs[name]).__name__}. "
                    f"Call the model without it, or run with EarlyExitConfig() (no exits)"
                )
        kwargs = inputs.get("joint_attention_kwargs") or {}
        if "ip_adapter_image_embeds" in kwargs:
            raise ValueError("early exit on SD3Transformer2DModel does not support IP-adapter image embeddings")

    def split_block_output(self, output: tuple) -> tuple[torch.Tensor, Any]:
        encoder_hidden_states, hidden_states = output
        return hidden_states, encoder_hidden_states

    def join_block_output(self, hidden_states: torch.Tensor, carried: Any) -> tuple:
        return carried, hidden_states

    def passthrough(self, hidden_states: torch.Tensor, inputs: dict[str, Any]) -> tuple:
        return inputs.get("encoder_hidden_states"), hidden_states

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = self.model.time_text_embed
        return emb.timestep_embedder(emb.time_proj(timestep).to(dtype=dtype))

    def hidden_states_per_block(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Every block's image-token hidden state (B, L, D) from one pass, as the model's forward computes them."""
        model = self.model
        hidden_states = model.pos_embed(sample).contiguous()
        temb = model.time_text_embed(timestep, pooled_projections)
        encoder_hidden_states = model.context_embedder(encoder_hidden_states)
        outputs = []
        for block in self.blocks:
            encoder_hidden_states, hidden_states = self.run_block(
                block,
                hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb
            )
            outputs.append(hidden_states)
        return outputs

    def decode(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, pooled_projections: torch.Tensor, **unused: Any
    ) -> torch.Tensor:
        """(B, L, D) image tokens -> (B, C_out, H, W), the same operations as the model's own output head."""
        model = self.model
        temb = model.time_text_embed(timestep, pooled_projections)  # (B, D)
        hidden_states = model.proj_out(model.norm_out(hidden_states, temb))
        return unpatchify(hidden_states, model.config.patch_size, model.out_channels)
