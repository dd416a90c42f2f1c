"""Calibrated training-free forecasts: the interval, order and windows of `BlockForecast` for a step count.

A user samples a pretrained transformer at some solver and step count (the pipeline's scheduler) and wants it
faster at a fidelity goal (`min_psnr`: mean per-image PSNR against the same pipeline without forecasts, from the
same noise) or a compute budget (`budget`: the fraction of the expensive sub-modules' (row, call) evaluations that
still compute). The grid is small (the default 24 candidates), so every candidate is sampled on the calibration
set: no bisection, every number in the result was measured. With `computes=(k, ...)` the candidates also include
placements of k computed timesteps anywhere in the run (`forecast_placement.search_placement`), per forecast
order; the pick's placement is `info["calls"]`.

```py
>>> from diffusers import DPMSolverMultistepScheduler
>>> from ee_diffusion.calibration import CalibrationSet, calibrate_block_forecast
>>> from ee_diffusion.pipelines import EarlyExitDiTPipeline
>>> from ee_diffusion.testing import tiny_dit
>>> pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DPMSolverMultistepScheduler())
>>> pipe.set_progress_bar_config(disable=True)
>>> result = calibrate_block_forecast(pipe, min_psnr=20.0, calib=CalibrationSet(num_images=4, num_inference_steps=6),
...                                   intervals=(2, 3), forecast_orders=(1,), windows=((1, False), (2, True)))
>>> len(result.info["trials"]), result.info["compute_fraction"] <= 1.0, type(result.exit_config.policy).__name__
(4, True, 'BlockForecast')

```
"""

from __future__ import annotations

import logging
from typing import Any

from .._validation import check_int
from ..adapters import get_adapter
from ..config import EarlyExitConfig
from ..schedules import BlockForecast, policy_from_dict
from ..caches.block_forecast import distinct_timesteps
from .common import CalibrationResult, CalibrationSet, as_target, check_goal, psnr_trial, sample_calibration_set
from .forecast_placement import search_placement
from .schedule import call_timesteps
from .search_space import block_forecast_grid, check_orders, check_verify, check_windows

logger = logging.getLogger(__name__)

#: (first timesteps computed, last timestep computed): none, TaylorSeer's default warm-up, and with the last step.
DEFAULT_WINDOWS = ((1, False), (2, False), (2, True), (3, True))


def calibrate_block_forecast(
    pipe: Any, min_psnr: float | None = None, budget: float | None = None, calib: CalibrationSet | None = None,
    intervals: tuple[int, ...] = (2, 3, 4), forecast_orders: tuple[int, ...] = (1, 2),
    windows: tuple[tuple[int, bool], ...] = DEFAULT_WINDOWS, verify_thresholds: tuple[float | None, ...] = (None,),
    progress: bool = False, computes: tuple[int, ...] = (),
) -> CalibrationResult:
    """The `BlockForecast` of the grid `intervals` x `forecast_orders` x `windows` (first timesteps computed, last
    one computed; `BlockForecast.for_calls` places them) x `verify_thresholds` (None: no per-row change criterion)
    that meets `min_psnr` (dB) most cheaply (ties: the more faithful), or `budget` most faithfully.

    `pipe` is a pipeline of ours or a `CalibrationTarget` with a transformer denoiser, sampled with its own
    scheduler at `calib.num_inference_steps`; a window that leaves nothing to forecast there is skipped. A PSNR goal
    no candidate meets returns `interval=1` (the stock model, PSNR 100 dB); a budget none fits raises `ValueError`,
    as bad arguments do before any sampling. `computes` adds the searched placements of each count k (1 <= k < the
    run's distinct timesteps); `intervals=()` with `computes` searches placements only.
    """
    check_goal(min_psnr, budget, "compute")
    calib = calib or CalibrationSet()
    if not intervals and not computes:
        raise ValueError("intervals must name at least one interval (>= 2) unless computes places some, got ()")
    for k in computes:
        check_int(k, "every value of computes", 1, "timesteps a placement computes")
        if k >= calib.num_inference_steps:
            raise ValueError(f"every value of computes must be below the {calib.num_inference_steps} sampling steps "
                             f"(something must be forecast), got {k}")
    for interval in intervals:
        check_int(interval, "every value of intervals", 2, "a row computes every interval-th call")
    forecast_orders = check_orders(forecast_orders, "forecast_orders", allow_empty=False)
    windows = check_windows(windows, "windows", allow_empty=False)
    verify_thresholds = check_verify(verify_thresholds, "verify_thresholds")
    target = as_target(pipe)
    BlockForecast().validate_for(get_adapter(target.denoiser))  # a U-Net is refused here, before any sampling
    reference = sample_calibration_set(target, calib, None)
    timesteps = call_timesteps(reference, calib)
    distinct = len(distinct_timesteps(timesteps))
    trials: list[dict[str, Any]] = []

    def measure(policy: BlockForecast, first_calls: int | None = None, last_call: bool | None = None) -> dict:
        """One candidate sampled on the calibration set: its PSNR against the full model, its compute fraction."""
        scores = psnr_trial(target, calib, EarlyExitConfig(policy=policy), reference.images)
        fraction = scores.pop("block_fraction")  # of the forecast sub-modules' evaluations: a compute fraction
        return {"interval": policy.interval, "forecast_order": policy.forecast_order, "first_calls": first_calls,
                "last_call": last_call, "verify_threshold": policy.verify_threshold, "policy": policy.to_dict(),
                **scores, "compute_fraction": fraction}

    grid = block_forecast_grid(timesteps, dict.fromkeys(intervals), forecast_orders, windows, verify_thresholds)
    for _, first, last, policy in grid:
        trials.append(measure(policy, first_calls=first, last_call=last))
        if progress:
            logger.info("interval %d order %d window (%d, %s): PSNR %.2f dB, compute fraction %.3f", policy.interval,
                        policy.forecast_order, first, last, trials[-1]["psnr_db_mean"], trials[-1]["compute_fraction"])
    for k in dict.fromkeys(computes):
        if k >= distinct:
            raise ValueError(f"computes must be below the run's {distinct} distinct timesteps, got {k}")
        for order in forecast_orders:
            def score(calls: tuple[int, ...], order: int = order) -> dict[str, Any]:
                return measure(BlockForecast.for_calls(timesteps, calls=list(calls), forecast_order=order))

            trials.extend(search_placement(score, distinct, k))
    if not trials:
        raise ValueError(f"every window of {windows} computes all {distinct} timesteps at "
                         f"{calib.num_inference_steps} steps: nothing to forecast; give shorter windows or more steps")
    if min_psnr is not None:
        meeting = [t for t in trials if t["psnr_db_mean"] >= min_psnr]
        best = min(meeting, key=lambda t: (t["compute_fraction"], -t["psnr_db_mean"])) if meeting else None
    else:
        fitting = [t for t in trials if t["compute_fraction"] <= budget + 1e-9]
        if not fitting:
            raise ValueError(f"no BlockForecast of the grid fits the budget {budget}: the cheapest computes "
                             f"{min(t['compute_fraction'] for t in trials):.3f}; raise the budget or the intervals")
        best = max(fitting, key=lambda t: t["psnr_db_mean"])
    policy = BlockForecast(interval=1) if best is None else policy_from_dict(best["policy"])
    info = {"kind": "block-forecast", "min_psnr": min_psnr, "budget": budget, "met": best is not None,
            "policy": policy.to_dict(), "calls": None if best is None else best.get("calls"),
            "psnr_db_mean": 100.0 if best is None else best["psnr_db_mean"],
            "compute_fraction": 1.0 if best is None else best["compute_fraction"], "trials": trials,
            "timesteps": timesteps, "calibration_set": vars(calib).copy(),
            "conditioning": target.conditioning.to_dict()}
    info["block_fraction"] = info["compute_fraction"]  # what the calibrate command prints for every kind
    return CalibrationResult(EarlyExitConfig(policy=policy), info)
