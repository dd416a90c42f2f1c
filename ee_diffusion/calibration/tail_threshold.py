"""Calibrated training-free exits: the residual-change threshold and forecast order of `CachedTailResidual`.

The per-row tail cache decides on the relative change of each row's first-block residual (no heads, no training).
The threshold that meets a goal is bisected on the calibration set, each trial sampled for real; both PSNR and
block fraction move monotonically with the threshold up to sampling noise, and the trial returned is always one
that was measured to meet the goal.
"""

from __future__ import annotations

import logging
from typing import Any

from ..adapters import get_adapter
from ..config import EarlyExitConfig
from ..schedules import CachedTailResidual
from .common import CalibrationResult, CalibrationSet, as_target, check_goal, psnr_trial, sample_calibration_set
from .search_space import check_orders

logger = logging.getLogger(__name__)


def calibrate_tail_cache(
    pipe: Any, min_psnr: float | None = None, budget: float | None = None, calib: CalibrationSet | None = None,
    forecast_orders: tuple[int, ...] = (0, 1), max_cached_calls: int = 3, max_threshold: float = 1.0,
    iterations: int = 7, progress: bool = False,
) -> CalibrationResult:
    """A `CachedTailResidual(criterion="residual")` threshold and forecast order for `min_psnr` (dB: the largest,
    cheapest threshold meeting it) or `budget` (block fraction: the smallest, most faithful threshold within it).

    Every order of `forecast_orders` (0: reuse the row's last tail residual; 1, 2: extrapolate it in the
    timestep) gets its own bisected threshold; the result is the order that meets the goal most cheaply (PSNR goal)
    or most faithfully (budget). `pipe` is a pipeline of ours or a `CalibrationTarget` with a transformer denoiser.
    Raises `ValueError` when no order fits a budget; a PSNR goal no threshold meets returns threshold 0 (the full
    model).
    """
    check_goal(min_psnr, budget)
    forecast_orders = check_orders(forecast_orders, "forecast_orders", allow_empty=False)
    calib = calib or CalibrationSet()
    target = as_target(pipe)
    exit_block = CachedTailResidual.earliest_exit_block(get_adapter(target.denoiser))  # 1 but on joint stacks
    reference = sample_calibration_set(target, calib, None).images
    trials: list[dict[str, Any]] = []

    def measure(order: int, threshold: float) -> dict[str, Any]:
        policy = CachedTailResidual(threshold=threshold, max_cached_calls=max_cached_calls, forecast_order=order,
                                    exit_block=exit_block)
        trial = {"forecast_order": order, "threshold": threshold,
                 **psnr_trial(target, calib, EarlyExitConfig(policy=policy), reference)}
        trials.append(trial)
        if progress:
            logger.info("order %d threshold %.4f: PSNR %.2f dB, block fraction %.3f", order, threshold,
                        trial["psnr_db_mean"], trial["block_fraction"])
        return trial

    def meets(trial: dict[str, Any]) -> bool:
        if min_psnr is not None:
            return trial["psnr_db_mean"] >= min_psnr
        return trial["block_fraction"] <= budget + 1e-9

    def search(order: int) -> dict[str, Any] | None:
        """The order's best trial that meets the goal (None: no threshold fits the budget)."""
        top = measure(order, max_threshold)
        if min_psnr is not None and meets(top):
            return top
        if budget is not None and not meets(top):
            return None
        # Threshold 0 never skips (the full model: any PSNR goal holds) and the largest one is the cheapest, so
        # one end of [0, max_threshold] meets the goal; bisect towards the other while keeping that invariant.
        good, bad = (0.0, max_threshold) if min_psnr is not None else (max_threshold, 0.0)
        for _ in range(iterations):
            mid = (good + bad) / 2
            if meets(measure(order, mid)):
                good = mid
            else:
                bad = mid
        return next((t for t in trials if t["forecast_order"] == order and t["threshold"] == good), None) \
            or measure(order, good)

    found = [t for t in (search(order) for order in forecast_orders) if t is not None]
    if not found:
        raise ValueError(f"no threshold up to {max_threshold} fits the budget {budget} at forecast orders "
                         f"{forecast_orders}: the cheapest ran {min(t['block_fraction'] for t in trials):.3f} of the "
                         f"blocks (rows refresh at least every {max_cached_calls + 1} calls); raise the budget or "
                         f"max_cached_calls")
    if min_psnr is not None:  # the cheapest that meets the PSNR goal (ties: the more faithful)
        best = min(found, key=lambda t: (t["block_fraction"], -t["psnr_db_mean"]))
    else:  # the most faithful within the budget
        best = max(found, key=lambda t: t["psnr_db_mean"])
    policy = CachedTailResidual(threshold=best["threshold"], max_cached_calls=max_cached_calls,
                                forecast_order=best["forecast_order"], exit_block=exit_block)
    info = {"kind": "tail-cache", "min_psnr": min_psnr, "budget": budget, "threshold": best["threshold"],
            "forecast_order": best["forecast_order"], "psnr_db_mean": best["psnr_db_mean"],
            "psnr_db_p10": best["psnr_db_p10"], "block_fraction": best["block_fraction"], "trials": trials,
            "calibration_set": vars(calib).copy(), "conditioning": target.conditioning.to_dict()}
    return CalibrationResult(EarlyExitConfig(policy=policy), info)
