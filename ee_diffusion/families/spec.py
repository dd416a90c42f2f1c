"""A model family as data: its block stacks, each stack's I/O pattern, and the conventions of its calls.

`ModelFamily` is all the engine needs to know about a diffusers transformer: which `ModuleList`s hold its blocks (in
execution order), what each block takes and returns, which of its arguments carry one entry per batch row, which of
its sub-modules a forecast may stand in for, and how the model's `timestep` argument is scaled. Whatever a block needs
from the model's preamble (temb, rotary embeddings, masks) is read from the block's own call: the model's forward
still runs, and the engine only stands in for blocks and sub-modules. See docs/add-a-family.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Names of the streams a block may return (`BlockStack.returns`).
STREAMS = ("image", "text")


def _names(value: object, field: str) -> tuple[str, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"{field} must be a tuple of non-empty strings, got {value!r}")
    return value


@dataclass(frozen=True)
class BlockStack:
    """One `ModuleList` of blocks that run one after another, and the I/O pattern every block in it shares.

    Args:
        attr: the model attribute holding the blocks, e.g. `"transformer_blocks"`.
        returns: what a block returns, in order: `("image",)` for a bare tensor, `("text", "image")` for SD3's and
            Flux's `(encoder_hidden_states, hidden_states)`.
        image_arg: the argument carrying the image stream (B, L, D), the one the engine compacts and parks.
        text_arg: the argument carrying the text stream (B, L_text, D) when the block returns it, else None.
        row_args: the other arguments whose first dimension is the batch (temb, masks, per-row modulation): sliced
            to the running rows. Every other argument (rotary tables, kwargs dicts) passes through untouched.
        forecastable: names of a block's expensive sub-modules (attention, feed-forward) whose outputs a per-row
            forecast may stand in for, dotted below a wrapper block (`"block.attn1"`); a block that lacks one
            (`attn2 = None`) simply has fewer.
        joint: True when the stack's image stream is the joint text and image sequence that the model concatenates
            from the previous stack's two streams (AuraFlow's single-stream blocks, [text; image]; HiDream's,
            [image; text], a `whole_batch` family) and slices the image part of after the stack: a row that left
            before the stack parks its image stream beside a text part it never reads.
        text_first: for a joint stack, whether the text part comes first in its sequence ([text; image], AuraFlow and
            Chroma) or last ([image; text], HiDream).
        forecast_step: `step(block, inputs, forecasts, memo)` -> the block's output on a call where every row's
            `forecastable` outputs are forecast (`forecasts`: name -> (B, ...) tensor; `memo`: a dict the call's
            blocks share), computing only what the forecasts do not replace (gates, residual additions), or None to
            run the block as it is (`forecast_steps.py`). None (default): the block always runs, its hooked
            sub-modules returning the forecasts.

    ```py
    >>> BlockStack("transformer_blocks", returns=("text", "image"), text_arg="encoder_hidden_states").returns
    ('text', 'image')

    ```
    """

    attr: str
    returns: tuple[str, ...] = ("image",)
    image_arg: str = "hidden_states"
    text_arg: str | None = None
    row_args: tuple[str, ...] = ()
    forecastable: tuple[str, ...] = ()
    joint: bool = False
    text_first: bool = True
    forecast_step: Callable[[nn.Module, dict[str, Any], dict[str, torch.Tensor], dict], torch.Tensor | None] | None \
        = None

    def __post_init__(self) -> None:
        if not isinstance(self.attr, str) or not self.attr:
            raise TypeError(f"attr must name the model's block list, got {self.attr!r}")
        returns = _names(self.returns, "returns")
        if sorted(set(returns)) != sorted(returns) or not set(returns) <= set(STREAMS) or "image" not in returns:
            raise ValueError(f"returns must list 'image' once and optionally 'text', in the block's order: {returns}")
        if ("text" in returns) != (self.text_arg is not None):
            raise ValueError(
                f"a block that returns the text stream needs text_arg (the argument that carries it), and only then; "
                f"got returns={returns}, text_arg={self.text_arg!r}"
            )
        _names(self.row_args, "row_args")
        _names(self.forecastable, "forecastable")
        if self.image_arg in self.row_args or (self.text_arg is not None and self.text_arg in self.row_args):
            raise ValueError(f"row_args lists the image or text stream itself: {self.row_args}")
        if not isinstance(self.text_first, bool):
            raise ValueError(f"text_first must be True or False, got {self.text_first!r}")
        if self.forecast_step is not None and not callable(self.forecast_step):
            raise TypeError(f"forecast_step must be a function (block, inputs, forecasts, memo) or None, got "
                            f"{self.forecast_step!r}")
        if not isinstance(self.joint, bool) or (self.joint and self.text_arg is not None):
            raise ValueError(f"joint must be True or False, and a joint stack carries no separate text stream; got "
                             f"joint={self.joint!r}, text_arg={self.text_arg!r}")


@dataclass(frozen=True)
class ModelFamily:
    """One diffusers model family, declared.

    Args:
        name: a short name for messages and docs.
        model_classes: the diffusers classes this family serves (subclasses too).
        stacks: the block stacks in execution order; the engine numbers their blocks 0..N-1 across stacks.
        decoder: the `ExitDecoder` class that applies the model's own output head to any block's image stream
            (exits, heads and training need it), or None where the head cannot decode an intermediate stream.
        timestep_scale: what the model's `timestep` argument is multiplied by to give the 0-999 timesteps that exit
            schedules are written in (1.0 for 0-999 models; 1000.0 for models called with a 0-1 timestep).
        timestep_reversed: True for models called with 1 - t/1000, which grows along a run (Lumina2): the 0-999
            timestep is then timestep_scale x (1 - argument).
        timestep_arg: the model-call argument that carries the timestep (`"timesteps"` for HiDream).
        null_class: `(argument, config field)` for class-conditional models whose guidance batch marks its
            unconditional half with a reserved label (DiT: `("class_labels", "num_embeds_ada_norm")`); None where the
            two halves are recognised as `cat([x, x])` with equal timesteps (text-to-image pipelines).
        unsupported_args: model-call arguments that per-row exits cannot honour (controlnet residuals...): a call
            that gives one is refused while a policy is set.
        whole_batch: True when the model's own loop works on the streams between its blocks (HunyuanDiT keeps the
            first half's outputs as the second half's skips; HiDream concatenates per-block tokens to the streams and
            cuts them off again): every block then hands every row back to the model, a row that left carrying its
            exit value on, while only the running rows are computed. False: the running rows alone flow on.
    """

    name: str
    model_classes: tuple[type, ...]
    stacks: tuple[BlockStack, ...]
    decoder: type | None = None  # an `ExitDecoder` subclass (decoder.py imports this module, so not named here)
    timestep_scale: float = 1.0
    timestep_reversed: bool = False
    timestep_arg: str = "timestep"
    null_class: tuple[str, str] | None = None
    unsupported_args: tuple[str, ...] = ()
    whole_batch: bool = False

    def __post_init__(self) -> None:
        if not self.model_classes or not all(isinstance(c, type) for c in self.model_classes):
            raise TypeError(f"model_classes must be a non-empty tuple of classes, got {self.model_classes!r}")
        if not self.stacks or not all(isinstance(s, BlockStack) for s in self.stacks):
            raise TypeError(f"stacks must be a non-empty tuple of BlockStack, got {self.stacks!r}")
        if not (isinstance(self.timestep_scale, (int, float)) and self.timestep_scale > 0):
            raise ValueError(f"timestep_scale must be a positive number, got {self.timestep_scale!r}")
        if not isinstance(self.timestep_reversed, bool):
            raise ValueError(f"timestep_reversed must be True or False, got {self.timestep_reversed!r}")
        if not isinstance(self.timestep_arg, str) or not self.timestep_arg:
            raise TypeError(f"timestep_arg must name the model's timestep argument, got {self.timestep_arg!r}")
        if self.null_class is not None and len(_names(self.null_class, "null_class")) != 2:
            raise ValueError(f"null_class must be (argument, config field), got {self.null_class!r}")
        _names(self.unsupported_args, "unsupported_args")
        if not isinstance(self.whole_batch, bool):
            raise ValueError(f"whole_batch must be True or False, got {self.whole_batch!r}")
        if self.stacks[0].joint:
            raise ValueError(f"the first stack ({self.stacks[0].attr}) cannot be joint: a joint stack's [text; image] "
                             f"sequence is made from the streams of the stack before it")
