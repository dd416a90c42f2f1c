"""The contract between the early-exit engine and one family of diffusers models."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from .._compat import checkpoint_function


class BackboneAdapter:
    """Knows where a model's blocks are and how to decode any block's hidden state.

    One adapter serves one family of diffusers models (see `model_classes`). The engine asks it for the
    block list, which block inputs carry a batch dimension (so they can be sliced to the rows that are still
    running) and how to turn a block's hidden state into a prediction with the model's own output head.
    Training uses the same `decode`, so inference and the layer-wise losses share one code path.
    """

    #: diffusers model classes this adapter accepts (subclasses too: checked with `isinstance`).
    model_classes: ClassVar[tuple[type, ...]] = ()
    #: True for models whose blocks run one after another on (B, L, D) tokens, where an exit decodes a block's
    #: hidden state with the model's own head (the sequential engine); False for U-Nets (depth truncation).
    sequential: ClassVar[bool] = True
    #: names of block-forward parameters whose first dimension is the batch.
    batch_inputs: ClassVar[tuple[str, ...]] = ()
    #: name of the block-forward parameter that carries the timestep.
    timestep_input: ClassVar[str] = "timestep"
    #: attribute names of a block's expensive sub-modules (attention, feed-forward) whose outputs a per-row
    #: forecast (`BlockForecast`) may stand in for; () where the family has none (U-Nets).
    forecast_submodules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        # The parameter names of a block's forward, used to map positional arguments to names when a caller
        # (for example gradient checkpointing) passes them positionally.
        signature = inspect.signature(self.blocks[0].forward)
        self._block_params = tuple(signature.parameters)
        self._block_defaults = tuple(p.default for p in signature.parameters.values())

    @property
    def blocks(self) -> nn.ModuleList:
        """The blocks the engine hooks, in order (diffusers' transformers: `transformer_blocks`)."""
        return self.model.transformer_blocks

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def forecast_modules(self, block: nn.Module) -> list[tuple[str, nn.Module]]:
        """(name, module) of `block`'s expensive sub-modules, in `forecast_submodules` order, leaving out the
        ones this block lacks (e.g. `attn2 = None`). Their outputs are what `BlockForecast` forecasts per row;
        everything else in the block (norms, modulation, gates, residual additions) always runs."""
        found = ((name, getattr(block, name, None)) for name in self.forecast_submodules)
        return [(name, module) for name, module in found if isinstance(module, nn.Module)]

    def prediction_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the noise prediction (without a learned-variance half)."""
        config = self.model.config
        return (config.in_channels, config.sample_size, config.sample_size)

    def hidden_dim(self) -> int:
        """Width D of the block hidden states (B, L, D)."""
        return self.model.inner_dim

    def embedding_dim(self) -> int:
        """Width of `timestep_embedding`'s output (what timestep-conditioned heads read)."""
        return self.hidden_dim()

    def null_class_id(self) -> int | None:
        """The class id the model reserves for "no class" (classifier-free guidance), or None if it has none."""
        return None

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The model's own embedding of `timestep` (B,) -> (B, D), used by timestep-conditioned heads."""
        raise NotImplementedError

    def decode(self, hidden_states: torch.Tensor, **model_inputs: Any) -> torch.Tensor:
        """Apply the model's output head to a block's hidden state; returns what the model would return."""
        raise NotImplementedError

    def exit_outputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, **conditioning: Any
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One pass for training: (what head i reads, the eps prediction of exit i) for every exit i.

        `conditioning` holds the model's other keyword inputs (DiT: `class_labels`; PixArt:
        `encoder_hidden_states`, optionally `encoder_attention_mask`; SD3: `encoder_hidden_states`,
        `pooled_projections`). Predictions keep the eps channels only (the first C of a learned-variance
        output); the last one is the model's own output.
        """
        hidden = self.hidden_states_per_block(sample, timestep, **conditioning)
        channels = self.prediction_shape()[0]
        return hidden, [self.decode(h, timestep=timestep, **conditioning)[:, :channels] for h in hidden]

    def batch_and_timesteps(self, inputs: dict[str, Any]) -> tuple[int, torch.Tensor]:
        """From the model's call arguments: the batch size B and a (B,) float tensor of per-row timesteps."""
        hidden = inputs["hidden_states"]
        batch = hidden.shape[0]
        timestep = inputs.get(self.timestep_input)
        if timestep is None:
            raise ValueError("early exit needs the model's `timestep` argument; it was not given")
        timestep = torch.as_tensor(timestep, device=hidden.device)
        if timestep.ndim == 0 or timestep.shape == (1,):
            # One timestep for the whole batch; the stock models broadcast a (1,) timestep too.
            timestep = timestep.reshape(1).expand(batch)
        if timestep.shape != (batch,):
            raise ValueError(
                f"timestep must be a scalar or have shape (1,) or ({batch},), got {tuple(timestep.shape)}"
            )
        return batch, timestep.float()

    def is_cfg_pair_batch(self, inputs: dict[str, Any], timesteps: torch.Tensor) -> bool:
        """Whether the batch is [conditional rows; their unconditional partners] (classifier-free guidance)."""
        return False

    def latent_cfg_pair(self, inputs: dict[str, Any], timesteps: torch.Tensor) -> bool:
        """Whether the batch is `cat([x, x])` with equal timesteps in both halves (one host sync).

        Text-to-image pipelines (PixArt, SD3, Stable Diffusion) build their guidance batch this way, with the
        negative and the positive prompt embeddings in the two halves; no null id marks the unconditional half.
        """
        hidden = inputs["hidden_states"]
        batch = hidden.shape[0]
        if batch % 2:
            return False
        half = batch // 2
        return bool((timesteps[:half] == timesteps[half:]).all() & (hidden[:half] == hidden[half:]).all())

    def check_call(self, inputs: dict[str, Any]) -> None:
        """Raise `ValueError` for model-call arguments that early exit cannot honour (exits on only)."""

    def split_block_output(self, output: Any) -> tuple[torch.Tensor, Any]:
        """A block's return value -> (hidden state the engine compacts and parks, carried rest or None)."""
        return output, None

    def join_block_output(self, hidden_states: torch.Tensor, carried: Any) -> Any:
        """Inverse of `split_block_output`: what the block hook returns to the model's forward."""
        return hidden_states

    def passthrough(self, hidden_states: torch.Tensor, inputs: dict[str, Any]) -> Any:
        """What a block that is not computed (every row has exited) returns: its inputs, unchanged."""
        return hidden_states

    def head_config(self) -> dict[str, Any]:
        """The shape fields `UncertaintyHeads` needs for this model (see `UncertaintyHeads.from_model`)."""
        channels, height, _ = self.prediction_shape()
        return {
            "num_blocks": self.num_blocks,
            "hidden_dim": self.hidden_dim(),
            "patch_size": int(self.model.config.patch_size),
            "out_channels": channels,
            "sample_size": height,
            "feature_channels": None,
        }

    def run_block(self, block: nn.Module, **inputs: Any) -> Any:
        """Call `block` with named inputs, as the model's forward would: through the model's gradient
        checkpointing function when `model.enable_gradient_checkpointing()` is on and gradients are recorded.

        The training passes (`hidden_states_per_block`) call the blocks themselves, not the model's forward, so
        they honour the model's flag here. Like diffusers' own forwards, the checkpoint function gets the inputs
        positionally (a reentrant checkpoint takes no keywords); a block hook then maps them back to names with
        `named_block_inputs`. The block's output - the hidden state every exit reads - is what the checkpoint
        keeps; its inner activations are recomputed in backward.
        """
        model = self.model
        if not (torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False)):
            return block(**inputs)
        unknown = set(inputs) - set(self._block_params)
        if unknown:
            raise ValueError(f"{type(block).__name__} takes no inputs {sorted(unknown)}; it takes {list(self._block_params)}")
        last = max(self._block_params.index(name) for name in inputs)
        names = self._block_params[: last + 1]
        missing = [n for n, d in zip(names, self._block_defaults) if n not in inputs and d is inspect.Parameter.empty]
        if missing:
            raise ValueError(f"{type(block).__name__} needs the inputs {missing}; got {sorted(inputs)}")
        args = [inputs.get(name, default) for name, default in zip(names, self._block_defaults)]
        return checkpoint_function(model)(block, *args)

    def named_block_inputs(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Merge positional block arguments into `kwargs` by parameter name."""
        if not args:
            return kwargs
        merged = dict(zip(self._block_params, args))
        merged.update(kwargs)
        return merged
