"""What `ee-diffusion calibrate` runs: one of the five calibrations, chosen by name (`KINDS`).

`--kind operating-point` is not one of them: it runs the operating-point search (`search_command.py`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapters import get_adapter
from ..config import EarlyExitConfig
from ..pipelines.stock import kind_of
from ..schedules import UncertaintyThreshold
from ..policies.buckets import bucket_index
from .forecast_grid import DEFAULT_WINDOWS, calibrate_block_forecast
from .common import CalibrationResult, CalibrationSet, as_target, sample_calibration_set
from .distil import distil_schedule
from .schedule import calibrate_schedule, call_timesteps
from .tail_threshold import calibrate_tail_cache
from .thresholds import calibrate_thresholds

KINDS = ("schedule", "thresholds", "distil", "tail-cache", "block-forecast")
#: The goals each calibration takes (exactly one is given); distil observes a threshold and needs none.
GOALS = {"schedule": ("budget", "tolerance", "min_psnr"), "thresholds": ("budget",),
         "distil": ("budget", "tolerance", "min_psnr"), "tail-cache": ("min_psnr", "budget"),
         "block-forecast": ("min_psnr", "budget")}


def goal_error(kind: str, given: dict[str, Any]) -> str | None:
    """Why the goals `given` (name -> value, None: not given) do not fit a `kind` calibration, or None."""
    named = [name for name, value in given.items() if value is not None]
    wrong = [name for name in named if name not in GOALS[kind]]
    if wrong or (not named and kind != "distil"):
        return f"{kind} calibration takes {' or '.join(GOALS[kind])}, got {', '.join(named) or 'none'}"
    return None


def run_calibration(
    pipe: Any, kind: str = "schedule", budget: float | None = None, tolerance: float | None = None,
    threshold: float = 0.9, num_images: int = 40, steps: int = 20, guidance_scale: float | None = 4.0,
    num_buckets: int = 4, feature_net: Any = None, progress: bool = False, min_psnr: float | None = None,
    batch_size: int = 64, forecast_orders: tuple[int, ...] | None = None,
    forecast_intervals: tuple[int, ...] = (2, 3, 4), forecast_windows: tuple[tuple[int, bool], ...] = DEFAULT_WINDOWS,
    verify_thresholds: tuple[float | None, ...] = (None,), forecast_computes: tuple[int, ...] = (),
    call_options: dict[str, int] | None = None,
) -> CalibrationResult:
    """What `ee-diffusion calibrate` runs on `pipe` (a pipeline of ours or a `CalibrationTarget`): `kind` is
    "schedule" (budget, tolerance or min_psnr), "thresholds" (needs heads and a budget), "distil" (observe
    `UncertaintyThreshold(threshold)` on the calibration set, distil it into a schedule), "tail-cache" (the
    training-free residual-change threshold and forecast order among `forecast_orders`, default (0, 1), for
    min_psnr or a budget) or "block-forecast" (the training-free `BlockForecast` among `forecast_intervals` x
    `forecast_orders`, default (1, 2), x `forecast_windows` x `verify_thresholds`, and with `forecast_computes` the
    searched placements of that many computed timesteps, for min_psnr or a budget, at the pipeline's scheduler).
    `call_options` (height, width, num_frames) go to every pipeline call; the result records them, and
    `ee_diffusion.enable(pipe, saved_json)` makes them a call's defaults."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    error = goal_error(kind, {"budget": budget, "tolerance": tolerance, "min_psnr": min_psnr})
    if error:
        raise ValueError(error)
    target = as_target(pipe)
    _check_target(target, kind)
    calib = CalibrationSet(num_images=num_images, num_inference_steps=steps, guidance_scale=guidance_scale,
                           num_buckets=num_buckets, batch_size=batch_size, call_options=call_options or {})
    if kind == "schedule":
        result = calibrate_schedule(target, budget=budget, tolerance=tolerance, min_psnr=min_psnr, calib=calib,
                                    feature_net=feature_net, progress=progress)
    elif kind == "tail-cache":
        result = calibrate_tail_cache(target, min_psnr=min_psnr, budget=budget, calib=calib,
                                      forecast_orders=forecast_orders or (0, 1), progress=progress)
    elif kind == "block-forecast":
        result = calibrate_block_forecast(target, min_psnr=min_psnr, budget=budget, calib=calib,
                                          intervals=forecast_intervals, forecast_orders=forecast_orders or (1, 2),
                                          windows=forecast_windows, verify_thresholds=verify_thresholds,
                                          computes=forecast_computes, progress=progress)
    elif kind == "thresholds":
        result = calibrate_thresholds(target, budget, calib=calib, feature_net=feature_net, progress=progress)
    else:
        result = _distil(target, calib, threshold)
    # The scheduler it was found with, whole, so that `ee_diffusion.enable(pipe, saved_json)` rebuilds it (a
    # placement of computed timesteps holds for one solver and step count).
    scheduler = target.pipe.scheduler
    result.info["scheduler"] = type(scheduler).__name__
    result.info["scheduler_options"] = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    return result


def _distil(target: Any, calib: CalibrationSet, threshold: float) -> CalibrationResult:
    """Observe `UncertaintyThreshold(threshold)` on the calibration set and distil it into a schedule."""
    run = sample_calibration_set(target, calib, EarlyExitConfig(policy=UncertaintyThreshold(threshold)))
    schedule = distil_schedule(run.extra["exit_stats"])
    n = target.num_blocks
    bucket = bucket_index(torch.tensor(call_timesteps(run, calib)), schedule.boundaries)
    calls = [int((bucket == j).sum()) for j in range(len(schedule.depths))]  # model calls per bucket
    fraction = sum(c * k for c, k in zip(calls, schedule.depths)) / (sum(calls) * n)
    return CalibrationResult(EarlyExitConfig(policy=schedule),
                             {"kind": "distil", "observed_threshold": threshold, "block_fraction": fraction,
                              "observed_fraction": run.block_evals / (run.model_rows * n),
                              "calibration_set": vars(calib).copy(), "conditioning": target.conditioning.to_dict()})


def _check_target(target: Any, kind: str) -> None:
    """Refuse, before any sampling, a calibration the pipeline's denoiser cannot run."""
    name = type(target.denoiser).__name__
    sequential = get_adapter(target.denoiser).sequential
    if kind in ("tail-cache", "block-forecast") and not sequential:
        raise ValueError(f"{kind} calibration needs a transformer denoiser (per-row block inputs and outputs); "
                         f"{type(target.pipe).__name__} has a {name}: use --kind schedule with exit bridges")
    if not sequential and target.bridges is None and not kind_of(target.pipe).ours:
        raise ValueError(f"{name} exits by depth truncation and needs trained UNetExitBridges, which a stock "
                         f"{type(target.pipe).__name__} folder does not have; calibrate an EarlyExitUNetPipeline")
    if kind in ("thresholds", "distil") and target.exit_heads is None:
        raise ValueError(f"{kind} calibration needs exit heads (UncertaintyHeads): pass --heads FOLDER for a stock "
                         f"pipeline, or use --kind schedule / tail-cache")

