"""Timestep buckets: the one place where a list of boundaries is checked and timesteps are bucketed.

Bucket j of boundaries `[b_1, ..., b_k]` holds the timesteps t with exactly j boundaries <= t, so bucket 0 is
`t < b_1` and bucket k is `t >= b_k`. Policies (`TimestepSchedule`, `UncertaintyThreshold(per_timestep=...)`),
calibration and distillation all bucket through `bucket_index`.

```py
>>> import torch
>>> bucket_index(torch.tensor([10.0, 499.0, 500.0, 999.0]), [500]).tolist()
[0, 0, 1, 1]

```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def check_boundaries(values: Any, name: str = "boundaries") -> list[float | int]:
    """A list of finite, strictly increasing numbers, or a ValueError naming `name` and the received value."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of timesteps (numbers), got {values!r}")
    values = list(values)
    for b in values:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or b != b or abs(b) == float("inf"):
            raise ValueError(f"{name} must be numbers (finite timesteps), got {values!r}")
    if any(b1 >= b2 for b1, b2 in zip(values, values[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {values!r}")
    return values


def bucket_index(timesteps: torch.Tensor, boundaries: Sequence[float]) -> torch.Tensor:
    """(R,) timesteps -> (R,) long bucket ids on the timesteps' device (vectorised, no per-row Python)."""
    edges = torch.tensor(list(boundaries), dtype=torch.float64, device=timesteps.device)
    return torch.bucketize(timesteps.to(torch.float64), edges, right=True)
