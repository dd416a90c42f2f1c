"""`FamilyAdapter`: the engine's view of a transformer, built from its family's declaration (`ModelFamily`)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .base import BackboneAdapter
from .decoder import ExitDecoder
from .spec import BlockStack, ModelFamily


class FamilyAdapter(BackboneAdapter):
    """Blocks of every stack in execution order, numbered 0..N-1 across stacks, and each block's I/O pattern.

    ```py
    >>> from ee_diffusion.adapters import get_adapter
    >>> from ee_diffusion.testing import tiny_sd3
    >>> adapter = get_adapter(tiny_sd3(num_layers=3))
    >>> adapter.num_blocks, adapter.stack(2).returns, adapter.block_io(0).row_args
    (3, ('text', 'image'), ('temb',))

    ```
    """

    def __init__(self, model: nn.Module, family: ModelFamily) -> None:
        super().__init__(model)
        self.family = family
        self.timestep_scale = float(family.timestep_scale)
        self.timestep_reversed = family.timestep_reversed
        self.timestep_arg = family.timestep_arg
        self._blocks: list[nn.Module] = []
        self._stacks: list[BlockStack] = []  # the stack of every block, by index
        self._io: dict[BlockStack, BlockIO] = {}  # each stack's I/O pattern with its blocks' parameter names
        for stack in family.stacks:
            try:
                modules = model.get_submodule(stack.attr)
            except AttributeError:
                modules = None
            if not isinstance(modules, nn.ModuleList):
                raise TypeError(
                    f"the {family.name} family declares blocks at `{stack.attr}`, but this {type(model).__name__} has "
                    f"{type(modules).__name__} there (expected an nn.ModuleList)"
                )
            if len(modules):
                params = tuple(inspect.signature(modules[0].forward).parameters)
                if params[:1] != (stack.image_arg,):
                    # The engine hands the image stream on positionally (as checkpointing functions need).
                    raise TypeError(
                        f"the {family.name} family declares `{stack.image_arg}` as the image stream of `{stack.attr}`, "
                        f"but {type(modules[0]).__name__}.forward takes {list(params)}: it must be the first parameter"
                    )
                self._io[stack] = BlockIO(stack, params, family.whole_batch)
            self._blocks += list(modules)
            self._stacks += [stack] * len(modules)
        if not self._blocks:
            attrs = " and ".join(f"`{stack.attr}`" for stack in family.stacks)
            raise ValueError(
                f"{type(model).__name__} has no blocks: {attrs} (where the {family.name} family declares them) "
                f"{'is' if len(family.stacks) == 1 else 'are'} empty, so there is nothing to exit from or cache"
            )
        self._decoder = None if family.decoder is None else family.decoder(model, self._blocks, self._stacks)

    @property
    def blocks(self) -> list[nn.Module]:
        return self._blocks

    @property
    def decoder(self) -> ExitDecoder:
        if self._decoder is None:
            raise ValueError(
                f"the {self.family.name} family declares no exit decoder, so nothing can decode an intermediate "
                f"block of {type(self.model).__name__} outside a model call: uncertainty heads and layer-wise training "
                f"are not available on it. Exits and caches at inference still run (the model's own head decodes "
                f"every row); to add a decoder see docs/add-a-family.md"
            )
        return self._decoder

    def stack(self, index: int) -> BlockStack:
        """The declaration of block `index`'s stack."""
        return self._stacks[index]

    def block_io(self, index: int) -> BlockIO:
        """Block `index`'s I/O pattern, one object per stack (shared by its blocks: under torch.compile the block hooks
        of one stack then share their graphs instead of specialising on the block's index)."""
        return self._io[self._stacks[index]]

    def forecast_modules(self, index: int) -> list[tuple[str, nn.Module]]:
        """(name, module) of block `index`'s expensive sub-modules in declared order, leaving out the ones this block
        lacks (e.g. `attn2 = None`)."""
        modules = dict(self._blocks[index].named_modules())  # dotted names below the block: "attn", "block.ff_i"
        return [(name, modules[name]) for name in self._stacks[index].forecastable if name in modules]

    def is_cfg_pair_batch(self, inputs: dict[str, Any], timesteps: torch.Tensor) -> bool:
        if self.family.null_class is None:
            return super().is_cfg_pair_batch(inputs, timesteps)
        # Class-conditional pipelines build guidance batches as cat([x, x]) with labels cat([y, null]) and equal
        # timesteps; recognise exactly that layout (one host sync per call).
        argument, _ = self.family.null_class
        labels, hidden = inputs.get(argument), inputs[self.sample_arg]
        batch = hidden.shape[0]
        null = self.null_class_id()
        if null is None or labels is None or batch % 2 or labels.ndim != 1 or labels.shape[0] != batch:
            return False
        half = batch // 2
        same = (labels[half:] == null).all() & (timesteps[:half] == timesteps[half:]).all()
        return bool(same & (hidden[:half] == hidden[half:]).all())

    def null_class_id(self) -> int | None:
        """The class id the model reserves for "no class" (the declared `null_class` config field), or None."""
        if self.family.null_class is None:
            return None
        value = self.model.config.get(self.family.null_class[1])
        return None if value is None else int(value)

    def check_call(self, inputs: dict[str, Any]) -> None:
        for name in self.family.unsupported_args:
            # "joint_attention_kwargs.ip_adapter_image_embeds": a key of a dict argument.
            argument, _, key = name.partition(".")
            value = inputs.get(argument)
            if key and isinstance(value, dict):
                value = value.get(key)
            elif key:
                value = None
            if value is not None:
                raise ValueError(
                    f"early exit on {type(self.model).__name__} does not support `{name}`; got "
                    f"{type(value).__name__}. Call the model without it, or run with EarlyExitConfig() (no exits)"
                )


class BlockIO:
    """What a block hook needs to take a block's call apart and put its return value together: one stack's declared
    pattern and its blocks' forward parameter names. A plain object, copied with the model's hooks."""

    __slots__ = ("stack", "params", "image_arg", "row_args", "whole_batch")

    def __init__(self, stack: BlockStack, params: tuple[str, ...], whole_batch: bool = False) -> None:
        self.stack = stack
        self.params = params  # the block forward's parameter names, in order (names positional arguments)
        self.image_arg = stack.image_arg
        # Arguments to slice to the running rows. The image and text streams are not among them: the engine compacts
        # those as they flow from block to block (or, `whole_batch`, slices them too and hands every row back).
        self.row_args = stack.row_args
        self.whole_batch = whole_batch  # the family's `ModelFamily.whole_batch`

    def named_inputs(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Merge positional block arguments into `kwargs` by parameter name."""
        if not args:
            return kwargs
        merged = dict(zip(self.params, args))
        merged.update(kwargs)
        return merged

    def split(self, output: Any) -> tuple[torch.Tensor, Any]:
        """A block's return value -> (image stream the engine compacts and parks, text stream or None)."""
        returns = self.stack.returns
        if len(returns) == 1:
            return output, None
        return output[returns.index("image")], output[returns.index("text")]

    def join(self, hidden_states: torch.Tensor, carried: Any) -> Any:
        """Inverse of `split`: what the block hook returns to the model's forward."""
        returns = self.stack.returns
        if len(returns) == 1:
            return hidden_states
        return tuple(hidden_states if name == "image" else carried for name in returns)

    def passthrough(self, hidden_states: torch.Tensor, inputs: dict[str, Any]) -> Any:
        """What a block returns when it is not computed (every row has exited): its inputs, unchanged."""
        text_arg = self.stack.text_arg
        return self.join(hidden_states, None if text_arg is None else inputs.get(text_arg))
