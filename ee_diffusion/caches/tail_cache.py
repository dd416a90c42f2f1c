"""Training-free per-row exits for pretrained models: reuse or forecast each row's tail residual.

A stock model decodes badly from an intermediate block, so a row that skips the tail does not return the
decode of `h_k`. Like diffusers' FirstBlockCache and TeaCache, it returns the decode of `h_k + r`, where `r`
stands for the tail residual `h_N - h_k` it skipped: the one of the last call on which that row ran the tail
(order 0), or, like TaylorSeer and SeaCache's `residual_order=1`, a polynomial extrapolation in the timestep
through the row's last full calls (orders 1 and 2). Unlike those caches, the decision, the cache and the
forecast are per row (and per classifier-free-guidance branch, since the conditional and unconditional halves
are different rows): one hard sample no longer forces full compute on the whole batch, and an easy batch
average no longer lets a hard sample be skipped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .._validation import check_int, check_number
from ..policies.base import ExitContext, SerializablePolicy
from .base import CacheState, TrainingFreeCache

if TYPE_CHECKING:
    from ..families.base import BackboneAdapter

CRITERIA = ("residual", "uncertainty", "timestep")
FORECAST_ORDERS = (0, 1, 2)
#: `state_dtype` names -> the dtype of the stored (B, L, D) tensors (None: the hidden states' own).
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Timesteps closer than this (training units, 0..999) are one node of a row's history: Heun-type solvers call
#: the model twice at the same timestep, and dividing by their gap would divide by zero.
_SAME_TIMESTEP = 1e-3


def _take(state: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """state[rows]; state itself when the rows are the whole batch (in order, as the engine keeps them)."""
    return state if rows.numel() == batch_size else state.index_select(0, rows)


def _put(state: torch.Tensor, rows: torch.Tensor, batch_size: int, values: torch.Tensor) -> None:
    """state[rows] = values, in place; a plain copy when the rows are the whole batch."""
    if rows.numel() == batch_size:
        state.copy_(values)
    else:
        state.index_copy_(0, rows, values)


class TailCacheState(CacheState):
    """Per-row tensors of `CachedTailResidual` that live across the model calls of one sampling run.

    Shapes: B rows (both guidance halves), hidden states (B, L, D), forecast order p. Row b's tail residual is
    kept in Newton form through its last p + 1 full calls, at timesteps `nodes[b, 0]` (the newest) >
    `nodes[b, 1]` > ...: `diffs[b, j]` is the j-th divided difference over the j + 1 newest of them, and

        r_b(t) = diffs[b, 0] + (t - nodes[b, 0]) * (diffs[b, 1] + (t - nodes[b, 1]) * diffs[b, 2])

    (order 0: the last tail residual itself). A row with fewer full calls has zero higher differences, so it
    forecasts at the order its history allows. Empty (`batch_size == 0`) until the first call of a run
    allocates it.

    Size (`nbytes`), with s the bytes per element of `dtype` (or of the hidden states when None):
    B * (L * D * s * (p + 1 + c) + 4 * (p + 2) + 16) bytes, c = 1 when the residual criterion stores the
    decision block's residual, else 0.

    ```py
    >>> import torch
    >>> from ee_diffusion.schedules import TailCacheState
    >>> state = TailCacheState(order=1, dtype=torch.float16)
    >>> state.allocate(2, torch.zeros(2, 16, 32), head_residual=True)
    >>> state.nbytes() == 2 * (16 * 32 * 2 * (1 + 1 + 1) + 4 * (1 + 2) + 16)
    True
    >>> TailCacheState.bound(batch=2, tokens=16, width=32, order=1, element_bytes=2, head_residual=True) == state.nbytes()
    True

    ```
    """

    @staticmethod
    def bound(batch: int, tokens: int, width: int, order: int, element_bytes: int, head_residual: bool) -> int:
        """The size formula above, for B = `batch` rows of (L, D) = (`tokens`, `width`) hidden states stored at
        `element_bytes` per element (without allocating anything: e.g. for a model too large to run here)."""
        return batch * (tokens * width * element_bytes * (order + 1 + int(head_residual)) + 4 * (order + 2) + 16)

    def __init__(self, order: int = 0, dtype: torch.dtype | None = None) -> None:
        self.order = order
        self.dtype = dtype  # storage dtype of the (B, L, D) tensors; None: the hidden states' own
        self.reset()

    def reset(self) -> None:
        self.batch_size = 0
        self.last_t: torch.Tensor | None = None  # (B,) float32 timestep of the row's last call
        self.points: torch.Tensor | None = None  # (B,) long full calls in the row's history, 0..p+1
        self.cached_calls: torch.Tensor | None = None  # (B,) long consecutive skipped calls
        self.nodes: torch.Tensor | None = None  # (B, p+1) float32 timesteps of those full calls, newest first
        self.diffs: torch.Tensor | None = None  # (B, p+1, L, D) divided differences of the tail residual
        self.head_residual: torch.Tensor | None = None  # (B, L, D) decision block's residual at the last full call

    def allocate(self, batch_size: int, hidden: torch.Tensor, head_residual: bool) -> None:
        """Start a new run for `batch_size` rows whose hidden states look like `hidden` (A, L, D); keep the
        decision block's residual too when `head_residual`."""
        shape = (batch_size, *hidden.shape[1:])
        device, dtype = hidden.device, self.dtype or hidden.dtype
        self.batch_size = batch_size
        self.last_t = torch.full((batch_size,), float("inf"), device=device)
        self.points = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.cached_calls = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.nodes = torch.zeros(batch_size, self.order + 1, device=device)
        self.diffs = hidden.new_zeros((batch_size, self.order + 1, *hidden.shape[1:]), dtype=dtype)
        self.head_residual = hidden.new_zeros(shape, dtype=dtype) if head_residual else None

    def fits(self, batch_size: int, hidden: torch.Tensor) -> bool:
        """Whether the allocated tensors belong to batches of this size, hidden shape and dtype."""
        return self.batch_size == batch_size and self.diffs is not None \
            and self.diffs.shape[2:] == hidden.shape[1:] and self.diffs.dtype == (self.dtype or hidden.dtype)

    def forecast(self, rows: torch.Tensor, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(A,) rows at their (A,) timesteps -> (A, L, D) their forecast tail residuals, in `dtype`."""
        diffs = _take(self.diffs, rows, self.batch_size)  # (A, p+1, L, D)
        if self.order == 0:
            return diffs[:, 0].to(dtype)  # the stored residual itself: no arithmetic
        compute = torch.promote_types(dtype, torch.float32)
        gaps = (timesteps.float()[:, None] - _take(self.nodes, rows, self.batch_size)).to(compute)  # (A, p+1)
        # Horner: d_0 + (t - n_0) * (d_1 + (t - n_1) * (d_2 + ...)).
        out = diffs[:, self.order].to(compute)
        for j in range(self.order - 1, -1, -1):
            out = diffs[:, j].to(compute) + gaps[:, j, None, None] * out
        return out.to(dtype)

    def record(self, rows: torch.Tensor, timesteps: torch.Tensor, tail: torch.Tensor) -> None:
        """Rows (A,) ran fully at their (A,) timesteps, with tail residuals `tail` (A, L, D): add that point.

        The point becomes each row's newest node and the oldest one drops out. A row whose newest node is at
        the same timestep (Heun-type solvers call the model twice there) replaces that node's value instead:
        equal timesteps are never divided by, and the refreshed point wins.
        """
        b, p = self.batch_size, self.order
        if p == 0:
            _put(self.diffs, rows, b, tail[:, None].to(self.diffs.dtype))
            _put(self.points, rows, b, torch.ones_like(rows))
            return
        t = timesteps.float()  # (A,)
        points = _take(self.points, rows, b)  # (A,)
        nodes = _take(self.nodes, rows, b)  # (A, p+1)
        compute = torch.promote_types(tail.dtype, torch.float32)
        old = _take(self.diffs, rows, b).to(compute)  # (A, p+1, L, D)
        repeat = (points > 0) & ((t - nodes[:, 0]).abs() <= _SAME_TIMESTEP)  # (A,)
        new = [tail.to(compute)]
        for j in range(1, p + 1):
            # New node t: d'_j = (d'_{j-1} - d_{j-1}) / (t - n_{j-1}), defined once the row had j points.
            # Refreshed node n_0: d'_j = d_j + (d'_{j-1} - d_{j-1}) / (n_0 - n_j), defined with j + 1 points.
            valid = torch.where(repeat, points > j, points >= j)  # (A,)
            denom = torch.where(repeat, nodes[:, 0] - nodes[:, j], t - nodes[:, j - 1])
            denom = torch.where(valid, denom, torch.ones_like(denom)).to(compute)[:, None, None]
            base = torch.where(repeat[:, None, None], old[:, j], torch.zeros_like(old[:, j]))
            step = base + (new[j - 1] - old[:, j - 1]) / denom
            new.append(torch.where(valid[:, None, None], step, torch.zeros_like(step)))
        _put(self.diffs, rows, b, torch.stack(new, 1).to(self.diffs.dtype))
        shifted = torch.cat([t[:, None], nodes[:, :-1]], 1)  # (A, p+1) t becomes the newest node
        _put(self.nodes, rows, b, torch.where(repeat[:, None], nodes, shifted))
        _put(self.points, rows, b, torch.where(repeat, points, (points + 1).clamp(max=p + 1)))


class _CallState:
    """One model call's tensors at the decision block, from `exit_mask`/`on_decision` to `on_final`."""

    def __init__(self) -> None:
        self.residual: torch.Tensor | None = None  # (B, L, D) decision block's residual (residual criterion)
        self.exit_hidden: torch.Tensor | None = None  # (B, L, D) h_k, to form the tail residual h_N - h_k


@dataclass
class CachedTailResidual(SerializablePolicy, TrainingFreeCache):
    """Skip the tail of the network per row, adding the row's own cached or forecast tail residual.

    After block `exit_block - 1` (FirstBlockCache: the first block), each row decides whether to skip the rest.
    A skipping row returns `h_k + r` (decoded by the model's own output head), `r` standing for the tail
    residual `h_N - h_k` it skipped, from that row's own full calls (`forecast_order`):

    - 0 (default): its residual from the last call on which it ran fully (FirstBlockCache's reuse);
    - 1 or 2: the polynomial through its residuals at its last 2 or 3 full calls, extrapolated to the row's
      timestep at this call (divided differences over the scheduler's timesteps, which need not be evenly
      spaced: a setting tuned at one step count holds at another). A row with fewer full calls so far
      forecasts at the order its history allows.

    The decision per row:

    - `criterion="residual"` (default): the relative L1 change of the decision block's residual
      `h_k - h_{k-1}` since the row's last full call, `mean|res - res_prev| / mean|res_prev|`, is below
      `threshold` (FirstBlockCache's criterion, per row; FirstBlockCache skips at `<=`, this policy at `<`, so
      `threshold=0` never skips and reproduces the stock model exactly);
    - `criterion="uncertainty"`: the row's mean certainty from `UncertaintyHeads` exceeds
      `certainty_threshold` (needs heads; a trained exit that decodes `h_k` plus the forecast tail);
    - `criterion="timestep"`: the row's timestep is at least `skip_above_t`.

    Whatever the criterion, a row runs fully on its first call, after `max_cached_calls` consecutive skipped
    (reused or forecast) calls, whenever its timestep is below `full_below_t` (the last steps of sampling), and,
    with `full_above_t` set, whenever its timestep is above it (the first, noisiest steps, where the tail changes
    most and a forecast has the least history; TaylorSeer's warm-up steps, in timesteps rather than step indices).

    `join_threshold` (residual criterion; None by default) trades the rows' independence for speed: when the
    tail runs for some row anyway, the rows whose change is at least `join_threshold` (<= `threshold`) run it
    too. On a small model or batch, a block costs nearly as much for a few rows as for all of them, so rows that
    are nearly due refresh together and the tail is skipped on more calls. A row then depends on its batch (as
    with FirstBlockCache), though a row that changes a lot still runs alone.

    The per-row state (`TailCacheState`: `forecast_order + 1` (B, L, D) tensors of divided differences, one
    more for the residual criterion, and a few (B,) ones) is owned by the engine, made anew when the exit
    config changes, emptied by `reset_exit_state` and when the caller starts a new run, and dropped on
    `remove_early_exit`; where the caller declares no run, the cache itself starts a new one for a row whose
    timestep goes up, and for every row when the batch size changes. `state_dtype`
    stores its (B, L, D) tensors in a lower precision ("bfloat16" or "float16": half the bytes; the arithmetic
    stays in the hidden states' precision, at least float32). `exit_state_nbytes(model)` reports its size.
    Transformer backbones only (it needs every row's block input and output); on a U-Net it is refused at
    `apply_early_exit`. Works with any scheduler, including Heun-type ones that call the model twice per step:
    each call is one "call" here, and a full call at the timestep of the row's previous full call refreshes
    that point of its history. One host sync per call (the engine's count of the rows that skip; under
    torch.compile, the graph breaks there whatever the number of blocks).

    ```py
    >>> from ee_diffusion.schedules import CachedTailResidual, policy_from_dict
    >>> policy = CachedTailResidual(threshold=0.1, forecast_order=1, state_dtype="bfloat16")
    >>> policy.to_dict()["forecast_order"], policy_from_dict(policy.to_dict()) == policy
    (1, True)

    ```
    """

    threshold: float = 0.1
    exit_block: int = 1
    criterion: str = "residual"
    certainty_threshold: float = 0.9
    skip_above_t: float = 500.0
    max_cached_calls: int = 3
    full_below_t: float = 0.0
    full_above_t: float | None = None
    join_threshold: float | None = None
    forecast_order: int = 0
    state_dtype: str | None = None

    def __post_init__(self) -> None:
        self.threshold = check_number(self.threshold, "threshold", 0.0)
        check_int(self.exit_block, "exit_block", 1, "blocks run by a skipping row")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        self.certainty_threshold = check_number(self.certainty_threshold, "certainty_threshold", 0.0, 1.0, True)
        self.skip_above_t = check_number(self.skip_above_t, "skip_above_t", 0.0)
        check_int(self.max_cached_calls, "max_cached_calls", 1)
        self.full_below_t = check_number(self.full_below_t, "full_below_t", 0.0)
        if self.full_above_t is not None:
            self.full_above_t = check_number(self.full_above_t, "full_above_t", self.full_below_t)
        if self.join_threshold is not None:
            if self.criterion != "residual":
                raise ValueError(f"join_threshold needs criterion='residual', got criterion={self.criterion!r}")
            self.join_threshold = check_number(self.join_threshold, "join_threshold", 0.0, self.threshold)
        if type(self.forecast_order) is not int or self.forecast_order not in FORECAST_ORDERS:  # not bool, not 1.0
            raise ValueError(f"forecast_order must be one of {FORECAST_ORDERS}, got {self.forecast_order!r}")
        if self.state_dtype is not None and self.state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be None or one of {tuple(STATE_DTYPES)}, got {self.state_dtype!r}")

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
        earliest = self.earliest_exit_block(adapter)
        if self.exit_block < earliest:
            raise ValueError(
                f"{type(adapter.model).__name__}'s blocks {earliest - 1}..{num_blocks - 1} run on the joint [text; "
                f"image] sequence, so the tail residual needs its decision block among them: exit_block must be at "
                f"least {earliest}, got {self.exit_block}"
            )

    @staticmethod
    def earliest_exit_block(adapter: BackboneAdapter) -> int:
        """The smallest `exit_block` the model allows: 1, or on a model with a joint stack (AuraFlow, Chroma) its
        first block + 1 - the tail residual h_N - h_k needs h_k and h_N on one stream."""
        return 1 + next((i for i in range(adapter.num_blocks) if adapter.stack(i).joint), 0)

    # ------------------------------------------------------------------------------------------ engine protocol
    def create_state(self) -> TailCacheState:
        dtype = None if self.state_dtype is None else STATE_DTYPES[self.state_dtype]
        return TailCacheState(self.forecast_order, dtype)

    def create_call_state(self, batch_size: int, device: torch.device) -> _CallState:
        return _CallState()

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
            (_take(cache.points, rows, cache.batch_size) > 0)
            & (_take(cache.cached_calls, rows, cache.batch_size) < self.max_cached_calls)
            & (ctx.timesteps >= self.full_below_t)
        )
        if self.full_above_t is not None:
            allowed = allowed & (ctx.timesteps <= self.full_above_t)
        skips = wants & allowed
        if joins is not None:
            # If any row runs the tail, the rows due soon run with it (a 0-dim `any`: no host sync).
            skips = skips & ~(joins & (~skips).any())
        return skips

    def on_decision(self, ctx: ExitContext, mask: torch.Tensor) -> torch.Tensor | None:
        """After the final decision (CFG pairing applied): update the cache; return what skipping rows park."""
        if ctx.block_index != self.exit_block - 1:
            return None
        cache, call = ctx.state, ctx.call_state
        rows, b = ctx.rows, cache.batch_size
        if cache.head_residual is not None:
            # Rows that run the tail store this call's head residual; skipping rows keep their old ones.
            keep = (~mask)[:, None, None]  # (A, 1, 1)
            stored = torch.where(keep, call.residual, _take(cache.head_residual, rows, b))
            _put(cache.head_residual, rows, b, stored.to(cache.head_residual.dtype))
        call.exit_hidden = ctx.hidden  # (B, L, D) h_k; on_final forms h_N - h_k of the rows that run the tail
        _put(cache.cached_calls, rows, b, torch.where(mask, _take(cache.cached_calls, rows, b) + 1, 0))
        # (A, L, D): h_k + forecast r for every row; the engine parks the skipping rows' entries.
        return ctx.hidden + cache.forecast(rows, ctx.timesteps, ctx.hidden.dtype)

    def on_final(self, ctx: ExitContext) -> None:
        """After the last block: the rows that ran fully add r = h_N - h_k at their timestep to their history."""
        cache, call = ctx.state, ctx.call_state
        if not isinstance(cache, TailCacheState) or cache.batch_size == 0 or call.exit_hidden is None:
            return
        rows = ctx.rows
        cache.record(rows, ctx.timesteps, ctx.hidden - _take(call.exit_hidden, rows, cache.batch_size))

    def _start_call(self, ctx: ExitContext) -> TailCacheState:
        """The run's state, allocated for this batch shape. Where the caller declares no run, a row whose timestep
        went up since its last call starts a new one: its history is forgotten (it runs fully), with no host sync."""
        cache = ctx.state
        if not cache.fits(ctx.batch_size, ctx.hidden):
            cache.allocate(ctx.batch_size, ctx.hidden, head_residual=self.criterion == "residual")
        rows, b = ctx.rows, cache.batch_size
        t = ctx.timesteps.float()  # (A,)
        if cache.infer_runs:  # the caller declares no run (`CacheState.infer_runs`): infer it from the timesteps
            restart = t > _take(cache.last_t, rows, b)  # (A,) bool; never right after `allocate` (last_t = inf)
            _put(cache.points, rows, b, _take(cache.points, rows, b).masked_fill(restart, 0))
            _put(cache.cached_calls, rows, b, _take(cache.cached_calls, rows, b).masked_fill(restart, 0))
        _put(cache.last_t, rows, b, t)
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
            "full_above_t": self.full_above_t,
            "join_threshold": self.join_threshold,
            "forecast_order": self.forecast_order,
            "state_dtype": self.state_dtype,
        }
