"""What `ee-diffusion calibrate` runs: one of the three calibrations, chosen by name."""

from __future__ import annotations

from typing import Any

import torch

from ..config import EarlyExitConfig
from ..schedules import TimestepSchedule, UncertaintyThreshold
from ..schedules.buckets import bucket_index
from .common import CalibrationResult, CalibrationSet, sample_calibration_set
from .distil import distil_schedule
from .schedule import sampling_timesteps, calibrate_schedule
from .thresholds import calibrate_thresholds

KINDS = ("schedule", "thresholds", "distil")


def run_calibration(
    pipe: Any, kind: str = "schedule", budget: float | None = None, tolerance: float | None = None,
    threshold: float = 0.9, num_images: int = 40, steps: int = 20, guidance_scale: float = 4.0,
    num_buckets: int = 4, feature_net: Any = None, progress: bool = False,
) -> CalibrationResult:
    """What `ee-diffusion calibrate` runs: `kind` is "schedule", "thresholds" (needs a budget) or "distil"
    (observe `UncertaintyThreshold(threshold)` on the calibration set, distil it into a schedule)."""
    calib = CalibrationSet(num_images=num_images, num_inference_steps=steps, guidance_scale=guidance_scale,
                           num_buckets=num_buckets)
    if kind == "schedule":
        return calibrate_schedule(pipe, budget=budget, tolerance=tolerance, calib=calib, feature_net=feature_net,
                                  progress=progress)
    if kind == "thresholds":
        if budget is None:
            raise ValueError("threshold calibration needs --budget")
        return calibrate_thresholds(pipe, budget, calib=calib, feature_net=feature_net, progress=progress)
    if kind == "distil":
        if pipe.exit_heads is None:
            raise ValueError("distil observes an UncertaintyThreshold policy: the pipeline needs exit_heads")
        run = sample_calibration_set(pipe, calib, EarlyExitConfig(policy=UncertaintyThreshold(threshold)))
        stats = run.extra.get("exit_stats")
        schedule = distil_schedule(stats)
        n = len(pipe.transformer.transformer_blocks)
        fraction = sum(c * k for c, k in zip(_bucket_steps(pipe, steps, schedule), schedule.depths)) / (steps * n)
        return CalibrationResult(EarlyExitConfig(policy=schedule),
                                 {"kind": "distil", "observed_threshold": threshold, "block_fraction": fraction,
                                  "observed_fraction": run.block_evals / (run.model_rows * n),
                                  "calibration_set": vars(calib).copy()})
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _bucket_steps(pipe: Any, steps: int, schedule: TimestepSchedule) -> list[int]:
    bucket = bucket_index(torch.tensor(sampling_timesteps(pipe, steps)), schedule.boundaries)
    return [int((bucket == j).sum()) for j in range(len(schedule.depths))]
