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
from ..eval.sampling import class_labels, image_generators
from ..schedules import ExitPolicy, TimestepSchedule
from ..schedules.buckets import bucket_index
from .common import CalibrationResult, CalibrationSet

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


class _VariantPlan(ExitPolicy):
    """Planned depths for a batch made of `len(table)` variants of the same `per_variant` images, variant-major
    (guided batches repeat the layout for the unconditional half): row r runs `table[variant(r), bucket(t_r)]`."""

    def __init__(self, boundaries: list[float], table: torch.Tensor, per_variant: int) -> None:
        self.boundaries = boundaries
        self.table = table
        self.per_variant = per_variant

    def plan_depths(self, timesteps: torch.Tensor, num_blocks: int) -> torch.Tensor:
        rows = torch.arange(timesteps.shape[0], device=timesteps.device)
        variant = (rows % (self.table.shape[0] * self.per_variant)) // self.per_variant
        bucket = bucket_index(timesteps, self.boundaries)
        return self.table.to(timesteps.device)[variant, bucket].clamp(max=num_blocks)


def _sample_variants(pipe: Any, calib: CalibrationSet, boundaries: list[float], table: torch.Tensor) -> torch.Tensor:
    """Images (V * n, C, H, W) of the calibration set under each row of `table`, in one pipeline call."""
    transformer = pipe.transformer
    shape = (transformer.config.in_channels, transformer.config.sample_size, transformer.config.sample_size)
    indices = list(range(calib.num_images)) * table.shape[0]
    noise = torch.stack([torch.randn(shape, generator=g) for g in image_generators(indices, calib.seed)])
    out = pipe(
        class_labels=class_labels(indices, pipe.num_classes),
        num_inference_steps=calib.num_inference_steps, guidance_scale=calib.guidance_scale, latents=noise,
        exit_config=EarlyExitConfig(policy=_VariantPlan(boundaries, table, calib.num_images)), output_type="pt",
    )
    return out.images.float().cpu()


def _embed(images: torch.Tensor, feature_net: Any) -> torch.Tensor:
    if feature_net is None:
        return images.flatten(1).double()
    with torch.no_grad():
        return feature_net(images).double()


def sampling_timesteps(pipe: Any, steps: int) -> list[float]:
    pipe.scheduler.set_timesteps(steps)
    return [float(t) for t in pipe.scheduler.timesteps]


def measure_depth_deviation(
    pipe: Any, calib: CalibrationSet, feature_net: Any = None, depths: list[int] | None = None, progress: bool = False
) -> dict[str, Any]:
    """Deviation of the final samples when one timestep bucket runs at a smaller depth (the rest at full depth).

    Returns `{"boundaries", "steps_per_bucket", "deviation" (buckets x num_blocks, mean squared distance),
    "typical_distance" (mean squared distance between two different full-model samples of one class),
    "num_blocks"}`. Depths not measured are interpolated (monotone in depth).
    """
    num_blocks = len(pipe.transformer.transformer_blocks)
    boundaries, counts = step_buckets(sampling_timesteps(pipe, calib.num_inference_steps), calib.num_buckets)
    depths = sorted(set(depths or range(1, num_blocks)))
    # Every (bucket, depth) variant samples the same calibration images; all variants run as one batch, each
    # row planned with its variant's schedule (large batches use the CPU far better than many small calls).
    # Variant 0 is the full model, the reference.
    variants = [(j, k) for j in range(len(counts)) for k in depths]
    table = torch.full((1 + len(variants), len(counts)), num_blocks, dtype=torch.long)
    for v, (j, k) in enumerate(variants, start=1):
        table[v, j] = k
    images = _sample_variants(pipe, calib, boundaries, table)
    reference = _embed(images[: calib.num_images], feature_net)
    # The typical distance: each sample against the next sample of the same class (a different noise draw).
    num_classes = pipe.num_classes
    shift = num_classes if calib.num_images > num_classes else 1
    typical = float(((reference[shift:] - reference[:-shift]) ** 2).sum(1).mean())
    measured: list[dict[int, float]] = [{num_blocks: 0.0} for _ in counts]
    for v, (j, k) in enumerate(variants, start=1):
        chunk = images[v * calib.num_images : (v + 1) * calib.num_images]
        measured[j][k] = float(((_embed(chunk, feature_net) - reference) ** 2).sum(1).mean())
        if progress:
            logger.info("bucket %d depth %d: deviation %.4g", j, k, measured[j][k])
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
        # Deviation can only be trusted to fall with depth: enforce it (measurement noise otherwise).
        for k in range(num_blocks - 2, -1, -1):
            full[k] = max(full[k], full[k + 1])
        deviation.append(full)
    return {"boundaries": boundaries, "steps_per_bucket": counts, "deviation": deviation,
            "typical_distance": typical, "num_blocks": num_blocks}


def schedule_from_deviation(measurement: dict[str, Any], budget: float | None = None,
                            tolerance: float | None = None) -> tuple[TimestepSchedule, dict[str, Any]]:
    """The calibrated schedule for a budget (fraction of block evaluations) or a tolerance (see module doc)."""
    if (budget is None) == (tolerance is None):
        raise ValueError(f"give exactly one of budget and tolerance, got budget={budget!r}, tolerance={tolerance!r}")
    n = measurement["num_blocks"]
    counts = measurement["steps_per_bucket"]
    deviation = measurement["deviation"]
    if budget is not None:
        depths = allocate_depths(deviation, counts, n, budget)
    else:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
            raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
        allowed = tolerance * measurement["typical_distance"]
        depths = [n] * len(counts)
        total_blocks = sum(counts) * n
        for used in range(sum(counts), total_blocks + 1):  # cheapest plan that stays within the tolerance
            plan = allocate_depths(deviation, counts, n, used / total_blocks)
            if sum(deviation[j][k - 1] for j, k in enumerate(plan)) <= allowed:
                depths = plan
                break
    predicted = sum(deviation[j][k - 1] for j, k in enumerate(depths))
    fraction = sum(c * k for c, k in zip(counts, depths)) / (sum(counts) * n)
    info = {"depths": depths, "predicted_deviation": predicted,
            "predicted_relative_deviation": predicted / max(measurement["typical_distance"], 1e-12),
            "block_fraction": fraction}
    return TimestepSchedule(boundaries=measurement["boundaries"], depths=depths), info


def calibrate_schedule(
    pipe: Any, budget: float | None = None, tolerance: float | None = None, calib: CalibrationSet | None = None,
    feature_net: Any = None, measurement: dict[str, Any] | None = None, progress: bool = False,
) -> CalibrationResult:
    """A `TimestepSchedule` calibrated to `budget` (fraction of full-depth block evaluations) or `tolerance`."""
    calib = calib or CalibrationSet()
    measurement = measurement or measure_depth_deviation(pipe, calib, feature_net, progress=progress)
    schedule, info = schedule_from_deviation(measurement, budget=budget, tolerance=tolerance)
    info.update({"kind": "schedule", "budget": budget, "tolerance": tolerance, "calibration_set": vars(calib).copy(),
                 "measurement": measurement})
    return CalibrationResult(EarlyExitConfig(policy=schedule), info)


