"""Calibrated depth schedules: a static `TimestepSchedule` for a compute budget or a quality tolerance.

Measured on a *calibration set* (seeds disjoint from any evaluation): the sampling steps are grouped into
timestep buckets; for every bucket and every shallower depth the calibration set is sampled once with only
that bucket shortened, and the deviation of the final samples from the full model's (same noise, in the
feature space of a feature network, or pixels) is recorded. Assuming the deviations add up, a small dynamic
programme picks the depth per bucket with the least total deviation whose block evaluations fit the budget.
With `tolerance=` instead of a budget it returns the cheapest schedule whose predicted deviation stays within
`tolerance` times the typical distance between two different full-model samples.

```py
>>> from ee_diffusion.calibration import allocate_depths
>>> # 2 buckets of 10 steps; shortening bucket 1 (noisy) is cheap, bucket 0 is expensive; 8 blocks, half budget
>>> deviation = [[9, 8, 7, 6, 5, 4, 2, 0], [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01, 0]]
>>> allocate_depths(deviation, steps_per_bucket=[10, 10], num_blocks=8, budget=0.5)
[7, 1]

```
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from ..config import EarlyExitConfig
from ..eval.pipeline_sampling import SampleRun
from ..schedules import TimestepSchedule
from .common import CalibrationResult, CalibrationSet, as_target, psnr_trial, sample_calibration_set

logger = logging.getLogger(__name__)


def step_buckets(timesteps: list[float], num_buckets: int) -> tuple[list[float], list[int]]:
    """Group the sampling timesteps (any order) into `num_buckets` runs of consecutive steps.

    Returns the bucket boundaries (ascending, midpoints between neighbouring steps of different buckets, as
    `TimestepSchedule` wants them) and the number of steps per bucket (bucket 0 = lowest timesteps).
    """
    ts = sorted(float(t) for t in timesteps)
    k = max(1, min(num_buckets, len(ts)))
    edges = [round(i * len(ts) / k) for i in range(k + 1)]
    counts = [edges[i + 1] - edges[i] for i in range(k)]
    boundaries = [(ts[edges[i] - 1] + ts[edges[i]]) / 2 for i in range(1, k)]
    return boundaries, counts


def allocate_depths(
    deviation: list[list[float]], steps_per_bucket: list[int], num_blocks: int, budget: float
) -> list[int]:
    """Depth per bucket minimising the summed deviation with block evaluations <= budget * steps * num_blocks.

    `deviation[j][k-1]` is the (additive) cost of running bucket j at depth k (k = num_blocks costs 0).
    """
    if not 0 < budget <= 1:
        raise ValueError(f"budget must be a fraction of block evaluations in (0, 1], got {budget!r}")
    total_steps = sum(steps_per_bucket)
    capacity = math.floor(budget * total_steps * num_blocks + 1e-9)
    best: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}
    for j, steps in enumerate(steps_per_bucket):
        nxt: dict[int, tuple[float, list[int]]] = {}
        for used, (cost, depths) in best.items():
            for k in range(1, num_blocks + 1):
                spent = used + steps * k
                if spent > capacity:
                    break
                value = (cost + float(deviation[j][k - 1]), depths + [k])
                if spent not in nxt or value[0] < nxt[spent][0] - 1e-15:
                    nxt[spent] = value
        best = nxt
    if not best:
        raise ValueError(f"budget {budget} is below one block per step ({1 / num_blocks:.3f}); nothing fits")
    # Least deviation; among ties the cheaper plan.
    used, (cost, depths) = min(best.items(), key=lambda item: (item[1][0], item[0]))
    return depths


def _embed(images: torch.Tensor, feature_net: Any) -> torch.Tensor:
    if feature_net is None:
        return images.flatten(1).double()
    with torch.no_grad():
        return feature_net(images).double()


def call_timesteps(run: SampleRun, calib: CalibrationSet) -> list[float]:
    """The timestep of every model call of one sampling run, as the pipeline really called the model.

    Read from the run's exit statistics (every batch of the calibration set makes the same calls), so it holds
    for any scheduler: flow-matching sigmas, Heun's two calls per step, a pipeline's own timestep spacing.
    """
    stats = run.extra["exit_stats"]
    batches = math.ceil(calib.num_images / calib.batch_size)
    return [float(t[0]) for t in stats.timesteps[: stats.num_calls // batches]]


def _monotone_rows(measured: list[dict[int, float]], num_blocks: int) -> list[list[float]]:
    """Per bucket, the deviation at every depth 1..N from the measured ones: interpolated between measured
    depths, doubled below the shallowest, and made non-increasing in depth (measurement noise otherwise)."""
    deviation = []
    for row in measured:
        known = sorted(row)
        full = []
        for k in range(1, num_blocks + 1):
            if k in row:
                full.append(row[k])
            elif k < known[0]:
                full.append(row[known[0]] * 2.0)  # shallower than anything measured: assume much worse
            else:
                lo = max(d for d in known if d < k)
                hi = min(d for d in known if d > k)
                full.append(row[lo] + (row[hi] - row[lo]) * (k - lo) / (hi - lo))
        for k in range(num_blocks - 2, -1, -1):
            full[k] = max(full[k], full[k + 1])
        deviation.append(full)
    return deviation


def measure_depth_deviation(
    pipe: Any, calib: CalibrationSet, feature_net: Any = None, depths: list[int] | None = None, progress: bool = False,
    reference: SampleRun | None = None,
) -> dict[str, Any]:
    """Deviation of the final samples when one timestep bucket runs at a smaller depth (the rest at full depth).

    `pipe` is a pipeline of ours or a `CalibrationTarget` (any supported pipeline with its conditions). Returns
    `{"boundaries", "steps_per_bucket", "deviation" (buckets x num_blocks, mean squared distance in the feature
    space, or pixels without a feature net), "pixel_deviation" (the same in pixels, for PSNR goals),
    "typical_distance" (mean squared distance between two different full-model samples of one condition),
    "num_pixels", "num_blocks"}`. Depths not measured are interpolated (monotone in depth). The boundaries are
    timesteps of the scheduler (not step indices), so a schedule holds at other step counts too. `reference`: the
    full model's run of the calibration set (`sample_calibration_set(pipe, calib, None)`), if the caller has it.
    """
    target = as_target(pipe)
    num_blocks = target.num_blocks
    # The reference, and the timesteps of its calls.
    full = reference if reference is not None else sample_calibration_set(target, calib, None)
    boundaries, counts = step_buckets(call_timesteps(full, calib), calib.num_buckets)
    depths = sorted(set(depths or range(1, num_blocks)))
    reference = _embed(full.images, feature_net)
    # The typical distance: each sample against the next sample of the same condition (a different noise draw).
    size = target.conditioning.size
    shift = size if calib.num_images > size else 1
    typical = float(((reference[shift:] - reference[:-shift]) ** 2).sum(1).mean())
    measured: list[dict[int, float]] = [{num_blocks: 0.0} for _ in counts]
    pixels: list[dict[int, float]] = [{num_blocks: 0.0} for _ in counts]
    for j in range(len(counts)):
        for k in depths:
            plan = [k if i == j else num_blocks for i in range(len(counts))]
            run = sample_calibration_set(
                target, calib, EarlyExitConfig(policy=TimestepSchedule(boundaries=boundaries, depths=plan)))
            measured[j][k] = float(((_embed(run.images, feature_net) - reference) ** 2).sum(1).mean())
            pixels[j][k] = float(((run.images.double() - full.images.double()) ** 2).flatten(1).sum(1).mean())
            if progress:
                logger.info("bucket %d depth %d: deviation %.4g", j, k, measured[j][k])
    return {"boundaries": boundaries, "steps_per_bucket": counts, "deviation": _monotone_rows(measured, num_blocks),
            "pixel_deviation": _monotone_rows(pixels, num_blocks), "typical_distance": typical,
            "num_pixels": int(full.images[0].numel()), "num_blocks": num_blocks}


def _cheapest_within(deviation: list[list[float]], counts: list[int], n: int, allowed: float) -> list[int]:
    """The cheapest depth plan whose summed deviation stays within `allowed` (full depth if none does)."""
    total_blocks = sum(counts) * n
    for used in range(sum(counts), total_blocks + 1):
        plan = allocate_depths(deviation, counts, n, used / total_blocks)
        if sum(deviation[j][k - 1] for j, k in enumerate(plan)) <= allowed:
            return plan
    return [n] * len(counts)


def schedule_from_deviation(measurement: dict[str, Any], budget: float | None = None,
                            tolerance: float | None = None, min_psnr: float | None = None,
                            ) -> tuple[TimestepSchedule, dict[str, Any]]:
    """The calibrated schedule for a budget (fraction of block evaluations), a tolerance (see module doc) or a
    fidelity goal `min_psnr` (dB against the full model's images: the predicted mean squared error per pixel
    is at most 10^(-min_psnr / 10), for images in [0, 1])."""
    goals = {"budget": budget, "tolerance": tolerance, "min_psnr": min_psnr}
    if sum(v is not None for v in goals.values()) != 1:
        raise ValueError(f"give exactly one of budget, tolerance and min_psnr, got {goals}")
    n = measurement["num_blocks"]
    counts = measurement["steps_per_bucket"]
    deviation = measurement["deviation"]
    for name in ("tolerance", "min_psnr"):
        value = goals[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if budget is not None:
        depths = allocate_depths(deviation, counts, n, budget)
    elif tolerance is not None:
        depths = _cheapest_within(deviation, counts, n, tolerance * measurement["typical_distance"])
    else:
        if "pixel_deviation" not in measurement:
            raise ValueError("a min_psnr goal needs a measurement with pixel_deviation (measure_depth_deviation)")
        allowed = measurement["num_pixels"] * 10 ** (-min_psnr / 10)
        depths = _cheapest_within(measurement["pixel_deviation"], counts, n, allowed)
    predicted = sum(deviation[j][k - 1] for j, k in enumerate(depths))
    fraction = sum(c * k for c, k in zip(counts, depths)) / (sum(counts) * n)
    info = {"depths": depths, "predicted_deviation": predicted,
            "predicted_relative_deviation": predicted / max(measurement["typical_distance"], 1e-12),
            "block_fraction": fraction}
    if "pixel_deviation" in measurement:
        mse = sum(measurement["pixel_deviation"][j][k - 1] for j, k in enumerate(depths)) / measurement["num_pixels"]
        info["predicted_psnr_db"] = min(100.0, 10 * math.log10(1 / mse)) if mse > 0 else 100.0
    return TimestepSchedule(boundaries=measurement["boundaries"], depths=depths), info


def calibrate_schedule(
    pipe: Any, budget: float | None = None, tolerance: float | None = None, calib: CalibrationSet | None = None,
    feature_net: Any = None, measurement: dict[str, Any] | None = None, progress: bool = False,
    min_psnr: float | None = None, max_rounds: int = 4,
) -> CalibrationResult:
    """A `TimestepSchedule` calibrated to `budget` (fraction of full-depth block evaluations), `tolerance`, or
    `min_psnr` (mean per-image PSNR against the full model on the calibration set, in dB).

    `pipe` is a pipeline of ours or a `CalibrationTarget` (`as_target(stock_pipe, conditioning)`). With
    `min_psnr`, the predicted schedule is sampled and its per-image PSNR measured; while the mean falls short,
    the goal is raised by the shortfall (plus 1 dB) and the schedule chosen again, up to `max_rounds` times,
    ending at full depth if nothing cheaper holds. The measured PSNR (mean, 10th percentile, min) is in `info`.
    """
    calib = calib or CalibrationSet()
    target = as_target(pipe)
    # A PSNR goal compares with the full model's images: sample them once, for the measurement too.
    full = sample_calibration_set(target, calib, None) if min_psnr is not None else None
    measurement = measurement or measure_depth_deviation(target, calib, feature_net, progress=progress, reference=full)
    schedule, info = schedule_from_deviation(measurement, budget=budget, tolerance=tolerance, min_psnr=min_psnr)
    if full is not None:
        goal, rounds = min_psnr, []
        for _ in range(max_rounds):
            rounds.append({"goal_db": goal, "depths": list(schedule.depths),
                           **psnr_trial(target, calib, EarlyExitConfig(policy=schedule), full.images)})
            if progress:
                logger.info("depths %s: PSNR %.2f dB (goal %.2f)", schedule.depths, rounds[-1]["psnr_db_mean"],
                            min_psnr)
            if rounds[-1]["psnr_db_mean"] >= min_psnr or all(k == target.num_blocks for k in schedule.depths):
                break
            goal += min_psnr - rounds[-1]["psnr_db_mean"] + 1.0
            schedule, info = schedule_from_deviation(measurement, min_psnr=goal)
        else:  # no round held: the full model is the only schedule known to meet the goal
            schedule = TimestepSchedule(boundaries=measurement["boundaries"],
                                        depths=[target.num_blocks] * len(measurement["steps_per_bucket"]))
            info = {**info, "depths": list(schedule.depths), "block_fraction": 1.0}
        info["measured"] = rounds
        if rounds[-1]["depths"] == list(schedule.depths):
            info.update(block_fraction=rounds[-1]["block_fraction"], psnr_db_mean=rounds[-1]["psnr_db_mean"],
                        psnr_db_p10=rounds[-1]["psnr_db_p10"])
    info.update({"kind": "schedule", "budget": budget, "tolerance": tolerance, "min_psnr": min_psnr,
                 "calibration_set": vars(calib).copy(), "conditioning": target.conditioning.to_dict(),
                 "measurement": measurement})
    return CalibrationResult(EarlyExitConfig(policy=schedule), info)
