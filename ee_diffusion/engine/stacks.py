"""The engine for sequential transformers (every declared family): per-row exits with batch compaction.

Blocks are numbered 0..N-1 across the family's stacks. Rows leave the batch for good: a row that exited after
block k is never seen by blocks k+1..N-1 (its inputs are gathered away, and a block whose rows have all exited is
not called at all). After the last block the parked rows are scattered back, so the model's own output head
decodes every row from the image stream of its own exit block - the "decode of the exit block".

Each block's call is taken apart and put together by its stack's declared I/O pattern (`BlockIO`): blocks that
also return the text stream (SD3's and Flux's `(encoder_hidden_states, hidden_states)`) park the image stream and
carry the text stream, compacted with its rows.

A training-free cache that forecasts sub-modules (`TrainingFreeCache.forecasts_submodules`, e.g. `BlockForecast`)
also gets hooks on every block's expensive sub-modules (the adapter's `forecast_modules`): at each model call the
cache's `SubmoduleForecast` (`start_forecast`) decides which rows compute them, and each hooked sub-module returns
what it gives (computed rows and forecast rows scattered into one tensor).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._compat import forward_chunking_on
from ..caches.base import SubmoduleForecast
from ..families.adapter import BlockIO
from .calls import CallState, EngineBase


class SequentialCallState(CallState):
    """A call of a sequential transformer: adds the parked hidden states of the rows that exited."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.parked: torch.Tensor | None = None  # (B, L, D) hidden states of rows that exited
        self.forecast: SubmoduleForecast | None = None  # the cache's forecaster for this call (`start_forecast`)
        self.blocks_as_is = False  # True: no block-level work this call (the sub-module hooks do it all)
        self.step_memo: dict = {}  # what the blocks' forecast steps share within this call


class SequentialEngine(EngineBase):
    """Hooks every block of `adapter.blocks`; an exiting row parks its hidden state until the output head."""

    masked_plans = True

    def hook_targets(self) -> list[tuple[nn.Module, Callable]]:
        blocks, cache = self.adapter.blocks, self.cache
        forecasts = cache is not None and cache.forecasts_submodules
        # A forecast with no block-level work (`needs_block_hooks`) hooks its sub-modules only, unless the family
        # declares a forecast step, which stands in for a whole block when every row forecasts.
        stepped = any(stack.forecast_step is not None for stack in self.adapter.family.stacks)
        # Each block's forecast sub-modules by name, looked up once (`forecast_step` runs at every block of a call).
        self.forecast_names = {i: [name for name, _ in self.adapter.forecast_modules(i)] for i in range(len(blocks))}
        bare = forecasts and not cache.needs_block_hooks() and not stepped
        targets = [] if bare else [(block, functools.partial(self.run_block, i, self.adapter.block_io(i)))
                                   for i, block in enumerate(blocks)]
        if forecasts:
            targets += [(module, functools.partial(self.run_submodule, index, name))
                        for index in range(len(blocks)) for name, module in self.adapter.forecast_modules(index)]
        return targets

    def hookable_modules(self) -> list[nn.Module]:
        blocks = list(self.adapter.blocks)
        return blocks + [module for index in range(len(blocks)) for _, module in self.adapter.forecast_modules(index)]

    def new_call_state(self, batch_size: int, timesteps: torch.Tensor, paired: bool) -> SequentialCallState:
        return SequentialCallState(batch_size, timesteps, self.num_blocks, paired)

    def begin(self, args: tuple, kwargs: dict[str, Any]) -> None:
        super().begin(args, kwargs)
        cache, state = self.cache, self.call
        if cache is None or not cache.forecasts_submodules:
            return
        name = type(cache).__name__
        if state.checkpoint is not None:
            raise ValueError(f"{name} is a training-free inference cache; the model has gradient checkpointing on and "
                             f"records gradients: call it under torch.no_grad(), or without {name}")
        if any(forward_chunking_on(block) for block in self.adapter.blocks):
            raise ValueError(f"{name} forecasts each feed-forward output whole, but feed-forward chunking is on "
                             f"(enable_forward_chunking): call model.disable_forward_chunking() first")
        inputs = dict(zip(self._model_params, args))
        inputs.update(kwargs)
        # What must not change within a run: every batched input's shape without the batch, dtype and device.
        key = tuple((k, tuple(inputs[k].shape[1:]), inputs[k].dtype, str(inputs[k].device)) for k in sorted(inputs)
                    if isinstance(inputs[k], torch.Tensor) and inputs[k].ndim > 0)
        state.forecast = cache.start_forecast(state.cache_state, state.timesteps, state.paired, key)
        # A forecast without exits (no plan, no decision, nothing at the last block): every block runs as it is, and
        # skipping the block hook's bookkeeping matters at batch 1, where a call is bound by per-op overheads.
        state.blocks_as_is = (state.plan is None and state.uniform_depth is None and state.masked is None
                              and not cache.acts_after_blocks(self.num_blocks))

    def end(self, output: Any = None) -> None:
        state = self.call
        if state is not None and state.forecast is not None:
            state.forecast.finish()  # a call that raised never gets here: its forecaster's state is dropped
            state.computed_rows = state.forecast.computed_rows()
        super().end(output)

    def run_submodule(self, index: int, name: str, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        """A hooked sub-module `name` of block `index`: the cache's forecaster decides what it returns."""
        state = self.call
        if state is None or state.forecast is None:
            return forward(*args, **kwargs)
        return state.forecast.run(index, name, forward, args, kwargs)

    def run_block(self, index: int, io: BlockIO, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Block `index`'s hook; `io` is its stack's I/O pattern (the adapter's `block_io`)."""
        state = self.call
        if state is None or self.policy is None:
            return forward(*args, **kwargs)
        if state.blocks_as_is:
            step = io.stack.forecast_step
            if step is not None and state.forecast is not None:
                out = self.forecast_step(step, index, io, args, kwargs)
                if out is not None:
                    return out
            out = forward(*args, **kwargs)
            if index == 0 and state.forecast is not None and state.forecast.pending:
                state.forecast.settle()  # a forecast whose rows are settled by block 0's check
            return out
        inputs = io.named_inputs(args, kwargs)
        hidden = inputs.pop(io.image_arg)  # the image stream, the block's first parameter
        if state.done:
            # Every row has exited: the block is not computed; the parked states flow on to the output head.
            return io.passthrough(hidden, inputs)
        whole = io.whole_batch and state.compacted and state.masked is None
        if whole:
            # The model's loop holds every row (B, L, D): a row that left carries its exit value on, which the block
            # hands back unchanged (a fresh copy: the model may keep the input, e.g. as a later block's skip). Only
            # the running rows are computed; what they return is written over their copy below.
            state.parked = hidden.clone()
            whole_text = inputs.get(io.stack.text_arg) if io.stack.text_arg is not None else None
            hidden = hidden.index_select(0, state.rows)
            names = io.row_args if io.stack.text_arg is None else (*io.row_args, io.stack.text_arg)
            inputs = self.slice_inputs(state, inputs, names, state.rows, state.sliced)
        elif io.stack.joint and state.parked is not None and state.parked.shape[1] < hidden.shape[1]:
            # The first block of a joint stack: the model made its text and image sequence of the running rows; a row
            # parked earlier gets a text part beside its image stream (in front, or after it: `text_first`), which
            # the model slices off unread.
            b, length, width = state.parked.shape
            text = state.parked.new_zeros(b, hidden.shape[1] - length, width)
            state.parked = torch.cat([text, state.parked] if io.stack.text_first else [state.parked, text], 1)
        if state.compacted and not whole:
            inputs = self.slice_inputs(state, inputs, io.row_args, state.rows, state.sliced)
        output = self.exit_block(state, index, io, forward, hidden, inputs)
        if not io.whole_batch or state.masked is not None:
            return output
        return io.join(*self.whole_batch_out(state, *io.split(output), whole_text if whole else None))

    def forecast_step(self, step: Callable, index: int, io: BlockIO, args: tuple,
                      kwargs: dict[str, Any]) -> torch.Tensor | None:
        """Block `index` on a call where every row forecasts its sub-modules: the family's `step` computes only what
        the forecasts do not replace; None where it cannot (some row computes, or the step does not know the block)."""
        forecasts = self.call.forecast.forecasts(index, self.forecast_names[index])
        if forecasts is None:
            return None
        return step(self.adapter.blocks[index], io.named_inputs(args, kwargs), forecasts, self.call.step_memo)

    def whole_batch_out(
        self, state: SequentialCallState, out: torch.Tensor, carried: Any, text: torch.Tensor | None
    ) -> tuple[torch.Tensor, Any]:
        """A `whole_batch` family's block output -> every row: what the running rows go on with, written over the
        copy of the block's input (`state.parked`, where the rows that left here are parked too)."""
        batch = state.batch_size
        if out.shape[0] == batch:  # no row had left and none left here, or the whole batch is parked
            return out, carried
        # out: (A', L, D), the rows still running, in the order of state.rows.
        hidden = state.parked.index_copy_(0, state.rows, out)
        if isinstance(carried, torch.Tensor) and carried.ndim > 0 and carried.shape[0] == state.rows.shape[0]:
            # The text stream of the rows that left is never read again: their input's (or zeros, if they had not
            # left before this block).
            base = text.clone() if text is not None else carried.new_zeros((batch, *carried.shape[1:]))
            carried = base.index_copy_(0, state.rows, carried)
        return hidden, carried

    def exit_block(
        self, state: SequentialCallState, index: int, io: BlockIO, forward: Callable, hidden: torch.Tensor,
        inputs: dict[str, Any],
    ) -> Any:
        """Run block `index` on the running rows' `hidden` (A, L, D) and `inputs`, and let the rows that stop here
        leave; returns the block's output for the model (the running rows', or the whole batch once all have left)."""
        # out: (A, L, D); carried: what else the block returns (SD3: the text stream), None for DiT.
        if state.checkpoint is None:
            out, carried = io.split(forward(hidden, **inputs))
        else:
            # diffusers' checkpoint functions take positional arguments only; the rest rides in the partial.
            output = state.checkpoint(functools.partial(forward, **inputs), hidden)
            out, carried = io.split(output)
        if index == 0 and state.forecast is not None and state.forecast.pending:
            state.forecast.settle()
        if state.masked is not None:
            return io.join(self.mask_block(state, index, out), carried)

        if index == self.num_blocks - 1:
            if self.cache is not None:
                self.cache.on_final(self.context(state, index, None, out, hidden))
            if state.parked is None:
                return io.join(out, carried)
            state.parked.index_copy_(0, state.rows, out)
            return io.join(state.parked, carried)

        if state.uniform_depth is not None:
            if index == state.uniform_depth - 1:
                state.done = True  # all rows stop here; out is the full batch
            return io.join(out, carried)
        if state.plan is not None:
            step = state.plan[index]
            if step is None:
                return io.join(out, carried)
            return io.join(*self.commit(state, out, *step, carried))
        if not self.policy.decides_after(index, self.num_blocks):
            # The policy never stops a row here: no work, no sync.
            return io.join(out, carried)
        decided = self.decide(state, index, out, carried, head_input=out, hidden=out, block_input=hidden)
        return io.join(*decided)

    def mask_block(self, state: SequentialCallState, index: int, out: torch.Tensor) -> torch.Tensor:
        """A per-row plan under torch.compile/export: (B, L, D) -> what goes on, with no host sync.

        Every row runs on to the deepest planned depth `hi`; `state.parked` keeps each row's output of its own
        exit block (rows exit at `lo` at the earliest), and after block `hi - 1` it replaces the hidden state,
        so the model's head decodes each row at its own depth. Later blocks pass it through (`state.done`).
        """
        lo, hi = state.masked
        if index < lo - 1:
            return out
        exiting = (state.exit_depth == index + 1)[:, None, None]  # (B, 1, 1)
        state.parked = out if state.parked is None else torch.where(exiting, out, state.parked)
        if index < hi - 1:
            return out
        state.done = True
        return state.parked

    def commit(
        self, state: SequentialCallState, out: torch.Tensor, leaving: torch.Tensor, leaving_rows: torch.Tensor,
        staying: torch.Tensor, carried: Any, parked_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Park rows `leaving`; return (hidden, carried) of the staying rows, unless every row has left.

        `parked_values` (A, ...) replaces `out` as what the leaving rows park (default: `out` itself). A carried
        stream (SD3's text tokens, (A, L_text, D)) is compacted with the hidden state.
        """
        source = out if parked_values is None else parked_values
        if staying.numel() == 0:
            state.done = True
            if state.parked is None:  # nobody left before, so `source` is the whole batch in order
                return source, carried
            state.parked.index_copy_(0, leaving_rows, source)
            if isinstance(carried, torch.Tensor) and carried.ndim > 0 and carried.shape[0] == out.shape[0]:
                # The text stream goes on beside the whole batch (a joint stack concatenates the two); the rows that
                # left earlier never read theirs, which stays zero.
                text = carried.new_zeros((state.batch_size, *carried.shape[1:]))
                carried = text.index_copy_(0, leaving_rows, carried.index_select(0, leaving))
            return state.parked, carried
        if state.parked is None:
            state.parked = out.new_empty((state.batch_size, *out.shape[1:]))
        state.parked.index_copy_(0, leaving_rows, source.index_select(0, leaving))
        if isinstance(carried, torch.Tensor) and carried.ndim > 0 and carried.shape[0] == out.shape[0]:
            carried = carried.index_select(0, staying)
        state.keep_rows(staying)
        return out.index_select(0, staying), carried
