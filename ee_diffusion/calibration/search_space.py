"""What the operating-point search takes: `SearchSpace`, what it tries (every solver x steps alone and with each
exit config), and the checks that refuse, before anything is sampled, the goal, seeds, target, feature networks and
solvers it is given (each a `ValueError` naming what was received and what is allowed).

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

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._validation import check_int, check_number
from ..adapters import get_adapter
from ..caches.block_forecast import distinct_timesteps
from ..caches.tail_cache import FORECAST_ORDERS
from ..config import EarlyExitConfig
from ..eval.frontier import QUALITY_TOLERANCE
from ..eval.pipeline_sampling import _SEED_STRIDE
from ..eval.solvers import FLOW_SOLVERS, SEARCH_SOLVERS, ase_schedules, solver_spec, solvers_for
from ..operating_point import noise_schedule
from ..pipelines.stock import kind_of
from ..schedules import BlockForecast, CachedTailResidual, StaticDepth

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


def check_orders(values: Any, name: str, allow_empty: bool) -> tuple[int, ...]:
    """Forecast orders among `FORECAST_ORDERS`, deduplicated."""
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


def check_verify(values: Any, name: str) -> tuple[float | None, ...]:
    """`BlockForecast` verify thresholds: None (no per-row change criterion) or numbers > 0, deduplicated."""
    return tuple(None if v is None else check_number(v, f"every value of {name}", 0.0, low_open=True)
                 for v in _sequence(values, name, allow_empty=False))


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
        self.forecast_orders = check_orders(self.forecast_orders, "forecast_orders", not self.tail_thresholds)
        self.block_forecast_intervals = tuple(
            check_int(i, "every value of block_forecast_intervals", 2, "a row computes every interval-th call")
            for i in _sequence(self.block_forecast_intervals, "block_forecast_intervals"))
        self.block_forecast_orders = check_orders(self.block_forecast_orders, "block_forecast_orders",
                                                  not self.block_forecast_intervals)
        self.block_forecast_windows = check_windows(self.block_forecast_windows, "block_forecast_windows",
                                                    allow_empty=not self.block_forecast_intervals)
        self.block_forecast_verify = check_verify(self.block_forecast_verify, "block_forecast_verify")

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
        `timesteps` (`solver_timesteps`)."""
        return [(name, "block_forecast", EarlyExitConfig(policy)) for name, _, _, policy in block_forecast_grid(
            timesteps, self.block_forecast_intervals, self.block_forecast_orders, self.block_forecast_windows,
            self.block_forecast_verify)]


def block_forecast_grid(timesteps: list[float], intervals: Iterable[int], orders: tuple[int, ...],
                        windows: tuple[tuple[int, bool], ...],
                        verify: tuple[float | None, ...]) -> list[tuple[str, int, bool, BlockForecast]]:
    """(name, first timesteps computed, last one computed, policy) of every `BlockForecast` of the grid intervals x
    orders x windows x verify thresholds, placed among a run's call `timesteps`, named
    `bf{interval}_o{order}_w{first}[_l][_v{threshold}]`; a window that leaves nothing to forecast is left out."""
    distinct = len(distinct_timesteps(timesteps))
    return [(f"bf{i}_o{o}_w{first}{'_l' if last else ''}{'' if v is None else f'_v{v:g}'}", first, last,
             BlockForecast.for_calls(timesteps, first, last, interval=i, forecast_order=o, verify_threshold=v))
            for i in intervals for o in orders for first, last in windows for v in verify if first + last < distinct]


#: Noise seeds of the benchmark's evaluation sets: a search never samples their noise.
BENCH_SEEDS = (0, 1)
#: The solver name of the pipeline's own scheduler (`SearchSpace(solvers=None)`).
OWN_SCHEDULER = "own"
#: PSNR of an image identical to its reference (`psnr_db` caps there): a higher goal can never hold.
MAX_PSNR_DB = 100.0


def check_goal(tolerance: Any, budget: Any, min_psnr: Any) -> tuple[float | None, float | None, float | None]:
    """Exactly one goal, each in its range."""
    if sum(g is not None for g in (tolerance, budget, min_psnr)) != 1:
        raise ValueError(f"give exactly one goal: tolerance= (relative FID, e.g. {QUALITY_TOLERANCE}, unchanged "
                         f"quality), budget= (block fraction in (0, 1]) or min_psnr= (dB against the reference image "
                         f"from the same noise); got tolerance={tolerance!r}, budget={budget!r}, min_psnr={min_psnr!r}")
    if tolerance is not None:
        tolerance = check_number(tolerance, "tolerance", 0.0)
        if math.isinf(tolerance):
            raise ValueError(f"tolerance must be finite, got {tolerance!r}")
    if budget is not None:
        budget = check_number(budget, "budget", 0.0, 1.0, low_open=True)
    if min_psnr is not None:
        min_psnr = check_number(min_psnr, f"min_psnr (dB; identical images count as {MAX_PSNR_DB:g})", 0.0,
                                MAX_PSNR_DB, low_open=True)
    return tolerance, budget, min_psnr


def check_seeds(calib_seed: int, calib_images: int, holdout_seed: int, holdout_images: int) -> None:
    """The noise of image i of a set is seeded by seed * stride + i: the two sets and the benchmark's share none."""
    check_int(calib_seed, "calib_seed", 0, "noise seed of the calibration images")
    check_int(holdout_seed, "holdout_seed", 0, "noise seed of the held-out images")
    bench = range(min(BENCH_SEEDS) * _SEED_STRIDE, (max(BENCH_SEEDS) + 1) * _SEED_STRIDE)
    sets = {"calibration": range(calib_seed * _SEED_STRIDE, calib_seed * _SEED_STRIDE + calib_images),
            "held-out": range(holdout_seed * _SEED_STRIDE, holdout_seed * _SEED_STRIDE + holdout_images)}
    for what, seeds in sets.items():
        if seeds.start < bench.stop and bench.start < seeds.stop:
            raise ValueError(f"the {what} images (seed {seeds.start // _SEED_STRIDE}) would reuse the noise of the "
                             f"benchmark's evaluation seeds {BENCH_SEEDS}; use seeds >= {max(BENCH_SEEDS) + 1} "
                             f"(e.g. calib_seed=20000, holdout_seed=30000)")
    a, b = sets["calibration"], sets["held-out"]
    if a.start < b.stop and b.start < a.stop:
        raise ValueError(f"calib_seed={calib_seed} ({calib_images} images) and holdout_seed={holdout_seed} "
                         f"({holdout_images} images) share noise: held-out seeds must differ from the calibration "
                         f"seeds (noise seed = seed * {_SEED_STRIDE} + image index)")


def check_target(target: Any, space: SearchSpace) -> None:
    """Refuse exit configs this pipeline cannot run."""
    adapter = get_adapter(target.denoiser)
    exits = space.static_fractions or space.ase or space.needs_transformer or space.threshold_fractions
    if exits and not adapter.sequential and target.bridges is None and not kind_of(target.pipe).ours:
        raise ValueError(f"{type(target.denoiser).__name__} exits by depth truncation and needs UNetExitBridges; "
                         f"give them (as_target(pipe, conditioning, bridges=...)) or search steps alone (empty "
                         f"static_fractions, ase, tail_thresholds, block_forecast_intervals, threshold_fractions)")
    if space.needs_transformer and not adapter.sequential:
        raise ValueError(f"tail_thresholds and block_forecast_intervals need a transformer denoiser; "
                         f"{type(target.denoiser).__name__} is not one")
    if space.threshold_fractions and target.exit_heads is None:
        raise ValueError("threshold_fractions need exit heads (UncertaintyHeads): a pipeline of ours with exit_heads, "
                         "or a CalibrationTarget with heads; got none")
    if target.conditioning.kind == "prompts" and any(p.seed is not None for p in target.conditioning.prompts):
        raise ValueError("prompts with their own seed fix their images' noise whatever the set's seed, so calibration "
                         "and held-out images would share it; give prompts without seeds")


def solver_specs(scheduler: Any, named: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """(class, options) of every named solver on the pipeline's scheduler; the ones its noise schedule cannot
    run are refused together (DDIM on flow matching: its update needs alphas_cumprod)."""
    kind, own = noise_schedule(scheduler), type(scheduler).__name__
    offered = solvers_for(scheduler)
    bad = [s for s in named if s not in offered]
    if bad and kind == "flow":
        raise ValueError(f"{bad} need a DDPM-type noise schedule, which {own} (flow matching) does not have; on it "
                         f"the search offers {sorted(FLOW_SOLVERS)} (their flow-matching versions) or "
                         f"{OWN_SCHEDULER!r} (solvers=None, reference_solver={OWN_SCHEDULER!r}: its own scheduler)")
    if bad:
        raise ValueError(f"{bad} need a DDPM-type noise schedule or flow matching, which {own} has neither: search "
                         f"with solvers=None and reference_solver={OWN_SCHEDULER!r} (the pipeline's own scheduler)")
    return {s: solver_spec(s, scheduler) for s in named}  # refuses flow settings a solver cannot follow


def default_reference_solver(scheduler: Any, solvers: tuple[str, ...] | None) -> str:
    """The reference when none is named: DDIM where it runs and the search names solvers; else the pipeline's own
    scheduler (on flow matching, the scheduler the model was made with)."""
    return "ddim" if solvers and noise_schedule(scheduler) == "ddpm" else OWN_SCHEDULER


def feature_nets(feature_net: Any, real_features: Any, features: Any, min_psnr: float | None) -> dict[str, Any]:
    """The search's feature networks, name -> (net, real features), from either argument form; none for a PSNR
    goal, which compares images with the reference's from the same noise."""
    given = [n for n, v in (("feature_net", feature_net), ("real_features", real_features), ("features", features))
             if v is not None]
    if min_psnr is not None:
        if given:
            raise ValueError(f"min_psnr compares each image with the reference's image from the same noise: it takes "
                             f"no feature networks or real images, got {given}")
        return {}
    if features is None:
        if feature_net is None or real_features is None:
            raise ValueError("give feature_net= and real_features= (one feature network), or features= (name -> "
                             "(feature_net, real_features), several); got neither")
        return {"features": (feature_net, real_features)}
    if feature_net is not None or real_features is not None:
        raise ValueError("give either features= or feature_net= with real_features=, not both")
    if not isinstance(features, dict) or not features:
        raise ValueError(f"features must be a non-empty dict name -> (feature_net, real_features), got {features!r}")
    for name, value in features.items():
        if not isinstance(name, str) or not isinstance(value, tuple) or len(value) != 2 or not callable(value[0]):
            raise ValueError(f"features must map names to (feature_net, real_features) pairs; got {name!r}: "
                             f"{type(value).__name__}")
    return dict(features)
