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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .._validation import check_int, check_number
from ..families import FAMILIES
from ..policies.base import SerializablePolicy
from .base import CacheState, TrainingFreeCache
from .block_forecast_call import BlockForecastState, ForecastCall
from .newton import SAME_TIMESTEP, distinct_timesteps
from .tail_cache import FORECAST_ORDERS, STATE_DTYPES

if TYPE_CHECKING:
    from ..families.base import BackboneAdapter

__all__ = ["BlockForecast", "BlockForecastState", "distinct_timesteps"]


@dataclass
class BlockForecast(SerializablePolicy, TrainingFreeCache):
    """Per row: compute every block's attention and feed-forward, or forecast their outputs from the row's history.

    A row computes the expensive sub-modules (all rows run every block's cheap parts; on a call where every row
    forecasts, a family's `BlockStack.forecast_step` runs only the parts whose output is used - DiT's and PixArt's
    gates and residual additions, bit for bit the same result) on its first call, on every
    `interval`-th call of its own (its own counter: `interval - 1` forecast calls between two computed ones),
    whenever its timestep is above `full_above_t` (the first, noisiest steps: TaylorSeer's warm-up, in timesteps),
    whenever it is below `full_below_t` (the last steps), and whenever it lies in one of `full_windows` (closed
    timestep intervals `(low, high)`: a placement of the computed calls anywhere in the run, e.g. TaylorSeer's
    cadence or a calibrated one; `for_calls(..., calls=...)` places them). On its other calls every hooked
    sub-module returns, for that row, the polynomial of order `forecast_order` through the row's outputs of that
    sub-module at its last `forecast_order + 1` computed calls, at the row's timestep (divided differences over the
    scheduler's timesteps, which need not be evenly spaced; a row with fewer computed calls forecasts at the order
    its history allows; 0 reuses the last output). Heun-type solvers call the model twice per timestep: a computed
    call at the timestep of the row's newest node (within 1e-3) replaces that point instead of adding one.

    `verify_threshold` adds the per-row change criterion: block 0 computes on every row, and a row not due by the
    rules above computes this call when its forecast of block 0's attention output misses the computed one by more
    than the threshold (mean absolute error relative to the output's mean magnitude); `interval` then bounds the
    calls between two computed ones. Rows that change little keep forecasting while the others compute, which a
    batch-global cadence cannot do. The misses of the last call are `state.last_error` (B,).

    Guidance halves are separate rows, each with its own history; with `EarlyExitConfig(cfg_pairing="together")`
    (default) a row and its partner compute together when either is due. `interval=1` never forecasts and
    reproduces the stock model exactly. `depth` (None: all blocks) composes with trained exits: every row stops
    after block `depth - 1` and is decoded by the model's head (as `StaticDepth`), and the blocks before it
    forecast as above.

    The state (`BlockForecastState`: per row (p + 1) copies of every forecast output, and its formula) is owned by
    the engine, made anew when the exit config changes, emptied by `reset_exit_state` and when the caller starts a
    new run, dropped on `remove_early_exit`, and restarted for a row whose timestep goes up (only where the caller
    declares no run: `CacheState.infer_runs`) and for every row when the batch size,
    an input's shape, dtype or device changes, or a call raised; `exit_state_nbytes(model)` reports its size.
    `state_dtype` stores the histories at lower precision ("bfloat16", "float16"; the arithmetic stays at least
    float32). Transformer backbones only (DiT, PixArt, SD3); U-Nets are refused at `apply_early_exit`. One host
    sync per call (the count of the computing rows, at the start of the call or, with `verify_threshold`, after
    block 0; under torch.compile, one graph break per call).
    """

    interval: int = 3
    forecast_order: int = 1
    full_above_t: float | None = None
    full_below_t: float = 0.0
    depth: int | None = None
    state_dtype: str | None = None
    verify_threshold: float | None = None
    full_windows: tuple[tuple[float, float], ...] = ()
    # full_windows as a (W, 2) tensor per device: built once, not copied to the device on every call.
    _window_bounds: dict = field(default_factory=dict, init=False, repr=False, compare=False)

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
        if self.verify_threshold is not None:
            self.verify_threshold = check_number(self.verify_threshold, "verify_threshold", 0.0, low_open=True)
        if self.state_dtype is not None and self.state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be None or one of {tuple(STATE_DTYPES)}, got {self.state_dtype!r}")
        self.full_windows = _check_windows(self.full_windows)

    def validate_for(self, adapter: BackboneAdapter) -> None:
        if not adapter.sequential or not adapter.forecast_modules(0):
            supported = [cls.__name__ for family in FAMILIES if any(stack.forecastable for stack in family.stacks)
                         for cls in family.model_classes]
            raise ValueError(
                f"BlockForecast forecasts the attention and feed-forward outputs of a transformer's blocks, which "
                f"{type(adapter.model).__name__} does not have (U-Nets are not supported); supported model classes: "
                f"{', '.join(supported)}"
            )
        if self.depth is not None and self.depth > adapter.num_blocks:
            raise ValueError(f"depth must be at most the model's {adapter.num_blocks} blocks, got {self.depth}")

    @classmethod
    def for_calls(cls, timesteps: list[float], first_calls: int = 1, last_call: bool = False,
                  calls: Sequence[int] | None = None, **fields: Any) -> BlockForecast:
        """The policy whose windows compute a sampling run's first `first_calls` timesteps (TaylorSeer's warm-up)
        and, with `last_call`, its last one: `full_above_t` / `full_below_t` midway between neighbouring distinct
        timesteps of `timesteps` (the run's model calls in call order; a Heun repeat is one timestep).

        `calls` (indices into the run's distinct timesteps, 0 first) places every computed call instead: one
        window around each of those timesteps, and an `interval` that never comes due within the run (give
        `interval` to bound the forecast calls between two computed ones too). Index 0 is computed whether listed
        or not: a row's first call has no history to forecast from."""
        distinct = distinct_timesteps(timesteps)
        if calls is not None:
            if first_calls != 1 or last_call:
                raise ValueError(f"give calls or first_calls/last_call, not both; got calls={calls!r}, "
                                 f"first_calls={first_calls!r}, last_call={last_call!r}")
            picked = sorted(set(calls))
            if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(distinct) for c in picked):
                raise ValueError(f"calls must be indices of the run's {len(distinct)} distinct timesteps "
                                 f"(0..{len(distinct) - 1}), got {list(calls)!r}")
            # Window i spans the midpoints to its neighbours (the last one reaches down to 0, or its own timestep).
            edges = [*((a + b) / 2 for a, b in zip(distinct, distinct[1:])), min(0.0, distinct[-1])]
            windows = tuple((edges[i], edges[i - 1]) for i in picked if i > 0)
            fields.setdefault("interval", len(timesteps) + 1)
            return cls(full_windows=windows, **fields)
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

    def needs_block_hooks(self) -> bool:
        return self.depth is not None or self.verify_threshold is not None  # exits, or block 0's check

    def start_forecast(self, state: CacheState | None, timesteps: torch.Tensor, paired: bool,
                       inputs_key: tuple) -> ForecastCall:
        """Decide which of the (B,) rows compute this call; commit the rows' new nodes and counters."""
        if not isinstance(state, BlockForecastState):
            raise ValueError(f"BlockForecast needs its BlockForecastState, got {type(state).__name__}")
        b = timesteps.shape[0]
        if state.open or state.batch_size != b or state.inputs_key != inputs_key:
            state.allocate(b, inputs_key, timesteps.device)
        t = timesteps.float()  # (B,)
        points, since = state.points, state.since
        if state.infer_runs:  # the caller declares no run: a row whose timestep went up starts a new one
            restart = t > state.last_t  # (B,) never right after allocate (last_t = inf)
            points, since = points.masked_fill(restart, 0), since.masked_fill(restart, 0)
        due = (points == 0) | (since >= self.interval - 1) | (t < self.full_below_t)  # (B,) bool
        if self.full_above_t is not None:
            due = due | (t > self.full_above_t)
        if self.full_windows:
            key = (t.device, self.full_windows)
            if key not in self._window_bounds:
                self._window_bounds[key] = torch.tensor(self.full_windows, device=t.device)
            bounds = self._window_bounds[key]  # (W, 2) low, high
            due = due | ((t[:, None] >= bounds[:, 0]) & (t[:, None] <= bounds[:, 1])).any(1)
        repeat = (points > 0) & ((t - state.nodes[:, 0]).abs() <= SAME_TIMESTEP)  # (B,) the newest node again
        call = ForecastCall(state, t, points, since, state.nodes, repeat, due, self.forecast_order, paired,
                            self.verify_threshold)
        if self.verify_threshold is None:  # settled now; with verification, after block 0's first sub-module
            due, general = call.joined(due)
            call.partition(due, int(due.sum() * 2 + general.any()))  # the call's one host sync
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
            "verify_threshold": self.verify_threshold,
            "full_windows": [list(w) for w in self.full_windows],
        }


def _check_windows(windows: Any) -> tuple[tuple[float, float], ...]:
    """`full_windows` as a tuple of (low, high) float pairs, low <= high, or a ValueError naming what was given."""
    message = f"full_windows must be a list of (low, high) timestep pairs with low <= high, got {windows!r}"
    if isinstance(windows, (str, bytes)) or not isinstance(windows, Sequence):
        raise ValueError(message)
    out = []
    for window in windows:
        if isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or len(window) != 2:
            raise ValueError(message)
        try:
            low, high = (check_number(v, "a full_windows bound") for v in window)
        except ValueError:
            raise ValueError(message) from None
        if low > high:
            raise ValueError(message)
        out.append((low, high))
    return tuple(out)
