"""Distillation: the exits a dynamic policy made, observed over many samples, become a static schedule.

Static schedules plan every row's depth up front: no host synchronisation per block, and they run under
`torch.compile`.
"""

from __future__ import annotations

import math

import torch

from ..schedules import TimestepSchedule
from ..policies.buckets import bucket_index
from ..stats import ExitStats


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
    bucket = bucket_index(timesteps, boundaries)
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
