"""The state and the per-call machinery of `BlockForecast`: per-row histories, and what each hooked sub-module returns.

`BlockForecastState` holds every row's divided differences of every forecast output across the calls of one run;
`ForecastCall` is one model call: the rows that compute are gathered into a smaller batch for each sub-module,
their outputs recorded and scattered back among the other rows' forecasts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .base import CacheState, SubmoduleForecast
from .newton import add_point, add_point_in_place, add_point_simple, evaluate, newton_gaps

#: How a sub-module's output is split into forecast tensors and joined back: (is a tuple, per element: a tensor?).
Layout = tuple[bool, tuple[bool, ...]]
_ONE_TENSOR: Layout = (False, (True,))


def _split(output: Any, rows: int) -> tuple[Layout, list[torch.Tensor | None]] | None:
    """A sub-module's output -> (layout, its tensors or None per element); None if it cannot be forecast (an
    element that is neither None nor a tensor of `rows` rows)."""
    if isinstance(output, torch.Tensor) and output.ndim > 0 and output.shape[0] == rows:
        return _ONE_TENSOR, [output]  # the common case, without building the layout
    is_tuple = isinstance(output, (tuple, list))
    parts = list(output) if is_tuple else [output]
    if not all(p is None or (isinstance(p, torch.Tensor) and p.ndim > 0 and p.shape[0] == rows) for p in parts):
        return None
    return (is_tuple, tuple(p is not None for p in parts)), parts


def _join(layout: Layout, parts: list[torch.Tensor | None]) -> Any:
    return tuple(parts) if layout[0] else parts[0]


class BlockForecastState(CacheState):
    """Per-row histories of `BlockForecast` that live across the model calls of one sampling run.

    B rows (both guidance halves), forecast order p. Every row keeps its last p + 1 computed calls' timesteps,
    `nodes[b, 0]` (the newest) > `nodes[b, 1]` > ..., shared by all its sub-modules, and for each output of each
    hooked sub-module that ran (key (block, sub-module name, output index), e.g. SD3's joint attention has two
    outputs) its divided differences `diffs[key]` (B, p+1, *S), S the output's shape without the batch:

        out_b(t) = diffs[key][b, 0] + (t - nodes[b, 0]) * (diffs[key][b, 1] + (t - nodes[b, 1]) * diffs[key][b, 2])

    Size (`nbytes`), with V the number of elements per row of all forecast outputs together and s the bytes per
    element of `dtype` (or of the outputs when None): B * ((p + 1) * V * s + 4 * (p + 2) + 16) bytes, plus 4 B for
    the last misses with `verify_threshold`. V is, for k blocks run (all N, or `depth`), L image tokens, L_t text
    tokens and width D: DiT 2 k L D (attn1, ff); PixArt 3 k L D (attn1, attn2, ff); SD3 k (2 L + 2 L_t) D - L_t D
    when the last block runs (its `context_pre_only` block has no ff_context), plus k L D with SD3.5's dual
    attention.

    ```py
    >>> import torch
    >>> from ee_diffusion.schedules import BlockForecastState
    >>> BlockForecastState.bound(batch=4, values_per_row=2 * 6 * 16 * 32, order=1, element_bytes=2)
    98416

    ```
    """

    @staticmethod
    def bound(batch: int, values_per_row: int, order: int, element_bytes: int) -> int:
        """The size formula above, without allocating anything (e.g. for a model too large to run here)."""
        return batch * ((order + 1) * values_per_row * element_bytes + 4 * (order + 2) + 16)

    def __init__(self, order: int = 1, dtype: torch.dtype | None = None) -> None:
        self.order = order
        self.dtype = dtype  # storage dtype of the forecast histories; None: the outputs' own
        self.reset()

    def reset(self) -> None:
        self.batch_size = 0
        self.inputs_key: tuple | None = None  # the input shapes, dtypes and device the histories belong to
        self.open = False  # True while a call runs; still True at the next call if that call raised
        self.last_t: torch.Tensor | None = None  # (B,) float32 timestep of the row's last call
        self.points: torch.Tensor | None = None  # (B,) long computed calls in the row's history, 0..p+1
        self.since: torch.Tensor | None = None  # (B,) long forecast calls since the row last computed
        self.nodes: torch.Tensor | None = None  # (B, p+1) float32 timesteps of those computed calls, newest first
        self.diffs: dict[tuple[int, str, int], torch.Tensor] = {}  # (block, name, output) -> (B, p+1, *S)
        self.dtypes: dict[tuple[int, str, int], torch.dtype] = {}  # the dtype each output is returned in
        self.levels: dict[tuple[int, str, int], tuple[torch.Tensor, ...]] = {}  # diffs[key].unbind(1): (B, *S) views
        self.layouts: dict[tuple[int, str], Layout | None] = {}  # None: an output that cannot be forecast
        self.rows_computed = 0  # (row, call) pairs that computed the sub-modules, since the last reset
        self.rows_called = 0  # (row, call) pairs in all
        self.last_error: torch.Tensor | None = None  # (B,) the rows' last verified miss (`verify_threshold`)

    def allocate(self, batch_size: int, inputs_key: tuple, device: torch.device) -> None:
        """Start a new run for `batch_size` rows whose inputs look like `inputs_key`."""
        self.reset()
        p = self.order
        self.batch_size, self.inputs_key = batch_size, inputs_key
        self.last_t = torch.full((batch_size,), float("inf"), device=device)
        self.points = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.since = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.nodes = torch.zeros(batch_size, p + 1, device=device)

    def nbytes(self) -> int:
        return super().nbytes() + sum(t.numel() * t.element_size() for t in self.diffs.values())

    @property
    def compute_fraction(self) -> float:
        """Share of the (row, call) pairs since the last reset that computed the expensive sub-modules."""
        return self.rows_computed / self.rows_called if self.rows_called else 0.0


class ForecastCall(SubmoduleForecast):
    """One model call: which rows compute, and what every hooked sub-module returns (the engine's forecaster).

    `due` (B,) bool: the rows whose cadence or window computes them. With `verify` (a threshold), block 0 runs on
    every row (`_hold`), and a row not yet due computes this call when its forecast of block 0's attention output
    misses the computed one by more than `verify` (mean absolute error relative to the output's mean magnitude,
    the worst of the output's tensors): the per-row change criterion. Which rows compute is settled once per call
    (`partition`, after the call's one host sync): at the start, or after block 0 (`settle`, from the block hook).
    """

    def __init__(self, state: BlockForecastState, t: torch.Tensor, points: torch.Tensor, since: torch.Tensor,
                 nodes: torch.Tensor, repeat: torch.Tensor, due: torch.Tensor, order: int, paired: bool,
                 verify: float | None = None) -> None:
        self.state, self.broken, self.order, self.paired, self.verify = state, False, order, paired, verify
        # The rows' history before this call: (B,) timestep, points, forecast calls since the last computed one,
        # repeat (the newest node again); (B, p+1) nodes.
        self.t, self.points, self.since, self.nodes, self.repeat, self.due = t, points, since, nodes, repeat, due
        self.count = 0
        self._columns: dict[tuple, list[torch.Tensor]] = {}  # the gaps per level, shaped for an output's ndim
        self.pending = verify is not None  # True until block 0 has run (`settle`)
        self.held: list[tuple] = []  # block 0's (slot, output, `_split` of it) while pending
        self.computing: torch.Tensor | None = None  # (B,) bool once settled: the rows that compute

    def joined(self, due: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(`due` with guidance partners joined, (B,) the computing rows that take the general update: a repeat, or
        fewer than p points before this one). Their count * 2 + any(general) is the call's one host sync (under
        torch.compile: its one graph break), taken by the caller's own frame (`int(...)`)."""
        b = self.state.batch_size
        if self.paired:  # a row and its guidance partner compute together
            either = due[: b // 2] | due[b // 2:]
            due = torch.cat([either, either])
        return due, due & (self.repeat | (self.points < self.order))

    def partition(self, due: torch.Tensor, code: int) -> None:
        """Settle the computing rows (`due`, (B,) bool, joined, and its sync code), and commit the rows' new nodes
        and counters."""
        state, b, p = self.state, self.state.batch_size, self.order
        t, points, nodes, repeat = self.t, self.points, self.nodes, self.repeat
        count = self.count = code // 2
        self.computing = due  # (B,) bool, for the exit statistics (`computed_rows`)
        # `simple`: every computing row adds a new node and has every level defined (no Heun repeat, not in the
        # first p calls of its run), so a level is one subtraction and one division (`add_point_simple`).
        self.simple, self.pending = code % 2 == 0, False
        if 0 < count < b:  # a stable sort puts the computing rows first and the forecast ones last, each ascending
            order = torch.argsort((~due).to(torch.uint8), stable=True)
            self.run_rows, self.skip_rows = order[:count], order[count:]  # (R,), (S,) batch positions
            run, skip = (lambda v: v.index_select(0, self.run_rows)), (lambda v: v.index_select(0, self.skip_rows))
        else:  # all rows compute, or none: no gathering (batch 1 is bound by the count of tensor operations)
            self.run_rows = self.skip_rows = None
            run = skip = (lambda v: v)
        # What every recorded output of this call shares: the computing rows' gaps per Newton level (R, p) and the
        # forecast rows' (S, p+1), computed once per call instead of once per sub-module.
        if count:
            self.run_points, self.run_repeat = run(points), run(repeat)
            self.run_gaps = newton_gaps(run(nodes), self.run_points, run(t), self.run_repeat)
        if count < b:
            self.skip_gaps = skip(t)[:, None] - skip(nodes)
        # The state's tensors are replaced, not written: this call keeps the old ones.
        if count == 0:  # every row forecasts: only the counters move
            state.since = self.since + 1
            return
        shifted = torch.cat([t[:, None], nodes[:, :-1]], 1)  # (B, p+1) the nodes after adding t
        if count == b and self.simple:  # every row adds a new node
            state.points, state.nodes, state.since = (points + 1).clamp(max=p + 1), shifted, torch.zeros_like(points)
            return
        new_node = due & ~repeat
        state.points = torch.where(new_node, (points + 1).clamp(max=p + 1), points)
        state.nodes = torch.where(new_node[:, None], shifted, nodes)
        state.since = torch.where(due, torch.zeros_like(self.since), self.since + 1)

    def _hold(self, slot: tuple[int, str], forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        """A sub-module of block 0 while the call is pending: computed on every row and held until `settle`; the
        first one (block 0's attention) is the check: a row not yet due whose forecast of it misses by more than
        `verify` becomes due."""
        state, b = self.state, self.state.batch_size
        output = forward(*args, **kwargs)
        split = _split(output, b)
        layout = state.layouts.get(slot)
        if not self.held and split is not None and layout is not None and split[0] == layout:
            error = torch.zeros(b, device=self.due.device)
            for i, part in enumerate(split[1]):
                if part is None:
                    continue
                compute = torch.promote_types(part.dtype, torch.float32)
                view = (-1,) + (1,) * (part.ndim - 1)
                columns = [g.view(view) for g in (self.t[:, None] - self.nodes).to(compute).unbind(1)]
                actual = part.detach().to(compute).flatten(1)  # (B, V)
                miss = evaluate(state.levels[(*slot, i)], columns, compute).flatten(1) - actual
                error = torch.maximum(error, miss.abs().mean(1) / actual.abs().mean(1).clamp_min(1e-12))
            state.last_error = error  # (B,) for inspection: each row's relative miss at this call
            self.due = self.due | (error > self.verify)
        self.held.append((slot, output, split))
        return output

    def settle(self) -> None:
        """After block 0 of a pending call: settle the computing rows (the call's one host sync, in the block hook's
        frame as the tail cache's decision) and record the held outputs of the rows that compute."""
        due, general = self.joined(self.due)
        self.partition(due, int(due.sum() * 2 + general.any()))
        state, b = self.state, self.state.batch_size
        for slot, output, split in self.held:
            kind = None if split is None else split[0]
            if slot in state.layouts and state.layouts[slot] != kind:
                self.broken = True  # its output changed kind: the histories of it cannot be trusted
            elif self.count == b:
                self._record(slot, output)
            elif self.count > 0 and slot not in state.layouts:
                self.broken = True  # never computed before: the other rows' histories of it are missing
            elif self.count > 0 and split is not None:
                self._record(slot, _join(split[0], [None if v is None else v.index_select(0, self.run_rows)
                                                    for v in split[1]]))
        self.held = []

    def columns(self, which: str, ndim: int, dtype: torch.dtype) -> list[torch.Tensor]:
        """The "run" (R, p) or "skip" (S, p+1) gaps as one (rows, 1, ...) tensor per level, broadcasting against
        outputs of `ndim` dims, in `dtype`; made once per call for each shape."""
        key = (which, ndim, dtype)
        if key not in self._columns:
            gaps = (self.run_gaps if which == "run" else self.skip_gaps).to(dtype)
            view = (-1,) + (1,) * (ndim - 1)
            self._columns[key] = [g.view(view) for g in gaps.unbind(1)]
        return self._columns[key]

    def run(self, block: int, name: str, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What sub-module `name` of block `block` returns: its output on the computing rows, forecasts elsewhere."""
        b, slot = self.state.batch_size, (block, name)
        first = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(first, torch.Tensor) or first.shape[0] != b:
            self.broken = True  # a call this forecaster cannot follow: compute it exactly, start afresh next call
            return forward(*args, **kwargs)
        if self.pending:
            if block == 0:
                return self._hold(slot, forward, args, kwargs)
            self.settle()  # a backbone whose block hook did not settle it (not expected): settle here
        if self.count == b:  # every row computes: the stock call, recorded
            output = forward(*args, **kwargs)
            self._record(slot, output)
            return output
        if slot not in self.state.layouts:  # never computed: cannot forecast it (nor trust the history)
            self.broken = True
            return forward(*args, **kwargs)
        layout = self.state.layouts[slot]
        if layout is None:  # an output this policy cannot forecast: every row computes it
            return forward(*args, **kwargs)
        forecasts = [self._forecast((*slot, i)) if present else None for i, present in enumerate(layout[1])]
        if self.count == 0:
            return _join(layout, forecasts)
        computed = self._record(slot, forward(*self._gather(args), **self._gather(kwargs)))
        if computed is None or computed[0] != layout:  # its output changed kind: compute it exactly
            self.broken = True
            return forward(*args, **kwargs)
        merged = []
        for part, forecast in zip(computed[1], forecasts):
            if part is not None:
                whole = part.new_empty((b, *part.shape[1:]))  # (B, *S): computed rows and forecast rows
                whole.index_copy_(0, self.run_rows, part)
                whole.index_copy_(0, self.skip_rows, forecast.to(part.dtype))
                part = whole
            merged.append(part)
        return _join(layout, merged)

    def forecasts(self, block_index: int, names: list[str]) -> dict[str, torch.Tensor] | None:
        """Every row forecasts (settled, nothing broken): each sub-module's forecast, if all are single tensors that
        were recorded; else None."""
        if self.pending or self.broken or self.count != 0:
            return None
        layouts = self.state.layouts
        if any(layouts.get((block_index, name)) != _ONE_TENSOR for name in names):
            return None
        return {name: self._forecast((block_index, name, 0)) for name in names}

    def finish(self) -> None:
        """The call completed: its history is whole (unless it could not be followed)."""
        state = self.state
        state.open = self.broken or self.pending  # pending: no sub-module ran, nothing was committed
        state.rows_computed += self.count
        state.rows_called += state.batch_size

    def computed_rows(self) -> torch.Tensor | None:
        """(B,) bool, the rows that computed; None (every row) for a call this forecaster could not follow, whose
        later sub-modules every row computed, or one that never settled (no sub-module ran)."""
        return None if self.broken or self.pending else self.computing

    def _gather(self, values: tuple | dict) -> tuple | dict:
        """The inputs' batch-dimension tensors (B, ...) gathered to the computing rows (R, ...)."""
        b, run = self.state.batch_size, self.run_rows

        def pick(v: Any) -> Any:
            if isinstance(v, tuple):  # a per-row rotary table's (cos, sin)
                return tuple(map(pick, v))
            return v.index_select(0, run) if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == b else v

        return {k: pick(v) for k, v in values.items()} if isinstance(values, dict) else tuple(map(pick, values))

    def _record(self, slot: tuple[int, str], output: Any) -> tuple[Layout, list] | None:
        """Add the computing rows' (R, *S) outputs at their timesteps to their histories; returns `_split`."""
        state = self.state
        split = _split(output, self.count)
        state.layouts[slot] = None if split is None else split[0]
        if split is None:
            return None
        for i, part in enumerate(split[1]):
            if part is None:
                continue
            key = (*slot, i)
            history = state.diffs.get(key)
            if history is None or history.shape[2:] != part.shape[1:]:
                self.broken = self.broken or history is not None  # other rows' histories of it are gone
                history = part.new_zeros((state.batch_size, state.order + 1, *part.shape[1:]),
                                         dtype=state.dtype or part.dtype)
                state.diffs[key], state.dtypes[key], state.levels[key] = history, part.dtype, history.unbind(1)
            compute = torch.promote_types(part.dtype, torch.float32)
            full = self.count == state.batch_size
            value = part.detach() if part.dtype == compute else part.detach().to(compute)
            if full and self.simple and history.dtype == compute:
                add_point_in_place(state.levels[key], value, self.columns("run", value.ndim, compute))
                continue
            old = (history if full else history.index_select(0, self.run_rows)).to(compute)  # (R, p+1, *S)
            if self.simple:
                new = add_point_simple(old, value, self.columns("run", value.ndim, compute))
            else:
                new = add_point(old, value, self.run_gaps, self.run_points, self.run_repeat)
            new = new.to(history.dtype)
            if full:
                history.copy_(new)
            else:
                history.index_copy_(0, self.run_rows, new)
        return split

    def _forecast(self, key: tuple[int, str, int]) -> torch.Tensor:
        """(S, *S) the forecast rows' polynomial for output `key` at their timesteps."""
        dtype = self.state.dtypes[key]
        levels = self.state.levels[key] if self.count == 0 else self.state.diffs[key].index_select(0, self.skip_rows).unbind(1)
        return evaluate(levels, self.columns("skip", levels[0].ndim, torch.promote_types(dtype, torch.float32)), dtype)
