"""Placements: the timestep windows in which a training-free cache computes every row (it forecasts elsewhere).

A placement is given as indices into a sampling run's distinct timesteps (0 first) and stored as closed timestep
intervals `(low, high)`, so that a policy is a plain serializable value that does not depend on the scheduler
object: `BlockForecast.full_windows` and `CachedTailResidual.full_windows`.

```py
>>> import torch
>>> from ee_diffusion.caches.placement import in_windows, placement_windows
>>> windows = placement_windows([900.0, 700.0, 500.0, 300.0, 100.0], [0, 3])
>>> windows  # index 0 needs no window (a row's first call always computes); index 3 spans halfway to its neighbours
((200.0, 400.0),)
>>> in_windows(torch.tensor([900.0, 300.0, 100.0]), windows, {}).tolist()
[False, True, False]

```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._validation import check_number
from .newton import distinct_timesteps

Windows = tuple[tuple[float, float], ...]


def check_windows(windows: Any) -> Windows:
    """`full_windows` as a tuple of (low, high) float pairs, low <= high, or a ValueError naming what was given."""
    message = f"full_windows must be a list of (low, high) timestep pairs with low <= high, got {windows!r}"
    if isinstance(windows, (str, bytes)) or not isinstance(windows, Sequence):
        raise ValueError(message)
    out = []
    for window in windows:
        if isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or len(window) != 2:
            raise ValueError(message)
        try:
            low, high = (check_number(v, "a full_windows bound") for v in window)
        except ValueError:
            raise ValueError(message) from None
        if low > high:
            raise ValueError(message)
        out.append((low, high))
    return tuple(out)


def placement_windows(timesteps: list[float], calls: Sequence[int]) -> Windows:
    """The windows that compute exactly the run's distinct timesteps at indices `calls` (0 first; a Heun repeat is
    one timestep): each spans the midpoints to its neighbours, the last one reaches down to 0 (or its own timestep).
    Index 0 gets no window: a row's first call computes anyway, having nothing to forecast from."""
    distinct = distinct_timesteps(timesteps)
    picked = sorted(set(calls))
    if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(distinct) for c in picked):
        raise ValueError(f"calls must be indices of the run's {len(distinct)} distinct timesteps "
                         f"(0..{len(distinct) - 1}), got {list(calls)!r}")
    edges = [*((a + b) / 2 for a, b in zip(distinct, distinct[1:])), min(0.0, distinct[-1])]
    return tuple((edges[i], edges[i - 1]) for i in picked if i > 0)


def in_windows(t: torch.Tensor, windows: Windows, bounds: dict) -> torch.Tensor:
    """(B,) bool: the rows whose timestep `t` (B,) lies in one of `windows`. `bounds` keeps the windows as a (W, 2)
    tensor per device, built once rather than copied to the device at every call."""
    if not windows:
        return torch.zeros(t.shape, dtype=torch.bool, device=t.device)
    key = (t.device, windows)
    if key not in bounds:
        bounds[key] = torch.tensor(windows, device=t.device)
    low_high = bounds[key]  # (W, 2)
    return ((t[:, None] >= low_high[:, 0]) & (t[:, None] <= low_high[:, 1])).any(1)
