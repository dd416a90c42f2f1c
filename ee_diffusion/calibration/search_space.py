"""What the operating-point search tries: `SearchSpace`, every solver x steps alone and with each exit config.

Most exit configs are the same at every step count (`exit_configs`); a `BlockForecast` window is placed among the
timesteps of the solver at that step count (`step_configs`), so its candidates are made per (solver, steps).

```py
>>> from ee_diffusion.calibration import SearchSpace
>>> space = SearchSpace(steps=(10,), static_fractions=(0.5,), ase=(), block_forecast_intervals=(2,),
...                     block_forecast_windows=((2, True),))
>>> [name for name, _, _ in space.exit_configs(28)]
['static14']
>>> [(name, config.policy.interval) for name, _, config in space.step_configs(list(range(950, 0, -100)))]
[('bf2_o1_w2_l', 2)]

```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._validation import check_int, check_number
from ..config import EarlyExitConfig
from ..eval.solvers import SEARCH_SOLVERS, ase_schedules
from ..schedules import BlockForecast, CachedTailResidual, StaticDepth
from ..caches.block_forecast import distinct_timesteps
from ..caches.tail_cache import FORECAST_ORDERS

ASE_KINDS = ("released", "aggressive")


def _sequence(values: Any, name: str, allow_empty: bool = True) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{name} must be a list or tuple, got {values!r}")
    if not values and not allow_empty:
        raise ValueError(f"{name} must name at least one value, got {values!r}")
    return tuple(dict.fromkeys(values))  # duplicates dropped, order kept


def _fractions(values: Any, name: str) -> tuple[float, ...]:
    out = _sequence(values, name)
    for v in out:
        check_number(v, f"every value of {name}", 0.0, 1.0, low_open=True)
        if v >= 1:
            raise ValueError(f"every value of {name} must be in (0, 1) (1 is full depth), got {v!r} in {values!r}")
    return tuple(float(v) for v in out)


def _orders(values: Any, name: str, allow_empty: bool) -> tuple[int, ...]:
    out = _sequence(values, name, allow_empty=allow_empty)
    if any(isinstance(o, bool) or o not in FORECAST_ORDERS for o in out):
        raise ValueError(f"{name} must be among {FORECAST_ORDERS}, got {values!r}")
    return out


def check_windows(values: Any, name: str, allow_empty: bool) -> tuple[tuple[int, bool], ...]:
    """`BlockForecast` windows: (first timesteps computed >= 1, last timestep computed: bool) pairs, deduplicated."""
    windows = _sequence(values, name, allow_empty=allow_empty)
    for window in windows:
        if (not isinstance(window, (tuple, list)) or len(window) != 2 or not isinstance(window[1], bool)
                or isinstance(window[0], bool) or not isinstance(window[0], int) or window[0] < 1):
            raise ValueError(f"every {name} entry must be (first timesteps computed >= 1, last timestep computed: "
                             f"bool), got {window!r} in {values!r}")
    return tuple(dict.fromkeys((int(w[0]), bool(w[1])) for w in windows))


@dataclass
class SearchSpace:
    """What `search_operating_point` tries: every solver x steps at full depth, and with each exit config below.

    Args:
        solvers: names of `SEARCH_SOLVERS` ("ddim", "dpmpp", "unipc"), each built from the pipeline's own scheduler
            config (on a flow-matching scheduler, their flow versions: "dpmpp", "unipc"); None: the pipeline's own
            scheduler only.
        steps: step counts.
        static_fractions: `StaticDepth(round(f * N))` for N blocks (deduplicated, within 1..N-1).
        ase: ASE timestep schedules ("released", "aggressive"; `ase_schedules`).
        tail_thresholds: `CachedTailResidual(threshold, forecast_order)` for each threshold x `forecast_orders`
            (transformer denoisers only).
        forecast_orders: forecast orders of the tail cache (0, 1, 2).
        threshold_fractions: DeeDiff `UncertaintyThreshold`s calibrated per (solver, steps) on the calibration
            seeds to run these block fractions (`thresholds_for_fractions`; needs exit heads).
        block_forecast_intervals: `BlockForecast(interval)` for each interval x `block_forecast_orders` x
            `block_forecast_windows` (transformer denoisers only; training-free).
        block_forecast_orders: their forecast orders (0, 1, 2).
        block_forecast_verify: their per-row change criterion thresholds (None: none; `verify_threshold`).
        block_forecast_windows: (first timesteps computed, last timestep computed) of each, placed among the
            solver's timesteps at every step count (`BlockForecast.for_calls`); a window that leaves nothing to
            forecast at a step count is left out there.
    """

    solvers: tuple[str, ...] | None = ("ddim", "dpmpp")
    steps: tuple[int, ...] = (8, 10, 12, 15, 20, 25)
    static_fractions: tuple[float, ...] = (0.5, 0.75)
    ase: tuple[str, ...] = ASE_KINDS
    tail_thresholds: tuple[float, ...] = ()
    forecast_orders: tuple[int, ...] = (0,)
    threshold_fractions: tuple[float, ...] = ()
    block_forecast_intervals: tuple[int, ...] = ()
    block_forecast_orders: tuple[int, ...] = (1,)
    block_forecast_windows: tuple[tuple[int, bool], ...] = ((2, True),)
    block_forecast_verify: tuple[float | None, ...] = (None,)

    def __post_init__(self) -> None:
        if self.solvers is not None:
            self.solvers = _sequence(self.solvers, "solvers", allow_empty=False)
            unknown = [s for s in self.solvers if s not in SEARCH_SOLVERS]
            if unknown:
                raise ValueError(f"unknown solvers {unknown}; allowed: {sorted(SEARCH_SOLVERS)}, or solvers=None for "
                                 f"the pipeline's own scheduler")
        self.steps = tuple(sorted(check_int(k, "every value of steps", 1, "a step count")
                                  for k in _sequence(self.steps, "steps", allow_empty=False)))
        self.static_fractions = _fractions(self.static_fractions, "static_fractions")
        self.threshold_fractions = _fractions(self.threshold_fractions, "threshold_fractions")
        self.ase = _sequence(self.ase, "ase")
        if any(kind not in ASE_KINDS for kind in self.ase):
            raise ValueError(f"ase must name ASE schedules among {ASE_KINDS}, got {self.ase!r}")
        self.tail_thresholds = tuple(check_number(t, "every value of tail_thresholds", 0.0, low_open=True)
                                     for t in _sequence(self.tail_thresholds, "tail_thresholds"))
        self.forecast_orders = _orders(self.forecast_orders, "forecast_orders", not self.tail_thresholds)
        self.block_forecast_intervals = tuple(
            check_int(i, "every value of block_forecast_intervals", 2, "a row computes every interval-th call")
            for i in _sequence(self.block_forecast_intervals, "block_forecast_intervals"))
        self.block_forecast_orders = _orders(self.block_forecast_orders, "block_forecast_orders",
                                             not self.block_forecast_intervals)
        self.block_forecast_windows = check_windows(self.block_forecast_windows, "block_forecast_windows",
                                                    allow_empty=not self.block_forecast_intervals)
        self.block_forecast_verify = tuple(
            None if v is None else check_number(v, "every value of block_forecast_verify", 0.0, low_open=True)
            for v in _sequence(self.block_forecast_verify, "block_forecast_verify", allow_empty=False))

    @property
    def needs_transformer(self) -> bool:
        """Whether a candidate forecasts blocks (per-row tail residuals or sub-module outputs)."""
        return bool(self.tail_thresholds or self.block_forecast_intervals)

    def exit_configs(self, num_blocks: int, tail_exit_block: int = 1) -> list[tuple[str, str, EarlyExitConfig]]:
        """(name prefix, family, exit config) of every fixed exit config for a model of `num_blocks` blocks (the
        DeeDiff thresholds are calibrated per (solver, steps) and come on top, the `step_configs` too).
        `tail_exit_block`: where the tail caches decide (`CachedTailResidual.earliest_exit_block` of the model)."""
        n = num_blocks
        out = [(f"static{d}", "static_depth", EarlyExitConfig(StaticDepth(d)))
               for d in sorted({max(1, min(n - 1, round(f * n))) for f in self.static_fractions})]
        schedules = ase_schedules(n)
        out += [(f"ase_{kind}", "ase", EarlyExitConfig(schedules[kind])) for kind in self.ase]
        out += [(f"tail{tau:g}_o{order}", "tail_cache",
                 EarlyExitConfig(CachedTailResidual(tau, forecast_order=order, exit_block=tail_exit_block)))
                for tau in self.tail_thresholds for order in self.forecast_orders]
        return out

    def step_configs(self, timesteps: list[float]) -> list[tuple[str, str, EarlyExitConfig]]:
        """(name prefix, family, exit config) of the `BlockForecast` candidates for a run whose model calls have
        `timesteps` (`solver_timesteps`): `bf{interval}_o{order}_w{first}[_l][_v{threshold}]`."""
        distinct = len(distinct_timesteps(timesteps))
        return [(f"bf{i}_o{o}_w{first}{'_l' if last else ''}{'' if v is None else f'_v{v:g}'}", "block_forecast",
                 EarlyExitConfig(BlockForecast.for_calls(timesteps, first, last, interval=i, forecast_order=o,
                                                         verify_threshold=v)))
                for i in self.block_forecast_intervals for o in self.block_forecast_orders
                for first, last in self.block_forecast_windows for v in self.block_forecast_verify
                if first + last < distinct]
