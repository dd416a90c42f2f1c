"""`ExitDecoder`: the model's own output head applied to any block's image stream (exits, heads, training).

The engine never decodes: an exited row parks its image stream and the model's forward decodes every row with its
own head. What needs a decode of an intermediate block outside a model call - the layer-wise training losses, the
uncertainty heads' timestep conditioning, the tests' "an exit equals the decode of its block" - asks the family's
decoder. Nothing the training-free caches touch lives here.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .._compat import checkpoint_function

if TYPE_CHECKING:
    from torch import nn

    from .spec import BlockStack


class ExitDecoder:
    """One family's output head, replayed on an intermediate block; subclass it per family.

    Subclasses implement `hidden_states_per_block` (the model's preamble, then `run_blocks`) and `decode`, and
    `decode(h_N, ...)` of the last block's image stream must equal the model's own output bit for bit; they name their
    timestep embedder (`time_embedder`) or override `timestep_embedding`. Every family's decoder is called the same
    way, e.g. for the layer-wise training losses:

    ```py
    >>> from ee_diffusion.adapters import get_adapter
    >>> from ee_diffusion.testing import sana_inputs, tiny_sana
    >>> model = tiny_sana()
    >>> inputs = sana_inputs(model, batch=2)
    >>> sample, timestep = inputs.pop("hidden_states"), inputs.pop("timestep")
    >>> hidden, predictions = get_adapter(model).decoder.exit_outputs(sample, timestep, **inputs)
    >>> len(hidden), tuple(hidden[-1].shape)  # 3 blocks' image streams (B, L, D)
    (3, (2, 16, 16))
    >>> torch.equal(predictions[-1], model(sample, timestep=timestep, **inputs).sample)  # the last is the model's
    True

    ```
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

    #: Submodule path of the model's timestep embedder: a module holding `time_proj` (the sinusoidal projection) and
    #: `timestep_embedder` (the MLP after it), as diffusers' combined embedders do; `timestep_embedding` replays both.
    time_embedder: ClassVar[str] = "time_text_embed"

    def __init__(self, model: nn.Module, blocks: list[nn.Module], stacks: list[BlockStack]) -> None:
        self.model = model
        self.blocks = blocks  # every block in execution order, as the family's adapter numbers them
        self.stacks = stacks  # the declared stack of every block, by index: what it takes and returns

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
        """The model's own embedding of 0-999 `timestep` (B,) -> (B, D), used by timestep-conditioned heads."""
        embed = self.model.get_submodule(self.time_embedder)
        return embed.timestep_embedder(embed.time_proj(timestep).to(dtype))

    def hidden_states_per_block(
        self, sample: torch.Tensor, timestep: torch.Tensor, **conditioning: Any
    ) -> list[torch.Tensor]:
        """Run every block once, as the model's forward does; return the N image streams, each (B, L, D)."""
        raise NotImplementedError

    def decode(self, hidden_states: torch.Tensor, **model_inputs: Any) -> torch.Tensor:
        """Apply the model's output head to a block's image stream; returns what the model would return."""
        raise NotImplementedError

    def arrange(self, tokens: torch.Tensor, **model_inputs: Any) -> torch.Tensor:
        """(B, L, P) per-token outputs of a head - the model's final projection in `decode`, or an uncertainty head of
        the same layout - laid out as the model's prediction; the channels are P over the patch's size (a learned-
        variance model's eps-only certainty map has half its prediction's). Default: packed tokens stay as they are
        (Flux, Qwen-Image, Chroma, LTX); decoders that unpatchify override it, reading the grid from `sample` where
        `decode_reads_sample`."""
        return tokens

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

    def run_blocks(self, hidden_states: torch.Tensor, text: torch.Tensor | None = None, **inputs: Any
                   ) -> list[torch.Tensor]:
        """Run every block once, in order, as the model's forward does; return each block's image stream (B, L, D), or
        (B, L_text + L, D) in a `joint` stack.

        `text` is the text stream (B, L_text, D) that blocks of a stack with a `text_arg` take and return (in the
        declared `returns` order), and that a joint stack's sequence starts with; `inputs` are the other block inputs
        (see `block_inputs`).
        """
        outputs = []
        for index, stack in enumerate(self.stacks):
            if stack.joint and index and not self.stacks[index - 1].joint:
                hidden_states = torch.cat([text, hidden_states], dim=1)  # the model's [text; image] sequence
            block_inputs = {stack.image_arg: hidden_states, **self.block_inputs(index, inputs)}
            if stack.text_arg is None:
                hidden_states = self.run_block(index, **block_inputs)
            else:
                output = self.run_block(index, **block_inputs, **{stack.text_arg: text})
                hidden_states, text = output[stack.returns.index("image")], output[stack.returns.index("text")]
            outputs.append(hidden_states)
        return outputs

    def block_inputs(self, index: int, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs of block `index` besides its streams: `inputs` as given to `run_blocks` (HunyuanVideo renames
        its rotary table per stack)."""
        return inputs

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


def unpatchify(
    tokens: torch.Tensor, patch_size: int | tuple[int, ...], channels: int | None = None,
    grid: tuple[int, ...] | None = None, channels_last: bool = True,
) -> torch.Tensor:
    """(B, L, prod(patch) * C) tokens of a `grid` of patches -> (B, C, *(grid x patch)), 2-D or 3-D.

    `channels` None: the token width over the patch's size. `grid` None: a square 2-D grid of side sqrt(L) (DiT's
    layout). `patch_size`: one size for every grid axis, or one
    per axis (Wan's (1, 2, 2)). `channels_last`: each token holds its patch as (*patch, C) (DiT, PixArt, SD3, Sana,
    Wan); False: as (C, *patch) (CogView4, HunyuanVideo, CogVideoX).
    """
    if grid is None:
        side = int(tokens.shape[1] ** 0.5)
        grid = (side, side)
    patch = (patch_size,) * len(grid) if isinstance(patch_size, int) else tuple(patch_size)
    n = len(grid)
    channels = tokens.shape[-1] // math.prod(patch) if channels is None else channels
    shape = (*grid, *patch, channels) if channels_last else (*grid, channels, *patch)
    # (B, *grid, *patch, C) -> (B, C, grid_0, patch_0, grid_1, patch_1, ...): each axis's patches back in place
    channel, first_patch = (2 * n + 1, n + 1) if channels_last else (n + 1, n + 2)
    order = [0, channel] + [axis for i in range(n) for axis in (1 + i, first_patch + i)]
    image = tokens.reshape(tokens.shape[0], *shape).permute(order)
    return image.reshape(tokens.shape[0], channels, *(g * p for g, p in zip(grid, patch)))


def text_mask_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A (B, L_text) keep-mask -> (B, 1, L_text) additive bias, as PixArt's, Sana's and LTX's forwards convert it;
    None or an already converted mask passes through."""
    if mask is None or mask.ndim != 2:
        return mask
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)
