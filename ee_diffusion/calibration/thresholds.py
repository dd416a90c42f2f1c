"""Calibrated DeeDiff thresholds: per-timestep `UncertaintyThreshold`s for a compute budget.

Calibration samples the calibration set once at full depth and records every row's certainty after every
block; a candidate policy is then *simulated* on those certainties by calling the policy itself, block by
block, exactly as the engine does (same `exit_mask`, same per-call state, same guidance pairing) - so what is
calibrated is what runs. Each bucket's threshold is set by bisection so that the rows' simulated mean exit
depth matches the bucket's depth in the calibrated schedule; then the thresholds are checked by a real run and
tightened until the measured block fraction fits the budget.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..config import EarlyExitConfig
from ..engine import pair_mask
from ..schedules import ExitContext, ExitPolicy, UncertaintyThreshold
from ..policies.buckets import bucket_index
from .common import CalibrationResult, CalibrationSet, as_target, bisect_increasing, sample_calibration_set
from .schedule import measure_depth_deviation, schedule_from_deviation

logger = logging.getLogger(__name__)


class _CertaintyRecorder(ExitPolicy):
    """A policy that never exits and records every active row's certainty after every block."""

    needs_certainty = True

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        if ctx.block_index == 0:
            self.calls.append({"timesteps": ctx.timesteps.detach().cpu(), "certainty": []})
        self.calls[-1]["certainty"].append(ctx.certainty.detach().float().cpu())
        return torch.zeros_like(ctx.timesteps, dtype=torch.bool)


class RecordedCertainties:
    """Every row's certainty after every block, over the model calls of a full-depth run.

    `certainty` (R, N-1) and `timesteps` (R,) stack the rows of all calls; for guided runs the rows are ordered
    [conditional rows of every call; their unconditional partners, in the same order], so that the two halves
    pair up as within one call.
    """

    def __init__(self, calls: list[dict[str, torch.Tensor]], num_blocks: int, paired: bool) -> None:
        self.num_blocks = num_blocks
        self.paired = paired
        halves = 2 if paired else 1  # every call's first half (guided: its conditional rows) first
        self.certainty = torch.cat([c["certainty"].chunk(halves)[h] for h in range(halves) for c in calls])
        self.timesteps = torch.cat([c["timesteps"].chunk(halves)[h] for h in range(halves) for c in calls])


def record_certainties(pipe: Any, calib: CalibrationSet, paired: bool = False) -> RecordedCertainties:
    """Full-depth sampling of the calibration set, recording every row's certainty after every block but the last."""
    recorder = _CertaintyRecorder()
    target = as_target(pipe)
    sample_calibration_set(target, calib, EarlyExitConfig(policy=recorder))
    calls = [{"timesteps": c["timesteps"], "certainty": torch.stack(c["certainty"], dim=1)} for c in recorder.calls]
    return RecordedCertainties(calls, target.num_blocks, paired)


def simulate_depths(policy: ExitPolicy, recorded: RecordedCertainties) -> torch.Tensor:
    """(R,) number of blocks every recorded row runs under `policy`, by calling the policy block by block.

    A row's decisions depend only on its own certainties and timestep (and its partner's, when paired), so
    running the policy on every recorded row at every block, without compaction, gives each row's engine exit.
    """
    rows = recorded.timesteps.shape[0]
    n = recorded.num_blocks
    call_state = policy.create_call_state(rows, torch.device("cpu"))
    depth = torch.full((rows,), n, dtype=torch.long)
    exited = torch.zeros(rows, dtype=torch.bool)
    for block in range(n - 1):
        if not policy.decides_after(block, n):
            continue
        ctx = ExitContext(block_index=block, num_blocks=n, timesteps=recorded.timesteps,
                          certainty=recorded.certainty[:, block], rows=torch.arange(rows), batch_size=rows,
                          call_state=call_state)
        wanted = policy.exit_mask(ctx)
        if recorded.paired:
            wanted = pair_mask(wanted)
        depth[wanted & ~exited] = block + 1
        exited |= wanted
    return depth


def _threshold_policy(thresholds: list[float], boundaries: list[float], patience: int) -> UncertaintyThreshold:
    return UncertaintyThreshold(threshold=thresholds[0], patience=patience,
                                per_timestep={"boundaries": list(boundaries), "thresholds": list(thresholds)})


def calibrate_thresholds(
    pipe: Any, budget: float, calib: CalibrationSet | None = None, feature_net: Any = None, patience: int = 2,
    cfg_pairing: str = "together", measurement: dict[str, Any] | None = None, max_rounds: int = 12,
    progress: bool = False,
) -> CalibrationResult:
    """Per-timestep DeeDiff thresholds whose measured block fraction on the calibration set fits `budget`.

    Each round simulates thresholds for per-bucket target depths, then measures them for real; while the
    measurement is over budget the targets are lowered. Raises `ValueError` if no round fits the budget.
    """
    target = as_target(pipe)
    if target.exit_heads is None:
        raise ValueError("calibrate_thresholds needs exit heads (UncertaintyHeads): a pipeline of ours with "
                         "exit_heads, or as_target(stock_pipe, conditioning, heads=heads)")
    calib = calib or CalibrationSet()
    measurement = measurement or measure_depth_deviation(target, calib, feature_net, progress=progress)
    n = measurement["num_blocks"]
    boundaries = measurement["boundaries"]
    recorded = record_certainties(target, calib, paired=cfg_pairing == "together" and target.guidance(calib) > 1)
    bucket = bucket_index(recorded.timesteps, boundaries)

    target_budget = budget
    history = []
    for _ in range(max_rounds):
        _, sched_info = schedule_from_deviation(measurement, budget=target_budget)
        targets = sched_info["depths"]
        thresholds = [0.5] * len(targets)
        for j, depth_goal in enumerate(targets):
            # The mean depth of bucket j's rows grows with its threshold.
            def depth_in_bucket(value: float, j: int = j) -> float:
                trial = thresholds[:j] + [value] + thresholds[j + 1:]
                return float(simulate_depths(_threshold_policy(trial, boundaries, patience), recorded)[bucket == j]
                             .float().mean())

            thresholds[j] = bisect_increasing(depth_in_bucket, depth_goal)
        policy = _threshold_policy(thresholds, boundaries, patience)
        config = EarlyExitConfig(policy=policy, cfg_pairing=cfg_pairing)
        run = sample_calibration_set(target, calib, config)
        fraction = run.block_evals / (run.model_rows * n)
        history.append({"target_budget": target_budget, "targets": targets, "thresholds": thresholds,
                        "simulated_fraction": float(simulate_depths(policy, recorded).float().mean() / n),
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
            "calibration_set": vars(calib).copy(), "conditioning": target.conditioning.to_dict()}
    return CalibrationResult(config, info)


def thresholds_for_fractions(pipe: Any, fractions: list[float], calib: CalibrationSet | None = None,
                             patience: int = 2, cfg_pairing: str = "together") -> list[float]:
    """Global DeeDiff thresholds whose simulated block fraction on the calibration set is each of `fractions`
    (a threshold sweep placed at chosen compute levels, whatever the heads' certainty scale)."""
    calib = calib or CalibrationSet()
    target = as_target(pipe)
    recorded = record_certainties(target, calib, paired=cfg_pairing == "together" and target.guidance(calib) > 1)

    def fraction(threshold: float) -> float:
        policy = UncertaintyThreshold(threshold, patience=patience)
        return float(simulate_depths(policy, recorded).float().mean()) / recorded.num_blocks

    return [round(bisect_increasing(fraction, goal), 4) for goal in fractions]
