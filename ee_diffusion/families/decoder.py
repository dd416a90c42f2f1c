"""`ExitDecoder`: the model's own output head applied to any block's image stream (exits, heads, training).

The engine never decodes: an exited row parks its image stream and the model's forward decodes every row with its
own head. What needs a decode of an intermediate block outside a model call - the layer-wise training losses, the
uncertainty heads' timestep conditioning, the tests' "an exit equals the decode of its block" - asks the family's
decoder. Nothing the training-free caches touch lives here.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .._compat import checkpoint_function

if TYPE_CHECKING:
    from torch import nn


class ExitDecoder:
    """One family's output head, replayed on an intermediate block; subclass it per family.

    Subclasses implement `timestep_embedding`, `hidden_states_per_block` and `decode`, and `decode(h_N, ...)` of the
    last block's image stream must equal the model's own output bit for bit.
    """

    #: Whether `decode` needs the model's input `sample=` (families whose head unpatchifies to the input's grid: video
    #: frames, non-square latents); `exit_outputs` then passes it.
    decode_reads_sample: ClassVar[bool] = False
    #: The dimension of the prediction that holds its channels: 1 for (B, C, ...); CogVideoX predicts (B, F, C, H, W),
    #: the packed-token models (B, L, C).
    channel_dim: ClassVar[int] = 1
    #: Whether a head maps each token to its patch's prediction (patch size 1, the final projection's width): models
    #: that predict packed tokens or video, whose config has no square `sample_size` grid.
    token_heads: ClassVar[bool] = False

    def __init__(self, model: nn.Module, blocks: list[nn.Module]) -> None:
        self.model = model
        self.blocks = blocks  # every block in execution order, as the family's adapter numbers them

    def prediction_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the noise prediction, without a learned-variance half; (C, 1, 1) for models
        whose config names no `sample_size` (packed tokens, video)."""
        config = self.model.config
        size = config.get("sample_size") or 1
        return (config.in_channels, size, size)

    def hidden_dim(self) -> int:
        """Width D of the block image streams (B, L, D): heads x head width, in every diffusers transformer's config."""
        config = self.model.config
        return config.num_attention_heads * config.attention_head_dim

    def embedding_dim(self) -> int:
        """Width of `timestep_embedding`'s output (what timestep-conditioned heads read)."""
        return self.hidden_dim()

    def head_config(self) -> dict[str, Any]:
        """The shape fields `UncertaintyHeads` needs for this model (see `UncertaintyHeads.from_model`)."""
        channels, height, _ = self.prediction_shape()
        fields = {"num_blocks": len(self.blocks), "hidden_dim": self.hidden_dim(), "feature_channels": None}
        if self.token_heads:
            # A head maps each token (B, L, D) to its patch's prediction, as the model's final projection does.
            return {**fields, "patch_size": 1, "out_channels": self.model.proj_out.out_features, "sample_size": 1}
        return {**fields, "patch_size": int(self.model.config.patch_size), "out_channels": channels,
                "sample_size": height}

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The model's own embedding of `timestep` (B,) -> (B, D), used by timestep-conditioned heads."""
        raise NotImplementedError

    def hidden_states_per_block(self, sample: torch.Tensor, timestep: torch.Tensor, **conditioning: Any) -> list[torch.Tensor]:
        """Run every block once, as the model's forward does; return the N image streams, each (B, L, D)."""
        raise NotImplementedError

    def decode(self, hidden_states: torch.Tensor, **model_inputs: Any) -> torch.Tensor:
        """Apply the model's output head to a block's image stream; returns what the model would return."""
        raise NotImplementedError

    def exit_outputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, **conditioning: Any
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One pass for training: (what head i reads, the eps prediction of exit i) for every exit i.

        `conditioning` holds the model's other keyword inputs (DiT: `class_labels`; PixArt:
        `encoder_hidden_states`, optionally `encoder_attention_mask`; SD3: `encoder_hidden_states`,
        `pooled_projections`). Predictions keep the eps channels only (the first C of a learned-variance output);
        the last one is the model's own output.
        """
        hidden = self.hidden_states_per_block(sample, timestep, **conditioning)
        channels = self.prediction_shape()[0]
        if self.decode_reads_sample:
            conditioning = {**conditioning, "sample": sample}
        return hidden, [self.decode(h, timestep=timestep, **conditioning).narrow(self.channel_dim, 0, channels)
                        for h in hidden]

    def run_block(self, index: int, **inputs: Any) -> Any:
        """Call block `index` with named inputs, as the model's forward would: through the model's gradient
        checkpointing function when `model.enable_gradient_checkpointing()` is on and gradients are recorded.

        Like diffusers' own forwards, the checkpoint function gets the inputs positionally (a reentrant checkpoint
        takes no keywords); a block hook maps them back to names. The block's output - the image stream every exit
        reads - is what the checkpoint keeps; its inner activations are recomputed in backward.
        """
        block, model = self.blocks[index], self.model
        if not (torch.is_grad_enabled() and model.is_gradient_checkpointing):
            return block(**inputs)
        params = inspect.signature(block.forward).parameters
        names = tuple(params)
        unknown = set(inputs) - set(names)
        if unknown:
            raise ValueError(f"{type(block).__name__} takes no inputs {sorted(unknown)}; it takes {list(names)}")
        last = max(names.index(name) for name in inputs)
        missing = [n for n in names[: last + 1] if n not in inputs and params[n].default is inspect.Parameter.empty]
        if missing:
            raise ValueError(f"{type(block).__name__} needs the inputs {missing}; got {sorted(inputs)}")
        args = [inputs.get(name, params[name].default) for name in names[: last + 1]]
        return checkpoint_function(model)(block, *args)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(B, L, p*p*C) tokens of a square grid -> (B, C, H, W) image, in the layout DiT uses."""
    side = int(tokens.shape[1] ** 0.5)
    tokens = tokens.reshape(-1, side, side, patch_size, patch_size, channels)
    tokens = torch.einsum("nhwpqc->nchpwq", tokens)
    return tokens.reshape(-1, channels, side * patch_size, side * patch_size)
