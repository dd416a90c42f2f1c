"""The per-row rows of `bench-caches` (`CachedTailResidual` and `BlockForecast`, named as the module doc of
`caches_bench.py` says), built from a `CachesPreset`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ee_diffusion.caches.block_forecast import distinct_timesteps
from ee_diffusion.calibration.forecast_placement import starts
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.eval.baselines import taylorseer_steps
from ee_diffusion.eval.method import Method
from ee_diffusion.schedules import BlockForecast, CachedTailResidual

if TYPE_CHECKING:
    from .caches_bench import CachesPreset


def tail_methods(preset: CachesPreset) -> list[Method]:
    at = f"@{preset.solver}{preset.steps}"
    rules = {f"tail{tau}": {"threshold": tau} for tau in preset.tail_thresholds}
    rules.update({f"every{c + 1}": {"criterion": "timestep", "skip_above_t": 0.0, "max_cached_calls": c}
                  for c in preset.tail_cadences})
    return [Method(f"{rule}_o{p}{at}", "tail_cache", preset.solver, preset.steps,
                   EarlyExitConfig(CachedTailResidual(**kwargs, forecast_order=p)), notes={"forecast_order": p})
            for rule, kwargs in rules.items() for p in preset.forecast_orders]


def forecast_methods(preset: CachesPreset, timesteps: list[float]) -> list[Method]:
    """`BlockForecast` rows, their windows placed among the solver's `timesteps` (`BlockForecast.for_calls`)."""
    at = f"@{preset.solver}{preset.steps}"
    out = []
    for interval, order, first, last, *verify in (*preset.block_forecasts, *preset.block_verifies):
        tau = verify[0] if verify else None
        policy = BlockForecast.for_calls(timesteps, first, last, interval=interval, forecast_order=order,
                                         verify_threshold=tau)
        name = f"bf{interval}_o{order}_w{first}{'_l' if last else ''}{'' if tau is None else f'_v{tau:g}'}{at}"
        out.append(Method(name, "block_forecast", preset.solver, preset.steps, EarlyExitConfig(policy),
                          notes={"forecast_order": order, "interval": interval, "first_calls": first, "last_call": last,
                                 "verify_threshold": tau}))
    n = len(distinct_timesteps(timesteps))  # = steps: the bench's solvers make one call per timestep
    windows = preset.taylorseer_windows or ((max(1, preset.steps // 8), False),)  # as `cache_methods` gives them
    placements = {f"bfts{i}_o{{order}}_w{w}{'_l' if last else ''}": taylorseer_steps(n, i, w, last)
                  for i in preset.taylorseer_intervals for w, last in windows}
    placements |= {f"bfe{k}_o{{order}}": list(starts(n, k)[0]) for k in preset.even_computes}
    placements |= {f"bfp{'-'.join(map(str, calls))}_o{{order}}": list(calls) for calls in preset.placements}
    for pattern, calls in placements.items():
        for order in preset.placed_orders:
            policy = BlockForecast.for_calls(timesteps, calls=calls, forecast_order=order)
            out.append(Method(pattern.format(order=order) + at, "block_forecast", preset.solver, preset.steps,
                              EarlyExitConfig(policy), notes={"forecast_order": order, "interval": None,
                                                              "first_calls": None, "last_call": None,
                                                              "verify_threshold": None, "calls": calls}))
    return out


def sorted_by_class(indices: range, num_classes: int) -> list[int]:
    """`indices` reordered so that consecutive images share a class (labels are `i % num_classes`)."""
    return sorted(indices, key=lambda i: (i % num_classes, i))
