"""The training-free caches' contract: what the engine asks a cache, and when.

A training-free cache stands in, per row, for work a pretrained model would otherwise do: `CachedTailResidual` for
the tail of the network, `BlockForecast` for every block's attention and feed-forward. It is not a trained exit,
but where it lets a row leave early it does so through the exit contract it inherits from `ExitPolicy` - the tail
cache's skip is an exit after its decision block whose row parks `h_k + r`; `BlockForecast(depth=k)` is a static
exit - and `TrainingFreeCache`'s defaults never exit. Everything else the engine calls on a cache is declared here
with a default, as diffusers' `ModelHook` declares its callbacks; the engine never probes for attributes:

- run state: `create_state` makes the `CacheState` the engine owns across the model calls of a sampling run;
- a decision after a block (the tail skip): `on_decision` (what the leaving rows park), `on_final` (after the
  last block, on the rows that ran it), and `acts_after_blocks` (whether either has work to do);
- sub-module forecasts: `forecasts_submodules`, `needs_block_hooks` and `start_forecast`, whose
  `SubmoduleForecast` answers for every hooked sub-module during one model call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..layout import CallerContext
from ..policies.base import ExitContext, ExitPolicy


class CacheState:
    """What a cache remembers across the model calls of one sampling run.

    The cache makes it (`TrainingFreeCache.create_state`); the engine owns it: it creates one when a cache is
    applied or the exit config changes, calls `reset()` on `reset_exit_state` and when the caller starts a new
    run, drops it on `remove_early_exit`, and reports `nbytes()` through `exit_state_nbytes`. Tensor attributes
    are counted by the default `nbytes`.

    `infer_runs` is set by the engine at every model call: True when the caller declares no run (a stock
    pipeline), so that the cache itself restarts a row whose timestep goes up - the last fallback; False while
    the caller declares its runs (our pipelines' `BatchLayout(one_run=True)`, a `cache_context` that gives the
    step index), which then start and end them.
    """

    infer_runs: bool = True

    def reset(self) -> None:
        """Forget everything (the next call starts a new run)."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes held by the tensor attributes of this state."""
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))


class BranchStates(CacheState):
    """A cache's run states, one per guidance branch the caller names: what the engine owns for a cache.

    A stock pipeline that runs guidance as two model calls names them with diffusers' `cache_context("cond")` and
    `cache_context("uncond")`: the two calls see the same rows at the same timestep, so each branch needs a history
    of its own (one state would take the second call for a Heun-type repeat of the first). `None` keys the calls
    that name no branch (our pipelines, whose guidance pairs are rows of one batch, and stock pipelines without a
    cache context). `reset` and `nbytes` cover every branch.
    """

    def __init__(self, make: Callable[[], CacheState], first: CacheState) -> None:
        self.make = make  # the cache's `create_state`
        self.branches: dict[str | None, CacheState] = {None: first}

    def get(self, branch: str | None) -> CacheState:
        """The state of `branch`, made on its first call."""
        if branch not in self.branches:
            self.branches[branch] = self.make()
        return self.branches[branch]

    def for_call(self, context: CallerContext | None, one_run: bool) -> CacheState:
        """The state of a model call: its branch's (`context`: what a stock pipeline's `cache_context` says, else
        None), with runs declared by the caller - `one_run` (our pipelines' `BatchLayout`), or a context with a step
        index, whose step 0 starts the branch's run - or left to the cache to infer (`CacheState.infer_runs`)."""
        state = self.get(None if context is None else context.branch)
        stepped = context is not None and context.step_index is not None
        if stepped and context.step_index == 0:
            state.reset()
        state.infer_runs = not (one_run or stepped)
        return state

    def reset(self) -> None:
        for state in self.branches.values():
            state.reset()

    def nbytes(self) -> int:
        return sum(state.nbytes() for state in self.branches.values())


class SubmoduleForecast:
    """One model call of a cache that forecasts sub-modules: what every hooked sub-module returns.

    `TrainingFreeCache.start_forecast` makes it at the start of the call. The defaults compute every sub-module
    on every row and never wait for block 0.
    """

    #: True while the call waits for block 0 to run before it settles which rows compute (a per-row check on
    #: block 0's output); the engine then calls `settle()` once block 0 has run.
    pending: bool = False

    def run(self, block_index: int, name: str, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What the hooked sub-module `name` of block `block_index` returns; `forward(*args, **kwargs)` computes
        it. Default: computed on every row."""
        return forward(*args, **kwargs)

    def settle(self) -> None:
        """Block 0 has run on a `pending` call: settle which rows compute the rest of it. Default: nothing."""

    def forecasts(self, block_index: int, names: list[str]) -> dict[str, torch.Tensor] | None:
        """When every row forecasts this call: the (B, ...) outputs of block `block_index`'s sub-modules `names`, so
        that the block need not run (its family's `BlockStack.forecast_step`); None (default) when any row computes
        or any of them cannot be forecast."""
        return None

    def finish(self) -> None:
        """The call completed (a call that raised never gets here). Default: nothing."""

    def computed_rows(self) -> torch.Tensor | None:
        """After `finish`: (B,) bool, the rows that computed the hooked sub-modules at this call (the others had
        them forecast), for the exit statistics; None (default): every row computed them."""
        return None


class TrainingFreeCache(ExitPolicy):
    """Base of the training-free caches: every extension point the engine calls, each with a no-op default.

    Subclass it and override what the cache needs; the engine calls exactly these (and `ExitPolicy`'s, whose
    defaults here never exit).
    """

    #: Whether the cache forecasts, per row, the outputs of the blocks' expensive sub-modules (attention,
    #: feed-forward; `BlockForecast`): the engine then hooks those sub-modules too (the backbone adapter's
    #: `forecast_modules`) and calls `start_forecast` at the start of every model call.
    forecasts_submodules: ClassVar[bool] = False

    def decides_after(self, block_index: int, num_blocks: int) -> bool:
        """Whether rows may leave after this block (`exit_mask`, then `on_decision`). Default: never."""
        return False

    def create_state(self) -> CacheState | None:
        """A fresh `CacheState` for what the cache remembers across model calls; None (default) for nothing."""
        return None

    def on_decision(self, ctx: ExitContext, mask: torch.Tensor) -> torch.Tensor | None:
        """Called with the final (A,) mask of a block it decides after (guidance pairing applied). Return (A, ...)
        values that the leaving rows park instead of their hidden state, or None (default: the hidden state)."""
        return None

    def on_final(self, ctx: ExitContext) -> None:
        """Called after the last block with the rows that ran it (`ctx.hidden` is h_N; not when every row left
        earlier, nor under a masked plan). A cache with `forecasts_submodules` gets it only while
        `acts_after_blocks` is True or an exit is planned. Default: nothing."""

    def acts_after_blocks(self, num_blocks: int) -> bool:
        """Whether the cache decides after some block or has `on_final` work; False lets a forecasting cache's
        blocks run as they are, without the engine's per-block bookkeeping (which matters at batch 1). Default:
        whether `decides_after` holds for some block; a cache that overrides `on_final` says True."""
        return any(self.decides_after(i, num_blocks) for i in range(num_blocks))

    def needs_block_hooks(self) -> bool:
        """Whether the engine hooks every block. False only for a cache with `forecasts_submodules` that does all
        its work in the sub-module hooks: the block hooks' per-call overhead is then saved. Default: True."""
        return True

    def start_forecast(
        self, state: CacheState | None, timesteps: torch.Tensor, paired: bool, inputs_key: tuple
    ) -> SubmoduleForecast | None:
        """At the start of a model call, for a cache with `forecasts_submodules`: decide which of the (B,) rows
        compute the expensive sub-modules this call (`paired`: rows i and B/2 + i are guidance partners;
        `inputs_key`: the shapes, dtypes and device of the call's inputs, without the batch). Returns the call's
        `SubmoduleForecast`; None (default): every row computes everything."""
        return None
