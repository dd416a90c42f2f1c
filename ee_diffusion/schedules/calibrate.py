"""Calibration: choose a depth schedule or per-timestep thresholds for a compute budget or a quality tolerance.

Three tools, all measured on a *calibration set* (seeds disjoint from any evaluation):

- `calibrate_schedule(pipe, budget=0.5)`: a static `TimestepSchedule`. The sampling steps are grouped into
  timestep buckets; for every bucket and every shallower depth the calibration set is sampled once with only
  that bucket shortened, and the deviation of the final samples from the full model's (same noise, in the
  feature space of a feature network, or pixels) is recorded. Assuming the deviations add up, a small dynamic
  programme picks the depth per bucket with the least total deviation whose block evaluations fit the budget.
  With `tolerance=` instead of a budget it returns the cheapest schedule whose predicted deviation stays within
  `tolerance` times the typical distance between two different full-model samples.
- `calibrate_thresholds(pipe, budget=0.5)`: DeeDiff per-timestep certainty thresholds
  (`UncertaintyThreshold(per_timestep=...)`), each bucket's threshold set by bisection so that the rows'
  simulated mean exit depth matches the bucket's depth of the calibrated schedule; then checked by a real run
  and tightened until the measured fraction fits the budget.
- `distil_schedule(exit_stats)`: a dynamic policy observed over many samples becomes a static schedule (mean
  depth per timestep). Static schedules plan every row's depth up front: no host synchronisation per block,
  and they run under `torch.compile`.

`save_calibration(result, path)` writes JSON (`{"exit_config": ..., "calibration": ...}`), `load_policy(path)`
reads it back as an `EarlyExitConfig`.

```py
>>> from ee_diffusion.schedules.calibrate import allocate_depths
>>> # 2 buckets of 10 steps; shortening bucket 1 (noisy) is cheap, bucket 0 is expensive; 8 blocks, half budget
>>> deviation = [[9, 8, 7, 6, 5, 4, 2, 0], [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01, 0]]
>>> allocate_depths(deviation, steps_per_bucket=[10, 10], num_blocks=8, budget=0.5)
[7, 1]

```
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import EarlyExitConfig
from ..stats import ExitStats
from .base import ExitContext

logger = logging.getLogger(__name__)
from .static import TimestepSchedule
from .uncertainty import UncertaintyThreshold


@dataclass
class CalibrationSet:
    """The images calibration samples: `num_images` class-balanced images with noise seeds `seed`."""

    num_images: int = 40
    seed: int = 9001
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    batch_size: int = 64
    num_buckets: int = 4

    def __post_init__(self) -> None:
        for name in ("num_images", "num_inference_steps", "batch_size", "num_buckets"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class CalibrationResult:
    """The chosen exit config and what calibration measured (budget, fractions, per-bucket numbers)."""

    exit_config: EarlyExitConfig
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"exit_config": self.exit_config.to_dict(), "calibration": self.info}


def save_calibration(result: CalibrationResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")


def load_policy(path: str | Path) -> EarlyExitConfig:
    """Read a calibration JSON (or a bare `EarlyExitConfig` JSON) back as an `EarlyExitConfig`."""
    from .._io import read_json_file

    data = read_json_file(path, "calibration JSON")
    try:
        return EarlyExitConfig.from_dict(data["exit_config"] if isinstance(data, dict) and "exit_config" in data else data)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{str(path)!r}: {error}") from None


# ----------------------------------------------------------------------------------------------- buckets
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


# ----------------------------------------------------------------------------------------------- sampling
def _sample(pipe: Any, calib: CalibrationSet, exit_config: EarlyExitConfig | None):
    from ..eval.sampling import generate

    return generate(
        pipe, range(calib.num_images), exit_config=exit_config, num_inference_steps=calib.num_inference_steps,
        guidance_scale=calib.guidance_scale, seed=calib.seed, batch_size=calib.batch_size,
    )


class _VariantPlan:
    """Planned depths for a batch made of `len(table)` variants of the same `per_variant` images, variant-major
    (guided batches repeat the layout for the unconditional half): row r runs `table[variant(r), bucket(t_r)]`."""

    needs_certainty = False

    def __init__(self, boundaries: list[float], table: torch.Tensor, per_variant: int) -> None:
        self.boundaries = boundaries
        self.table = table
        self.per_variant = per_variant

    def plan_depths(self, timesteps: torch.Tensor, num_blocks: int) -> torch.Tensor:
        rows = torch.arange(timesteps.shape[0], device=timesteps.device)
        variant = (rows % (self.table.shape[0] * self.per_variant)) // self.per_variant
        edges = torch.tensor(self.boundaries, dtype=torch.float64, device=timesteps.device)
        bucket = torch.bucketize(timesteps.to(torch.float64), edges, right=True)
        return self.table.to(timesteps.device)[variant, bucket].clamp(max=num_blocks)

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        return self.plan_depths(ctx.timesteps, ctx.num_blocks)[ctx.rows] == ctx.block_index + 1


def _sample_variants(pipe: Any, calib: CalibrationSet, boundaries: list[float], table: torch.Tensor) -> torch.Tensor:
    """Images (V * n, C, H, W) of the calibration set under each row of `table`, in one pipeline call."""
    from ..eval.sampling import class_labels, image_generators

    transformer = pipe.transformer
    shape = (transformer.config.in_channels, transformer.config.sample_size, transformer.config.sample_size)
    indices = list(range(calib.num_images)) * table.shape[0]
    noise = torch.stack([torch.randn(shape, generator=g) for g in image_generators(indices, calib.seed)])
    out = pipe(
        class_labels=class_labels(indices, int(transformer.config.num_embeds_ada_norm)),
        num_inference_steps=calib.num_inference_steps, guidance_scale=calib.guidance_scale, latents=noise,
        exit_config=EarlyExitConfig(policy=_VariantPlan(boundaries, table, calib.num_images)), output_type="pt",
    )
    return out.images.float().cpu()


def _embed(images: torch.Tensor, feature_net: Any) -> torch.Tensor:
    if feature_net is None:
        return images.flatten(1).double()
    with torch.no_grad():
        return feature_net(images).double()


def _sampling_timesteps(pipe: Any, steps: int) -> list[float]:
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
    boundaries, counts = step_buckets(_sampling_timesteps(pipe, calib.num_inference_steps), calib.num_buckets)
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
    num_classes = int(pipe.transformer.config.num_embeds_ada_norm)
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


# --------------------------------------------------------------------------------------------- thresholds
class _CertaintyRecorder:
    """A policy that never exits and records every active row's certainty after every block."""

    needs_certainty = True

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        if ctx.block_index == 0:
            self.calls.append({"timesteps": ctx.timesteps.detach().cpu(), "certainty": []})
        self.calls[-1]["certainty"].append(ctx.certainty.detach().float().cpu())
        return torch.zeros_like(ctx.timesteps, dtype=torch.bool)


def record_certainties(pipe: Any, calib: CalibrationSet) -> list[dict[str, torch.Tensor]]:
    """Full-depth sampling of the calibration set; per model call the (R,) timesteps and (R, N-1) certainties."""
    recorder = _CertaintyRecorder()
    _sample(pipe, calib, EarlyExitConfig(policy=recorder))
    return [{"timesteps": c["timesteps"], "certainty": torch.stack(c["certainty"], dim=1)} for c in recorder.calls]


def simulate_depths(certainty: torch.Tensor, thresholds: torch.Tensor, patience: int, num_blocks: int,
                    paired: bool) -> torch.Tensor:
    """(R, N-1) certainties and (R,) thresholds -> (R,) depths under `UncertaintyThreshold`'s rule."""
    rows, blocks = certainty.shape
    passed = certainty > thresholds[:, None]
    streak = torch.zeros(rows, dtype=torch.long)
    wants = torch.zeros(rows, blocks, dtype=torch.bool)
    for i in range(blocks):
        streak = torch.where(passed[:, i], streak + 1, torch.zeros_like(streak))
        wants[:, i] = passed[:, i] if (patience == 1 or i >= num_blocks // 2) else streak >= patience
    if paired and rows % 2 == 0:
        half = rows // 2
        both = wants[:half] & wants[half:]
        wants = torch.cat([both, both])
    depth = torch.full((rows,), num_blocks, dtype=torch.long)
    first = torch.where(wants.any(1), wants.float().argmax(1) + 1, depth)
    return first


def calibrate_thresholds(
    pipe: Any, budget: float, calib: CalibrationSet | None = None, feature_net: Any = None, patience: int = 2,
    cfg_pairing: str = "together", measurement: dict[str, Any] | None = None, max_rounds: int = 12,
    progress: bool = False,
) -> CalibrationResult:
    """Per-timestep DeeDiff thresholds whose measured block fraction on the calibration set fits `budget`.

    Each round simulates thresholds for per-bucket target depths, then measures them for real; while the
    measurement is over budget the targets are lowered. Raises `ValueError` if no round fits the budget.
    """
    if pipe.exit_heads is None:
        raise ValueError("calibrate_thresholds needs a pipeline with exit_heads (UncertaintyHeads)")
    calib = calib or CalibrationSet()
    measurement = measurement or measure_depth_deviation(pipe, calib, feature_net, progress=progress)
    n = measurement["num_blocks"]
    boundaries = measurement["boundaries"]
    calls = record_certainties(pipe, calib)
    edges = torch.tensor(boundaries, dtype=torch.float64)
    certainty = torch.cat([c["certainty"] for c in calls])
    timesteps = torch.cat([c["timesteps"] for c in calls])
    call_rows = [c["timesteps"].numel() for c in calls]
    bucket = torch.bucketize(timesteps.double(), edges, right=True)
    paired = cfg_pairing == "together" and calib.guidance_scale > 1

    def simulate(thresholds: list[float]) -> torch.Tensor:
        per_row = torch.tensor(thresholds, dtype=torch.float32)[bucket]
        parts, start = [], 0
        for rows in call_rows:  # pairs live within one call
            parts.append(simulate_depths(certainty[start:start + rows], per_row[start:start + rows], patience, n, paired))
            start += rows
        return torch.cat(parts)

    target_budget = budget
    history = []
    for _ in range(max_rounds):
        _, sched_info = schedule_from_deviation(measurement, budget=target_budget)
        targets = sched_info["depths"]
        thresholds = [0.5] * len(targets)
        for j, target in enumerate(targets):
            lo, hi = 1e-4, 1 - 1e-6  # depth grows with the threshold
            for _ in range(30):
                mid = (lo + hi) / 2
                trial = list(thresholds)
                trial[j] = mid
                depth = simulate(trial)[bucket == j].float().mean()
                lo, hi = (mid, hi) if depth < target else (lo, mid)
            thresholds[j] = hi
        policy = UncertaintyThreshold(threshold=thresholds[0], patience=patience,
                                      per_timestep={"boundaries": boundaries, "thresholds": thresholds})
        config = EarlyExitConfig(policy=policy, cfg_pairing=cfg_pairing)
        run = _sample(pipe, calib, config)
        fraction = run.block_evals / (run.model_rows * n)
        history.append({"target_budget": target_budget, "targets": targets, "thresholds": thresholds,
                        "simulated_fraction": float(simulate(thresholds).float().mean() / n),
                        "measured_fraction": fraction})
        if progress:
            logger.info("thresholds %s: measured fraction %.3f", ["%.4f" % t for t in thresholds], fraction)
        if fraction <= budget + 1e-9:
            break
        lowered = max(1.0 / n, target_budget - (fraction - budget) - 0.01)
        if lowered >= target_budget:
            break  # the targets cannot go lower
        target_budget = lowered
    if history[-1]["measured_fraction"] > budget + 1e-9:
        raise ValueError(
            f"no thresholds fit the budget {budget} on the calibration set: the cheapest tried ran "
            f"{min(h['measured_fraction'] for h in history):.3f} of the blocks (patience={patience} keeps rows "
            f"running in the first half of the network); raise the budget or lower patience"
        )
    info = {"kind": "thresholds", "budget": budget, "patience": patience, "cfg_pairing": cfg_pairing,
            "block_fraction": history[-1]["measured_fraction"], "rounds": history,
            "calibration_set": vars(calib).copy()}
    return CalibrationResult(config, info)


# ------------------------------------------------------------------------------------------------ distil
def distil_schedule(stats: ExitStats, boundaries: list[float] | None = None, rounding: str = "ceil") -> TimestepSchedule:
    """A static `TimestepSchedule` from the exits a dynamic policy made (an `ExitStats` over many samples).

    Without `boundaries`, every distinct observed timestep gets its own bucket (boundaries at midpoints,
    equal neighbours merged); each bucket's depth is the mean observed depth, rounded up (`"ceil"`) or to the
    nearest integer (`"round"`).

    ```py
    >>> import torch
    >>> from ee_diffusion.stats import ExitStats
    >>> stats = ExitStats(num_blocks=8)
    >>> stats.record(torch.tensor([900.0, 900.0]), torch.tensor([2, 3]), False)
    >>> stats.record(torch.tensor([100.0, 100.0]), torch.tensor([8, 7]), False)
    >>> distil_schedule(stats).to_dict()
    {'type': 'TimestepSchedule', 'boundaries': [500.0], 'depths': [8, 3]}

    ```
    """
    if rounding not in ("ceil", "round"):
        raise ValueError(f"rounding must be 'ceil' or 'round', got {rounding!r}")
    if stats.num_calls == 0:
        raise ValueError("distil_schedule needs the statistics of at least one model call")
    timesteps = torch.cat(stats.timesteps).double()
    depths = torch.cat(stats.blocks_run).double()
    if boundaries is None:
        distinct = torch.unique(timesteps).tolist()
        boundaries = [(a + b) / 2 for a, b in zip(distinct, distinct[1:])]
    bucket = torch.bucketize(timesteps, torch.tensor(boundaries, dtype=torch.float64), right=True)
    per_bucket = []
    for j in range(len(boundaries) + 1):
        chosen = depths[bucket == j]
        mean = float(chosen.mean()) if chosen.numel() else float(stats.num_blocks)
        per_bucket.append(max(1, min(stats.num_blocks, math.ceil(mean - 1e-9) if rounding == "ceil" else round(mean))))
    # Merge neighbouring buckets of equal depth.
    merged_b, merged_d = [], [per_bucket[0]]
    for b, d in zip(boundaries, per_bucket[1:]):
        if d != merged_d[-1]:
            merged_b.append(float(b))
            merged_d.append(d)
    return TimestepSchedule(boundaries=merged_b, depths=merged_d)


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
        run = _sample(pipe, calib, EarlyExitConfig(policy=UncertaintyThreshold(threshold)))
        stats = run.extra.get("exit_stats")
        schedule = distil_schedule(stats)
        n = len(pipe.transformer.transformer_blocks)
        fraction = sum(c * k for c, k in zip(_bucket_steps(pipe, steps, schedule), schedule.depths)) / (steps * n)
        return CalibrationResult(EarlyExitConfig(policy=schedule),
                                 {"kind": "distil", "observed_threshold": threshold, "block_fraction": fraction,
                                  "observed_fraction": run.block_evals / (run.model_rows * n),
                                  "calibration_set": vars(calib).copy()})
    raise ValueError(f"kind must be 'schedule', 'thresholds' or 'distil', got {kind!r}")


def _bucket_steps(pipe: Any, steps: int, schedule: TimestepSchedule) -> list[int]:
    timesteps = torch.tensor(_sampling_timesteps(pipe, steps), dtype=torch.float64)
    bucket = torch.bucketize(timesteps, torch.tensor(schedule.boundaries, dtype=torch.float64), right=True)
    return [int((bucket == j).sum()) for j in range(len(schedule.depths))]


def thresholds_for_fractions(pipe: Any, fractions: list[float], calib: CalibrationSet | None = None,
                             patience: int = 2, cfg_pairing: str = "together") -> list[float]:
    """Global DeeDiff thresholds whose simulated block fraction on the calibration set is each of `fractions`
    (a threshold sweep placed at chosen compute levels, whatever the heads' certainty scale)."""
    calib = calib or CalibrationSet()
    n = len(pipe.transformer.transformer_blocks)
    calls = record_certainties(pipe, calib)
    paired = cfg_pairing == "together" and calib.guidance_scale > 1

    def fraction(threshold: float) -> float:
        depths = [simulate_depths(c["certainty"], torch.full((c["certainty"].shape[0],), threshold), patience, n, paired)
                  for c in calls]
        return float(torch.cat(depths).float().mean()) / n

    thresholds = []
    for goal in fractions:
        lo, hi = 1e-4, 1 - 1e-6
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fraction(mid) < goal else (lo, mid)
        thresholds.append(round(hi, 4))
    return thresholds
