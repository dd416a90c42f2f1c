"""Calibrated training-free forecasts: the interval, order and windows of `BlockForecast` for a step count.

A user samples a pretrained transformer at some solver and step count (the pipeline's scheduler) and wants it
faster at a fidelity goal (`min_psnr`: mean per-image PSNR against the same pipeline without forecasts, from the
same noise) or a compute budget (`budget`: the fraction of the expensive sub-modules' (row, call) evaluations that
still compute). Every candidate of the grid - interval x forecast order x window (the first timesteps computed,
and the last one or not; `BlockForecast.for_calls` places them among this run's timesteps) - is sampled for real
on the calibration set; the cheapest that meets a PSNR goal wins (ties: the more faithful), or the most faithful
within a budget. The grid is small (the default 24 candidates), so no bisection: every number in the result was
measured. With `computes=(k, ...)` the candidates also include placements of k computed timesteps anywhere in the
run (`forecast_placement.search_placement`, a local search by the same PSNR), per forecast order; the pick's
placement is `info["calls"]`.

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
from ..caches.tail_cache import FORECAST_ORDERS
from .common import CalibrationResult, CalibrationSet, as_target, check_goal, sample_calibration_set
from .forecast_placement import search_placement
from .schedule import call_timesteps, psnr_db
from .search_space import check_windows

logger = logging.getLogger(__name__)

#: (first timesteps computed, last timestep computed): none, TaylorSeer's default warm-up, and with the last step.
DEFAULT_WINDOWS = ((1, False), (2, False), (2, True), (3, True))


def calibrate_block_forecast(
    pipe: Any, min_psnr: float | None = None, budget: float | None = None, calib: CalibrationSet | None = None,
    intervals: tuple[int, ...] = (2, 3, 4), forecast_orders: tuple[int, ...] = (1, 2),
    windows: tuple[tuple[int, bool], ...] = DEFAULT_WINDOWS, verify_thresholds: tuple[float | None, ...] = (None,),
    progress: bool = False, computes: tuple[int, ...] = (),
) -> CalibrationResult:
    """The `BlockForecast` of the grid `intervals` x `forecast_orders` x `windows` x `verify_thresholds` (None:
    no per-row change criterion) that meets `min_psnr` (dB) most cheaply, or `budget` (compute fraction in (0, 1])
    most faithfully.

    `pipe` is a pipeline of ours or a `CalibrationTarget` (`as_target(stock_pipe, conditioning)`) with a
    transformer denoiser; it samples with its own scheduler at `calib.num_inference_steps`. A window that leaves
    nothing to forecast at that step count is skipped. A PSNR goal no candidate meets returns `interval=1` (never
    forecast: the stock model, PSNR 100 dB); a budget no candidate fits raises `ValueError`. Bad arguments raise
    `ValueError` before any sampling. `computes` adds the searched placements of each count k (1 <= k < the run's
    distinct timesteps); `intervals=()` with `computes` searches placements only.
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
    if not forecast_orders or any(isinstance(o, bool) or o not in FORECAST_ORDERS for o in forecast_orders):
        raise ValueError(f"forecast_orders must be a non-empty subset of {FORECAST_ORDERS}, got {forecast_orders!r}")
    windows = check_windows(windows, "windows", allow_empty=False)
    if not verify_thresholds or any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                                       or not v > 0) for v in verify_thresholds):
        raise ValueError(f"verify_thresholds must be None or numbers > 0, got {verify_thresholds!r}")
    target = as_target(pipe)
    BlockForecast().validate_for(get_adapter(target.denoiser))  # a U-Net is refused here, before any sampling
    reference_run = sample_calibration_set(target, calib, None)
    reference = reference_run.images
    timesteps = call_timesteps(reference_run, calib)
    distinct = len(distinct_timesteps(timesteps))
    trials: list[dict[str, Any]] = []

    def measure(policy: BlockForecast, first_calls: int | None = None, last_call: bool | None = None) -> dict:
        """One candidate sampled on the calibration set: its PSNR against the full model, its compute fraction."""
        run = sample_calibration_set(target, calib, EarlyExitConfig(policy=policy))
        psnr = psnr_db(run.images, reference)
        return {"interval": policy.interval, "forecast_order": policy.forecast_order, "first_calls": first_calls,
                "last_call": last_call, "verify_threshold": policy.verify_threshold, "policy": policy.to_dict(),
                "psnr_db_mean": float(psnr.mean()), "psnr_db_p10": float(psnr.quantile(0.1)),
                "psnr_db_min": float(psnr.min()),
                "compute_fraction": run.block_evals / (run.model_rows * target.num_blocks)}

    for interval in dict.fromkeys(intervals):
        for order in dict.fromkeys(forecast_orders):
            for (first, last), verify in ((w, v) for w in windows
                                          for v in dict.fromkeys(verify_thresholds)):
                if first + last >= distinct:
                    continue  # every timestep would compute: nothing forecast
                policy = BlockForecast.for_calls(timesteps, first, last, interval=interval, forecast_order=order,
                                                 verify_threshold=verify)
                trial = measure(policy, first_calls=first, last_call=last)
                trials.append(trial)
                if progress:
                    logger.info("interval %d order %d window (%d, %s): PSNR %.2f dB, compute fraction %.3f", interval,
                                order, first, last, trial["psnr_db_mean"], trial["compute_fraction"])
    for k in dict.fromkeys(computes):
        if k >= distinct:
            raise ValueError(f"computes must be below the run's {distinct} distinct timesteps, got {k}")
        for order in dict.fromkeys(forecast_orders):
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
