"""Training-free per-row exits for pretrained models: reuse each row's cached tail residual.

A stock model decodes badly from an intermediate block, so a row that skips the tail does not return the
decode of `h_k`. Like diffusers' FirstBlockCache and TeaCache, it returns the decode of `h_k + r`, where `r` is
the tail residual `h_N - h_k` of the last call on which that row ran the tail. Unlike those caches, the decision
and the cache are per row (and per classifier-free-guidance branch, since the conditional and unconditional
halves are different rows): one hard sample no longer forces full compute on the whole batch, and an easy
batch average no longer lets a hard sample be skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .._validation import check_int, check_number
from .base import ExitContext, PolicyState, SerializablePolicy

if TYPE_CHECKING:
    from ..backbones.base import BackboneAdapter

CRITERIA = ("residual", "uncertainty", "timestep")


def _take(state: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """state[rows]; state itself when the rows are the whole batch (in order, as the engine keeps them)."""
    return state if rows.numel() == batch_size else state.index_select(0, rows)


def _put(state: torch.Tensor, rows: torch.Tensor, batch_size: int, values: torch.Tensor) -> None:
    """state[rows] = values, in place; a plain copy when the rows are the whole batch."""
    if rows.numel() == batch_size:
        state.copy_(values)
    else:
        state.index_copy_(0, rows, values)


class TailCacheState(PolicyState):
    """Per-row tensors of `CachedTailResidual` that live across the model calls of one sampling run.

    Shapes: B rows (both guidance halves), hidden states (B, L, D). Empty (`batch_size == 0`) until the first
    call of a run allocates it.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.batch_size = 0
        self.last_t: torch.Tensor | None = None  # (B,) timestep of the row's last call
        self.valid: torch.Tensor | None = None  # (B,) bool: the row has a tail residual
        self.cached_calls: torch.Tensor | None = None  # (B,) long: consecutive skipped calls
        self.head_residual: torch.Tensor | None = None  # decision block's residual at the last full call
        self.exit_hidden: torch.Tensor | None = None  # h_k of the current call (rows that run the tail)
        self.tail: torch.Tensor | None = None  # h_N - h_k at the last full call

    def allocate(self, batch_size: int, hidden: torch.Tensor) -> None:
        """Start a new run for `batch_size` rows whose hidden states look like `hidden` (A, L, D)."""
        shape = (batch_size, *hidden.shape[1:])
        device = hidden.device
        self.batch_size = batch_size
        self.last_t = torch.full((batch_size,), float("inf"), device=device)
        self.valid = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.cached_calls = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.head_residual = hidden.new_zeros(shape)
        self.exit_hidden = hidden.new_zeros(shape)
        self.tail = hidden.new_zeros(shape)

    def fits(self, batch_size: int, hidden: torch.Tensor) -> bool:
        """Whether the allocated tensors belong to batches of this size and hidden shape."""
        return self.batch_size == batch_size and self.head_residual is not None \
            and self.head_residual.shape[1:] == hidden.shape[1:]


class _CallResidual:
    """One model call's (A, L, D) residual of the decision block, computed by `exit_mask`, stored by `on_decision`."""

    def __init__(self) -> None:
        self.residual: torch.Tensor | None = None


@dataclass
class CachedTailResidual(SerializablePolicy):
    """Skip the tail of the network per row, adding the row's own cached tail residual.

    After block `exit_block - 1` (FirstBlockCache: the first block), each row decides whether to skip the rest.
    A skipping row returns `h_k + r` (decoded by the model's own output head), `r` being its tail residual
    `h_N - h_k` from the last call on which it ran fully. The decision per row:

    - `criterion="residual"` (default): the relative L1 change of the decision block's residual
      `h_k - h_{k-1}` since the row's last full call, `mean|res - res_prev| / mean|res_prev|`, is below
      `threshold` (FirstBlockCache's criterion, per row; FirstBlockCache skips at `<=`, this policy at `<`, so
      `threshold=0` never skips and reproduces the stock model exactly);
    - `criterion="uncertainty"`: the row's mean certainty from `UncertaintyHeads` exceeds
      `certainty_threshold` (needs heads);
    - `criterion="timestep"`: the row's timestep is at least `skip_above_t`.

    Whatever the criterion, a row runs fully on its first call, after `max_cached_calls` consecutive skipped
    calls, and whenever its timestep is below `full_below_t` (the last steps of sampling).

    `join_threshold` (residual criterion; None by default) trades the rows' independence for speed: when the
    tail runs for some row anyway, the rows whose change is at least `join_threshold` (<= `threshold`) run it
    too. On a small model or batch, a block costs nearly as much for a few rows as for all of them, so rows that
    are nearly due refresh together and the tail is skipped on more calls. A row then depends on its batch (as
    with FirstBlockCache), though a row that changes a lot still runs alone.

    The per-row state (`TailCacheState`: three (B, L, D) tensors and a few (B,) ones) is owned by the engine,
    made anew when the exit config changes, emptied by `reset_exit_state` and dropped on `remove_early_exit`;
    the policy itself starts a new run when a row's timestep goes up or the batch size changes.
    `exit_state_nbytes(model)` reports its size. Transformer backbones only (it needs every row's block input
    and output); on a U-Net it is refused at `apply_early_exit`. Works with any scheduler, including
    Heun-type ones that call the model twice per step (each call is one "call" here).

    ```py
    >>> from ee_diffusion.schedules import CachedTailResidual
    >>> CachedTailResidual(threshold=0.1, max_cached_calls=2).to_dict()["criterion"]
    'residual'

    ```
    """

    threshold: float = 0.1
    exit_block: int = 1
    criterion: str = "residual"
    certainty_threshold: float = 0.9
    skip_above_t: float = 500.0
    max_cached_calls: int = 3
    full_below_t: float = 0.0
    join_threshold: float | None = None

    def __post_init__(self) -> None:
        self.threshold = check_number(self.threshold, "threshold", 0.0)
        check_int(self.exit_block, "exit_block", 1, "blocks run by a skipping row")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        self.certainty_threshold = check_number(self.certainty_threshold, "certainty_threshold", 0.0, 1.0, True)
        self.skip_above_t = check_number(self.skip_above_t, "skip_above_t", 0.0)
        check_int(self.max_cached_calls, "max_cached_calls", 1)
        self.full_below_t = check_number(self.full_below_t, "full_below_t", 0.0)
        if self.join_threshold is not None:
            if self.criterion != "residual":
                raise ValueError(f"join_threshold needs criterion='residual', got criterion={self.criterion!r}")
            self.join_threshold = check_number(self.join_threshold, "join_threshold", 0.0, self.threshold)

    @property
    def needs_certainty(self) -> bool:
        return self.criterion == "uncertainty"

    def validate_for(self, adapter: BackboneAdapter) -> None:
        if not adapter.sequential:
            raise ValueError(
                f"CachedTailResidual needs every row's block input and output hidden states, which "
                f"{type(adapter.model).__name__} (exits by depth truncation) does not have; use StaticDepth, "
                f"TimestepSchedule or UncertaintyThreshold on U-Nets"
            )
        num_blocks = adapter.num_blocks
        if self.exit_block >= num_blocks:
            raise ValueError(
                f"exit_block must be below the model's {num_blocks} blocks (a skipping row must leave a tail to "
                f"skip), got {self.exit_block}"
            )

    # ------------------------------------------------------------------------------------------ engine protocol
    def create_state(self) -> TailCacheState:
        return TailCacheState()

    def create_call_state(self, batch_size: int, device: torch.device) -> _CallResidual:
        return _CallResidual()

    def decides_after(self, block_index: int, num_blocks: int) -> bool:
        """Rows only ever stop after the decision block."""
        return block_index == self.exit_block - 1

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        """(A,) bool: at the decision block, rows whose criterion says the tail may be skipped."""
        if ctx.block_index != self.exit_block - 1:
            return torch.zeros(ctx.rows.shape, dtype=torch.bool, device=ctx.rows.device)
        if ctx.hidden is None or ctx.block_input is None or not isinstance(ctx.state, TailCacheState):
            raise ValueError("CachedTailResidual needs a transformer backbone (block inputs and outputs per row) and "
                             "its TailCacheState (ctx.state)")
        cache = self._start_call(ctx)
        rows = ctx.rows  # nobody leaves before the decision block, so these are all B rows, in order
        joins = None  # (A,) rows that run the tail whenever some other row does (join_threshold)
        if self.criterion == "residual":
            residual = ctx.hidden - ctx.block_input  # (A, L, D)
            ctx.call_state.residual = residual  # on_decision stores it
            previous = _take(cache.head_residual, rows, cache.batch_size)
            dims = tuple(range(1, residual.ndim))
            change = (residual - previous).abs().float().mean(dim=dims)
            scale = previous.abs().float().mean(dim=dims)
            wants = change < self.threshold * scale  # (A,); same as change / scale < threshold, without 0/0
            joins = change >= self.join_threshold * scale if self.join_threshold is not None else None
        elif self.criterion == "uncertainty":
            wants = ctx.certainty > self.certainty_threshold
        else:
            wants = ctx.timesteps >= self.skip_above_t
        allowed = (
            _take(cache.valid, rows, cache.batch_size)
            & (_take(cache.cached_calls, rows, cache.batch_size) < self.max_cached_calls)
            & (ctx.timesteps >= self.full_below_t)
        )
        skips = wants & allowed
        if joins is not None:
            # If any row runs the tail, the rows due soon run with it (a 0-dim `any`: no host sync).
            skips = skips & ~(joins & (~skips).any())
        return skips

    def on_decision(self, ctx: ExitContext, mask: torch.Tensor) -> torch.Tensor | None:
        """After the final decision (CFG pairing applied): update the cache; return what skipping rows park."""
        if ctx.block_index != self.exit_block - 1:
            return None
        cache = ctx.state
        rows, b = ctx.rows, cache.batch_size
        keep = (~mask)[:, None, None]  # (A, 1, 1) rows that run the tail
        residual = ctx.call_state.residual
        if residual is None:
            residual = ctx.hidden - ctx.block_input
        # Rows that run the tail store this call's head residual and h_k; skipping rows keep their old ones.
        _put(cache.head_residual, rows, b, torch.where(keep, residual, _take(cache.head_residual, rows, b)))
        _put(cache.exit_hidden, rows, b, ctx.hidden)
        _put(cache.cached_calls, rows, b, torch.where(mask, _take(cache.cached_calls, rows, b) + 1, 0))
        # (A, L, D): h_k + r for every row; the engine parks the skipping rows' entries.
        return ctx.hidden + _take(cache.tail, rows, b)

    def on_final(self, ctx: ExitContext) -> None:
        """After the last block: the rows that ran fully refresh their tail residual r = h_N - h_k."""
        cache = ctx.state
        if not isinstance(cache, TailCacheState) or cache.batch_size == 0:
            return
        rows, b = ctx.rows, cache.batch_size
        _put(cache.tail, rows, b, ctx.hidden - _take(cache.exit_hidden, rows, b))
        cache.valid.index_fill_(0, rows, True)

    def _start_call(self, ctx: ExitContext) -> TailCacheState:
        """The run's state; a new run starts when a row's timestep went up or the batch shape changed."""
        cache = ctx.state
        # One host sync per call: did any row's timestep go up since the last call?
        if not cache.fits(ctx.batch_size, ctx.hidden) or bool(
            (ctx.timesteps > cache.last_t.index_select(0, ctx.rows)).any()
        ):
            cache.allocate(ctx.batch_size, ctx.hidden)
        cache.last_t.index_copy_(0, ctx.rows, ctx.timesteps.float())
        return cache

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "CachedTailResidual",
            "threshold": self.threshold,
            "exit_block": self.exit_block,
            "criterion": self.criterion,
            "certainty_threshold": self.certainty_threshold,
            "skip_above_t": self.skip_above_t,
            "max_cached_calls": self.max_cached_calls,
            "full_below_t": self.full_below_t,
            "join_threshold": self.join_threshold,
        }
