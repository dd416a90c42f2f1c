"""Per-row, per-block forecasts for pretrained models: a row forecasts its blocks' attention and feed-forward outputs.

`BlockForecast` has TaylorSeer's structure (diffusers' `TaylorSeerCache`: forecast the outputs of every block's
attention and feed-forward, recompute the rest) with per-row decisions and per-row histories. At each model call
every row either *computes* the expensive sub-modules of every block (the backbone adapter's `forecast_modules`:
attention, feed-forward) or *forecasts* their outputs: the polynomial (order 0-2) in the row's own timestep
through the outputs of its last computed calls. The cheap parts of each block - norms, adaLN modulation from the
current timestep, gates, residual additions - run for every row on its current hidden states, so a forecast row
still gets its own input and timestep around each forecast. For each sub-module, the rows that compute are gathered
into a smaller batch, and their outputs are scattered back among the forecasts.

```py
>>> import torch
>>> from ee_diffusion import EarlyExitConfig, apply_early_exit, remove_early_exit
>>> from ee_diffusion.schedules import BlockForecast, policy_from_dict
>>> from ee_diffusion.testing import tiny_dit
>>> model = tiny_dit(num_layers=2)
>>> seen = []  # how many rows each block's self-attention really computes
>>> for block in model.transformer_blocks:
...     _ = block.attn1.to_q.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
>>> policy = BlockForecast(interval=2, forecast_order=1, full_above_t=820)
>>> apply_early_exit(model, EarlyExitConfig(policy=policy))
>>> x, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 5])
>>> for t in ([900, 900], [800, 850], [700, 800]):  # call 2: row 1 is above 820; call 3: row 0 is due
...     _ = model(x, timestep=torch.tensor(t), class_labels=y)
>>> seen  # two blocks per call: both rows, then one row each call
[2, 2, 1, 1, 1, 1]
>>> remove_early_exit(model)
>>> policy_from_dict(policy.to_dict()) == policy
True

```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .._validation import check_int, check_number
from .base import PolicyState, SerializablePolicy
from .tail_cache import FORECAST_ORDERS, STATE_DTYPES

if TYPE_CHECKING:
    from ..backbones.base import BackboneAdapter

#: Timesteps closer than this (training units) are one node of a row's history (Heun-type solvers call the model
#: twice at one timestep; a divided difference cannot divide by their gap).
_SAME_TIMESTEP = 1e-3
#: How a sub-module's output is split into forecast tensors and joined back: (is a tuple, per element: a tensor?).
Layout = tuple[bool, tuple[bool, ...]]
_ONE_TENSOR: Layout = (False, (True,))


def _newton_gaps(nodes: torch.Tensor, points: torch.Tensor, t: torch.Tensor, repeat: torch.Tensor) -> torch.Tensor:
    """(R, p) the divisor of each Newton level j = 1..p when the rows add the point at `t` (R,) to their nodes
    (R, p+1), newest first, holding `points` (R,) points; `repeat` (R,) bool: `t` is the row's newest node again.
    A level a row has too few points for gets 1 (its difference is zeroed in `_add_point`, never divided by 0)."""
    p = nodes.shape[1] - 1
    j = torch.arange(1, p + 1, device=nodes.device)  # (p,)
    # New node t: d'_j = (d'_{j-1} - d_{j-1}) / (t - n_{j-1}); the newest node again: (...) / (n_0 - n_j).
    gap = torch.where(repeat[:, None], nodes[:, :1] - nodes[:, 1:], t[:, None] - nodes[:, :-1])
    defined = torch.where(repeat[:, None], points[:, None] > j, points[:, None] >= j)  # (R, p)
    return torch.where(defined, gap, torch.ones_like(gap))


def _add_point(old: torch.Tensor, value: torch.Tensor, gaps: torch.Tensor, points: torch.Tensor,
               repeat: torch.Tensor) -> torch.Tensor:
    """The rows' Newton form after one more point: `value` (R, *S).

    `old` (R, p+1, *S): divided differences over the rows' `points` (R,) newest nodes, newest first; `gaps` (R, p)
    from `_newton_gaps`. `repeat` (R,) bool: the point is at the row's newest node again, whose value is replaced
    (never divided by). A difference the row has too few points for is 0, so it forecasts at the order its
    history allows.
    """
    view = (-1,) + (1,) * (value.ndim - 1)
    new = [value]
    for j in range(1, old.shape[1]):
        defined = torch.where(repeat, points > j, points >= j).view(view)  # (R, 1, ...)
        # The newest node again: d'_j = d_j + (d'_{j-1} - d_{j-1}) / gap; a new node: the same without d_j.
        kept = torch.where(repeat.view(view), old[:, j], torch.zeros_like(old[:, j]))
        step = kept + (new[-1] - old[:, j - 1]) / gaps[:, j - 1].to(value.dtype).view(view)
        new.append(torch.where(defined, step, torch.zeros_like(step)))
    return torch.stack(new, 1)


def _add_point_in_place(levels: tuple[torch.Tensor, ...], value: torch.Tensor, columns: list[torch.Tensor]) -> None:
    """`_add_point` for a call where every row computes, adds a new node and has every level defined, written into
    the history itself: `levels` its p+1 (B, *S) views (`BlockForecastState.levels`), value (B, *S) of their dtype;
    d'_j = (d'_{j-1} - d_{j-1}) / gap_j, `columns` the gaps per level, each (B, 1, ...). Fewer tensor operations
    than building a new history: batch 1 is bound by them, not by arithmetic."""
    new, prev = [], value
    for j in range(1, len(levels)):
        prev = torch.sub(prev, levels[j - 1]).div_(columns[j - 1])
        new.append(prev)
    levels[0].copy_(value)
    for level, level_value in zip(levels[1:], new):
        level.copy_(level_value)


def _add_point_simple(old: torch.Tensor, value: torch.Tensor, columns: list[torch.Tensor]) -> torch.Tensor:
    """`_add_point` when every row adds a new node and has every level defined (`columns`: each level's gaps,
    (R, 1, ...) in the value's dtype)."""
    new = [value]
    for j in range(1, old.shape[1]):
        new.append((new[-1] - old[:, j - 1]).div_(columns[j - 1]))
    return torch.stack(new, 1)


def _evaluate(levels: tuple[torch.Tensor, ...], columns: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The p+1 (R, *S) divided differences `levels` -> (R, *S) their polynomial at the rows' timesteps, in `dtype`;
    `columns`: each timestep minus the row's node j, (R, 1, ...) in the arithmetic's dtype, for j = 0..p."""
    order = len(levels) - 1
    if order == 0:
        return levels[0].to(dtype)  # the last computed output itself: no arithmetic
    compute = torch.promote_types(dtype, torch.float32)
    out = levels[order].to(compute)
    for j in range(order - 1, -1, -1):  # Horner: d_0 + (t - n_0) * (d_1 + (t - n_1) * d_2)
        out = torch.addcmul(levels[j].to(compute), columns[j], out)
    return out.to(dtype)


def distinct_timesteps(timesteps: list[float]) -> list[float]:
    """A run's call timesteps without the repeats of Heun-type solvers (two calls at one timestep)."""
    return [float(t) for i, t in enumerate(timesteps) if i == 0 or abs(t - timesteps[i - 1]) > _SAME_TIMESTEP]


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


class BlockForecastState(PolicyState):
    """Per-row histories of `BlockForecast` that live across the model calls of one sampling run.

    B rows (both guidance halves), forecast order p. Every row keeps its last p + 1 computed calls' timesteps,
    `nodes[b, 0]` (the newest) > `nodes[b, 1]` > ..., shared by all its sub-modules, and for each output of each
    hooked sub-module that ran (key (block, sub-module name, output index), e.g. SD3's joint attention has two
    outputs) its divided differences `diffs[key]` (B, p+1, *S), S the output's shape without the batch:

        out_b(t) = diffs[key][b, 0] + (t - nodes[b, 0]) * (diffs[key][b, 1] + (t - nodes[b, 1]) * diffs[key][b, 2])

    Size (`nbytes`), with V the number of elements per row of all forecast outputs together and s the bytes per
    element of `dtype` (or of the outputs when None): B * ((p + 1) * V * s + 4 * (p + 2) + 16) bytes. V is, for k
    blocks run (all N, or `depth`), L image tokens, L_t text tokens and width D: DiT 2 k L D (attn1, ff);
    PixArt 3 k L D (attn1, attn2, ff); SD3 k (2 L + 2 L_t) D - L_t D when the last block runs (its
    `context_pre_only` block has no ff_context), plus k L D with SD3.5's dual attention.

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


class _ForecastCall:
    """One model call: which rows compute, and what every hooked sub-module returns (the engine's forecaster)."""

    def __init__(self, state: BlockForecastState, due: torch.Tensor, count: int, simple: bool, t: torch.Tensor,
                 points: torch.Tensor, nodes: torch.Tensor, repeat: torch.Tensor) -> None:
        b = state.batch_size
        self.state, self.count, self.broken = state, count, False
        # A stable sort puts the computing rows first and the forecast ones last, each ascending: (B,).
        order = torch.argsort((~due).to(torch.uint8), stable=True)
        self.run_rows, self.skip_rows = order[:count], order[count:]  # (R,), (S,) batch positions
        pick = (lambda v: v) if count == b else (lambda v: v.index_select(0, self.run_rows))
        # The computing rows' history before this call: (R,) timesteps, points, repeats; (R, p+1) nodes.
        self.run_t, self.run_points, self.run_nodes, self.run_repeat = pick(t), pick(points), pick(nodes), pick(repeat)
        pick = (lambda v: v) if count == 0 else (lambda v: v.index_select(0, self.skip_rows))
        self.skip_t, self.skip_nodes = pick(t), pick(nodes)  # (S,), (S, p+1)
        # What every recorded output of this call shares: the computing rows' gaps per Newton level (R, p) and the
        # forecast rows' (S, p+1), computed once per call instead of once per sub-module.
        self.run_gaps = _newton_gaps(self.run_nodes, self.run_points, self.run_t, self.run_repeat)
        self.skip_gaps = self.skip_t[:, None] - self.skip_nodes
        # `simple`: every computing row adds a new node and has every level defined (no Heun repeat, not in the
        # first p calls of its run), so a level is one subtraction and one division (`_add_point_simple`).
        self.simple = simple
        self._columns: dict[tuple, list[torch.Tensor]] = {}  # the gaps per level, shaped for an output's ndim

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

    def finish(self) -> None:
        """The call completed: its history is whole (unless it could not be followed)."""
        state = self.state
        state.open = self.broken
        state.rows_computed += self.count
        state.rows_called += state.batch_size

    def _gather(self, values: tuple | dict) -> tuple | dict:
        """The inputs' batch-dimension tensors (B, ...) gathered to the computing rows (R, ...)."""
        b, run = self.state.batch_size, self.run_rows

        def pick(v: Any) -> Any:
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
                _add_point_in_place(state.levels[key], value, self.columns("run", value.ndim, compute))
                continue
            old = (history if full else history.index_select(0, self.run_rows)).to(compute)  # (R, p+1, *S)
            if self.simple:
                new = _add_point_simple(old, value, self.columns("run", value.ndim, compute))
            else:
                new = _add_point(old, value, self.run_gaps, self.run_points, self.run_repeat)
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
        return _evaluate(levels, self.columns("skip", levels[0].ndim, torch.promote_types(dtype, torch.float32)), dtype)


@dataclass
class BlockForecast(SerializablePolicy):
    """Per row: compute every block's attention and feed-forward, or forecast their outputs from the row's history.

    A row computes the expensive sub-modules (all rows run every block's cheap parts) on its first call, on every
    `interval`-th call of its own (its own counter: `interval - 1` forecast calls between two computed ones),
    whenever its timestep is above `full_above_t` (the first, noisiest steps: TaylorSeer's warm-up, in timesteps)
    and whenever it is below `full_below_t` (the last steps). On its other calls every hooked sub-module returns,
    for that row, the polynomial of order `forecast_order` through the row's outputs of that sub-module at its
    last `forecast_order + 1` computed calls, at the row's timestep (divided differences over the scheduler's
    timesteps, which need not be evenly spaced; a row with fewer computed calls forecasts at the order its
    history allows; 0 reuses the last output). Heun-type solvers call the model twice per timestep: a computed
    call at the timestep of the row's newest node (within 1e-3) replaces that point instead of adding one.

    Guidance halves are separate rows, each with its own history; with `EarlyExitConfig(cfg_pairing="together")`
    (default) a row and its partner compute together when either is due. `interval=1` never forecasts and
    reproduces the stock model exactly. `depth` (None: all blocks) composes with trained exits: every row stops
    after block `depth - 1` and is decoded by the model's head (as `StaticDepth`), and the blocks before it
    forecast as above.

    The state (`BlockForecastState`: per row (p + 1) copies of every forecast output, and its formula) is owned by
    the engine, made anew when the exit config changes, emptied by `reset_exit_state`, dropped on
    `remove_early_exit`, and restarted for a row whose timestep goes up and for every row when the batch size,
    an input's shape, dtype or device changes, or a call raised; `exit_state_nbytes(model)` reports its size.
    `state_dtype` stores the histories at lower precision ("bfloat16", "float16"; the arithmetic stays at least
    float32). Transformer backbones only (DiT, PixArt, SD3); U-Nets are refused at `apply_early_exit`. One host
    sync per call (the count of the computing rows; under torch.compile, one graph break per call).
    """

    interval: int = 3
    forecast_order: int = 1
    full_above_t: float | None = None
    full_below_t: float = 0.0
    depth: int | None = None
    state_dtype: str | None = None

    forecasts_submodules = True

    def __post_init__(self) -> None:
        check_int(self.interval, "interval", 1, "a row computes every interval-th call; 1 never forecasts")
        if type(self.forecast_order) is not int or self.forecast_order not in FORECAST_ORDERS:  # not bool, not 1.0
            raise ValueError(f"forecast_order must be one of {FORECAST_ORDERS}, got {self.forecast_order!r}")
        self.full_below_t = check_number(self.full_below_t, "full_below_t", 0.0)
        if self.full_above_t is not None:
            self.full_above_t = check_number(self.full_above_t, "full_above_t", self.full_below_t)
        if self.depth is not None:
            check_int(self.depth, "depth", 1, "blocks every row runs; None: all")
        if self.state_dtype is not None and self.state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be None or one of {tuple(STATE_DTYPES)}, got {self.state_dtype!r}")

    def validate_for(self, adapter: BackboneAdapter) -> None:
        if not adapter.sequential or not adapter.forecast_modules(adapter.blocks[0]):
            from ..backbones.registry import ADAPTERS

            supported = [cls.__name__ for a in ADAPTERS if a.sequential and a.forecast_submodules
                         for cls in a.model_classes]
            raise ValueError(
                f"BlockForecast forecasts the attention and feed-forward outputs of a transformer's blocks, which "
                f"{type(adapter.model).__name__} does not have (U-Nets are not supported); supported model classes: "
                f"{', '.join(supported)}"
            )
        if self.depth is not None and self.depth > adapter.num_blocks:
            raise ValueError(f"depth must be at most the model's {adapter.num_blocks} blocks, got {self.depth}")

    @classmethod
    def for_calls(cls, timesteps: list[float], first_calls: int = 1, last_call: bool = False,
                  **fields: Any) -> BlockForecast:
        """The policy whose windows compute a sampling run's first `first_calls` timesteps (TaylorSeer's warm-up)
        and, with `last_call`, its last one: `full_above_t` / `full_below_t` midway between neighbouring distinct
        timesteps of `timesteps` (the run's model calls in call order; a Heun repeat is one timestep)."""
        distinct = distinct_timesteps(timesteps)
        check_int(first_calls, "first_calls", 1, f"timesteps computed first; below the run's {len(distinct)}")
        if first_calls >= len(distinct):
            raise ValueError(f"first_calls must be below the run's {len(distinct)} distinct timesteps, got {first_calls}")
        above = None if first_calls == 1 else (distinct[first_calls - 1] + distinct[first_calls]) / 2
        below = (distinct[-2] + distinct[-1]) / 2 if last_call else 0.0
        return cls(full_above_t=above, full_below_t=below, **fields)

    # ------------------------------------------------------------------------------------------ engine protocol
    def create_state(self) -> BlockForecastState:
        dtype = None if self.state_dtype is None else STATE_DTYPES[self.state_dtype]
        return BlockForecastState(self.forecast_order, dtype)

    def plan_depths(self, timesteps: torch.Tensor, num_blocks: int) -> torch.Tensor | None:
        if self.depth is None:
            return None  # no exits: the engine never asks for a decision (`decides_after`)
        return torch.full(timesteps.shape, min(self.depth, num_blocks), dtype=torch.long, device=timesteps.device)

    def depth_range(self, num_blocks: int) -> tuple[int, int] | None:
        return None if self.depth is None else (min(self.depth, num_blocks),) * 2

    def decides_after(self, block_index: int, num_blocks: int) -> bool:
        return False

    def start_forecast(self, state: PolicyState | None, timesteps: torch.Tensor, paired: bool,
                       inputs_key: tuple) -> _ForecastCall:
        """Decide which of the (B,) rows compute this call; commit the rows' new nodes and counters."""
        if not isinstance(state, BlockForecastState):
            raise ValueError(f"BlockForecast needs its BlockForecastState, got {type(state).__name__}")
        b = timesteps.shape[0]
        if state.open or state.batch_size != b or state.inputs_key != inputs_key:
            state.allocate(b, inputs_key, timesteps.device)
        t = timesteps.float()  # (B,)
        restart = t > state.last_t  # (B,) a row whose timestep went up starts a new run; never after allocate
        points = state.points.masked_fill(restart, 0)
        since = state.since.masked_fill(restart, 0)
        due = (points == 0) | (since >= self.interval - 1) | (t < self.full_below_t)  # (B,) bool
        if self.full_above_t is not None:
            due = due | (t > self.full_above_t)
        if paired:
            half = b // 2
            either = due[:half] | due[half:]
            due = torch.cat([either, either])
        nodes = state.nodes  # (B, p+1); replaced below, not written in place: the forecaster keeps this one
        repeat = (points > 0) & ((t - nodes[:, 0]).abs() <= _SAME_TIMESTEP)  # (B,) the newest node again
        # Rows that compute and would take the general update: a repeat, or fewer than p points before this one.
        general = due & (repeat | (points < self.forecast_order))
        # The call's one host sync (under torch.compile: its one graph break): the count and the fast-path flag.
        code = int(due.sum() * 2 + general.any())  # count * 2 + (any row takes the general update)
        call = _ForecastCall(state, due, code // 2, code % 2 == 0, t, points, nodes, repeat)
        new_node = due & ~repeat
        state.points = torch.where(new_node, (points + 1).clamp(max=self.forecast_order + 1), points)
        state.nodes = torch.where(new_node[:, None], torch.cat([t[:, None], nodes[:, :-1]], 1), nodes)
        state.since = torch.where(due, torch.zeros_like(since), since + 1)
        state.last_t, state.open = t, True
        return call

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "BlockForecast",
            "interval": self.interval,
            "forecast_order": self.forecast_order,
            "full_above_t": self.full_above_t,
            "full_below_t": self.full_below_t,
            "depth": self.depth,
            "state_dtype": self.state_dtype,
        }
