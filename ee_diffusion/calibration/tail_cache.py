"""Calibrated training-free exits: the residual-change threshold of `CachedTailResidual` for a goal.

For a stock model (no heads, no layer-wise training), the per-row tail cache decides on the relative change
of each row's first-block residual. The threshold that meets a goal is found by bisection on the calibration
set, each trial sampled for real: for `min_psnr`, the largest threshold (the cheapest) whose mean per-image
PSNR against the full model is at least the goal; for `budget`, the smallest threshold (the most faithful)
whose block fraction is at most the budget. Both quantities move monotonically with the threshold up to
sampling noise; the trial that is returned is always one that was measured to meet the goal.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import EarlyExitConfig
from ..schedules import CachedTailResidual
from .common import CalibrationResult, CalibrationSet, as_target, sample_calibration_set
from .schedule import psnr_db

logger = logging.getLogger(__name__)


def calibrate_tail_cache(
    pipe: Any, min_psnr: float | None = None, budget: float | None = None, calib: CalibrationSet | None = None,
    max_cached_calls: int = 3, max_threshold: float = 1.0, iterations: int = 7, progress: bool = False,
) -> CalibrationResult:
    """A `CachedTailResidual(criterion="residual")` threshold for `min_psnr` (dB) or `budget` (block fraction).

    `pipe` is a pipeline of ours or a `CalibrationTarget` (`as_target(stock_pipe, conditioning)`); transformer
    backbones only. Raises `ValueError` when even the smallest threshold tried misses a budget; a PSNR goal that
    no threshold meets returns threshold 0 (never skip: the full model).
    """
    if (min_psnr is None) == (budget is None):
        raise ValueError(f"give exactly one of min_psnr and budget, got min_psnr={min_psnr!r}, budget={budget!r}")
    if budget is not None and not 0 < budget <= 1:
        raise ValueError(f"budget must be a fraction of block evaluations in (0, 1], got {budget!r}")
    if min_psnr is not None and (isinstance(min_psnr, bool) or not isinstance(min_psnr, (int, float))):
        raise ValueError(f"min_psnr must be a number of dB, got {min_psnr!r}")
    calib = calib or CalibrationSet()
    target = as_target(pipe)
    reference = sample_calibration_set(target, calib, None).images
    trials: list[dict[str, Any]] = []

    def measure(threshold: float) -> dict[str, Any]:
        policy = CachedTailResidual(threshold=threshold, max_cached_calls=max_cached_calls)
        run = sample_calibration_set(target, calib, EarlyExitConfig(policy=policy))
        psnr = psnr_db(run.images, reference)
        trial = {"threshold": threshold, "psnr_db_mean": float(psnr.mean()), "psnr_db_p10": float(psnr.quantile(0.1)),
                 "psnr_db_min": float(psnr.min()),
                 "block_fraction": run.block_evals / (run.model_rows * target.num_blocks)}
        trials.append(trial)
        if progress:
            logger.info("threshold %.4f: PSNR %.2f dB, block fraction %.3f", threshold, trial["psnr_db_mean"],
                        trial["block_fraction"])
        return trial

    def meets(trial: dict[str, Any]) -> bool:
        if min_psnr is not None:
            return trial["psnr_db_mean"] >= min_psnr
        return trial["block_fraction"] <= budget + 1e-9

    top = measure(max_threshold)
    if min_psnr is not None and meets(top):
        best = top
    elif budget is not None and not meets(top):
        raise ValueError(f"no threshold up to {max_threshold} fits the budget {budget}: the largest ran "
                         f"{top['block_fraction']:.3f} of the blocks (rows refresh at least every "
                         f"{max_cached_calls + 1} calls); raise the budget or max_cached_calls")
    else:
        # Threshold 0 never skips (the full model: any PSNR goal holds) and the largest one is the cheapest, so
        # one end of [0, max_threshold] meets the goal; bisect towards the other while keeping that invariant.
        good, bad = (0.0, max_threshold) if min_psnr is not None else (max_threshold, 0.0)
        for _ in range(iterations):
            mid = (good + bad) / 2
            if meets(measure(mid)):
                good = mid
            else:
                bad = mid
        best = next((t for t in trials if t["threshold"] == good), None) or measure(good)
    policy = CachedTailResidual(threshold=best["threshold"], max_cached_calls=max_cached_calls)
    info = {"kind": "tail-cache", "min_psnr": min_psnr, "budget": budget, "threshold": best["threshold"],
            "psnr_db_mean": best["psnr_db_mean"], "psnr_db_p10": best["psnr_db_p10"],
            "block_fraction": best["block_fraction"], "trials": trials,
            "calibration_set": vars(calib).copy(), "conditioning": target.conditioning.to_dict()}
    return CalibrationResult(EarlyExitConfig(policy=policy), info)
