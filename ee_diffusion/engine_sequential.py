"""The engine for sequential transformers (DiT, PixArt, SD3): per-row exits with batch compaction.

Rows leave the batch for good: a row that exited after block k is never seen by blocks k+1..N-1 (its inputs
are gathered away, and a block whose rows have all exited is not called at all). After the last block the
parked rows are scattered back, so the model's own output head decodes every row from the hidden state of
its own exit block - DiT-family models share that head across blocks, which makes this exactly the
"decode of the exit block".

Blocks that return more than the hidden state (SD3's `(encoder_hidden_states, hidden_states)`) go through the
adapter's `split_block_output`/`join_block_output`: the hidden state is parked, the carried stream is compacted
with its rows.

A policy that forecasts sub-modules (`ExitPolicy.forecasts_submodules`, e.g. `BlockForecast`) also gets hooks on
every block's expensive sub-modules (the adapter's `forecast_modules`): at each model call the policy's
forecaster (`start_forecast`) decides which rows compute them, and each hooked sub-module returns what that
forecaster gives (computed rows and forecast rows scattered into one tensor).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .engine_base import CallState, EngineBase
from .schedules.base import ExitPolicy


class SequentialCallState(CallState):
    """A call of a sequential transformer: adds the parked hidden states of the rows that exited."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.parked: torch.Tensor | None = None  # (B, L, D) hidden states of rows that exited
        self.forecast: Any = None  # the policy's forecaster for this call (`start_forecast`), or None
        self.blocks_as_is = False  # True: no block-level work this call (the sub-module hooks do it all)


class SequentialEngine(EngineBase):
    """Hooks every block of `adapter.blocks`; an exiting row parks its hidden state until the output head."""

    masked_plans = True

    def hook_targets(self) -> list[tuple[nn.Module, Callable]]:
        blocks, policy = self.adapter.blocks, self.policy
        # A forecast with no block-level work (`needs_block_hooks`) hooks its sub-modules only.
        bare = policy is not None and policy.forecasts_submodules and not policy.needs_block_hooks()
        targets = [] if bare else [(block, functools.partial(self.run_block, i)) for i, block in enumerate(blocks)]
        if policy is not None and policy.forecasts_submodules:
            targets += [(module, functools.partial(self.run_submodule, index, name))
                        for index, block in enumerate(blocks) for name, module in self.adapter.forecast_modules(block)]
        return targets

    def hookable_modules(self) -> list[nn.Module]:
        blocks = list(self.adapter.blocks)
        return blocks + [module for block in blocks for _, module in self.adapter.forecast_modules(block)]

    def new_call_state(self, batch_size: int, timesteps: torch.Tensor, paired: bool) -> SequentialCallState:
        return SequentialCallState(batch_size, timesteps, self.num_blocks, paired)

    def begin(self, args: tuple, kwargs: dict[str, Any]) -> None:
        super().begin(args, kwargs)
        policy, state = self.policy, self.call
        if policy is None or not policy.forecasts_submodules:
            return
        name = type(policy).__name__
        if state.checkpoint is not None:
            raise ValueError(f"{name} is a training-free inference policy; the model has gradient checkpointing on and "
                             f"records gradients: call it under torch.no_grad(), or without {name}")
        if any(getattr(block, "_chunk_size", None) is not None for block in self.adapter.blocks):
            raise ValueError(f"{name} forecasts each feed-forward output whole, but feed-forward chunking is on "
                             f"(enable_forward_chunking): call model.disable_forward_chunking() first")
        inputs = dict(zip(self._model_params, args))
        inputs.update(kwargs)
        # What must not change within a run: every batched input's shape without the batch, dtype and device.
        key = tuple((k, tuple(inputs[k].shape[1:]), inputs[k].dtype, str(inputs[k].device)) for k in sorted(inputs)
                    if isinstance(inputs[k], torch.Tensor) and inputs[k].ndim > 0)
        state.forecast = policy.start_forecast(self.policy_state, state.timesteps, state.paired, key)
        # A forecast without exits (no plan, no decision, nothing at the last block): every block runs as it is, and
        # skipping the block hook's bookkeeping matters at batch 1, where a call is bound by per-op overheads.
        n = self.num_blocks
        state.blocks_as_is = (state.plan is None and state.uniform_depth is None and state.masked is None
                              and type(policy).on_final is ExitPolicy.on_final
                              and not any(policy.decides_after(i, n) for i in range(n)))

    def end(self, output: Any = None) -> None:
        state = self.call
        if state is not None and state.forecast is not None:
            state.forecast.finish()  # a call that raised never gets here: its forecaster's state is dropped
        super().end(output)

    def run_submodule(self, index: int, name: str, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        """A hooked sub-module `name` of block `index`: the policy's forecaster decides what it returns."""
        state = self.call
        if state is None or state.forecast is None:
            return forward(*args, **kwargs)
        return state.forecast.run(index, name, forward, args, kwargs)

    def run_block(self, index: int, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        state = self.call
        if state is None or self.policy is None:
            return forward(*args, **kwargs)
        if state.blocks_as_is:
            out = forward(*args, **kwargs)
            if index == 0 and state.forecast.pending:
                state.forecast.settle()  # a forecast whose rows are settled by block 0's check
            return out
        adapter = self.adapter
        inputs = adapter.named_block_inputs(args, kwargs)
        hidden = inputs.pop("hidden_states")
        if state.done:
            # Every row has exited: the block is not computed; the parked states flow on to the output head.
            return adapter.passthrough(hidden, inputs)
        if state.compacted:
            inputs = self.slice_inputs(state, inputs, state.rows, state.sliced)
        # out: (A, L, D); carried: what else the block returns (SD3: the text stream), None for DiT.
        if state.checkpoint is None:
            out, carried = adapter.split_block_output(forward(hidden, **inputs))
        else:
            # diffusers' checkpoint functions take positional arguments only; the rest rides in the partial.
            out, carried = adapter.split_block_output(state.checkpoint(functools.partial(forward, **inputs), hidden))
        if index == 0 and state.forecast is not None and state.forecast.pending:
            state.forecast.settle()
        if state.masked is not None:
            return adapter.join_block_output(self.mask_block(state, index, out), carried)

        if index == self.num_blocks - 1:
            self.policy.on_final(self.context(state, index, None, out, hidden))
            if state.parked is None:
                return adapter.join_block_output(out, carried)
            state.parked.index_copy_(0, state.rows, out)
            return adapter.join_block_output(state.parked, carried)

        if state.uniform_depth is not None:
            if index == state.uniform_depth - 1:
                state.done = True  # all rows stop here; out is the full batch
            return adapter.join_block_output(out, carried)
        if state.plan is not None:
            step = state.plan[index]
            if step is None:
                return adapter.join_block_output(out, carried)
            return adapter.join_block_output(*self.commit(state, out, *step, carried))
        if not self.policy.decides_after(index, self.num_blocks):
            return adapter.join_block_output(out, carried)  # the policy never stops a row here: no work, no sync
        decided = self.decide(state, index, out, carried, head_input=out, hidden=out, block_input=hidden)
        return adapter.join_block_output(*decided)

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
            return state.parked, carried
        if state.parked is None:
            state.parked = out.new_empty((state.batch_size, *out.shape[1:]))
        state.parked.index_copy_(0, leaving_rows, source.index_select(0, leaving))
        if isinstance(carried, torch.Tensor) and carried.ndim > 0 and carried.shape[0] == out.shape[0]:
            carried = carried.index_select(0, staying)
        state.keep_rows(staying)
        return out.index_select(0, staying), carried
