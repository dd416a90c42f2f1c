"""Per-row divided differences: the arithmetic of forecasting a quantity as a polynomial in each row's timestep.

Every row keeps the Newton form of its own interpolating polynomial through its last p + 1 computed calls, newest
node first, so nodes need not be evenly spaced and each row may have computed at different calls (`BlockForecast`).

```py
>>> import torch
>>> from ee_diffusion.caches.newton import add_point_simple, evaluate
>>> history = torch.tensor([[[3.0], [0.5]]])  # one row: 3 at node t = 2 (newest), slope 0.5 from node t = 4
>>> gaps = [torch.tensor([[1.0 - 2.0]])]  # a new point at t = 1: its gap to the newest node
>>> new = add_point_simple(history, torch.tensor([[2.5]]), gaps)  # 2.5 at t = 1
>>> new[0, :, 0].tolist()  # the newest value, and the slope between t = 2 and t = 1
[2.5, 0.5]
>>> columns = [torch.tensor([[0.0 - 1.0]]), torch.tensor([[0.0 - 2.0]])]  # t = 0 minus the nodes 1 and 2
>>> evaluate(new.unbind(1), columns, torch.float32).item()  # the line through both, at t = 0
2.0

```
"""

from __future__ import annotations

import torch

#: Timesteps closer than this (training units) are one node of a row's history (Heun-type solvers call the model
#: twice at one timestep; a divided difference cannot divide by their gap).
SAME_TIMESTEP = 1e-3


def newton_gaps(nodes: torch.Tensor, points: torch.Tensor, t: torch.Tensor, repeat: torch.Tensor) -> torch.Tensor:
    """(R, p) the divisor of each Newton level j = 1..p when the rows add the point at `t` (R,) to their nodes
    (R, p+1), newest first, holding `points` (R,) points; `repeat` (R,) bool: `t` is the row's newest node again.
    A level a row has too few points for gets 1 (its difference is zeroed in `add_point`, never divided by 0)."""
    p = nodes.shape[1] - 1
    j = torch.arange(1, p + 1, device=nodes.device)  # (p,)
    # New node t: d'_j = (d'_{j-1} - d_{j-1}) / (t - n_{j-1}); the newest node again: (...) / (n_0 - n_j).
    gap = torch.where(repeat[:, None], nodes[:, :1] - nodes[:, 1:], t[:, None] - nodes[:, :-1])
    defined = torch.where(repeat[:, None], points[:, None] > j, points[:, None] >= j)  # (R, p)
    return torch.where(defined, gap, torch.ones_like(gap))


def add_point(old: torch.Tensor, value: torch.Tensor, gaps: torch.Tensor, points: torch.Tensor,
               repeat: torch.Tensor) -> torch.Tensor:
    """The rows' Newton form after one more point: `value` (R, *S).

    `old` (R, p+1, *S): divided differences over the rows' `points` (R,) newest nodes, newest first; `gaps` (R, p)
    from `newton_gaps`. `repeat` (R,) bool: the point is at the row's newest node again, whose value is replaced
    (never divided by). A difference the row has too few points for is 0, so it forecasts at the order its
    history allows.
    """
    view = (-1,) + (1,) * (value.ndim - 1)
    new = [value]
    for j in range(1, old.shape[1]):
        defined = torch.where(repeat, points > j, points >= j).view(view)  # (R, 1, ...)
        # The newest node again: d'_j = d_j + (d'_{j-1} - d_{j-1}) / gap; a new node: the same without d_j.
        kept = torch.where(repeat.view(view), old[:, j], torch.zeros_like(old[:, j]))
        step = kept + (new[-1] - old[:, j - 1]) / gaps[:, j - 1].to(value.dtype).view(view)
        new.append(torch.where(defined, step, torch.zeros_like(step)))
    return torch.stack(new, 1)


def add_point_in_place(levels: tuple[torch.Tensor, ...], value: torch.Tensor, columns: list[torch.Tensor]) -> None:
    """`add_point` for a call where every row computes, adds a new node and has every level defined, written into
    the history itself: `levels` its p+1 (B, *S) views (`BlockForecastState.levels`), value (B, *S) of their dtype;
    d'_j = (d'_{j-1} - d_{j-1}) / gap_j, `columns` the gaps per level, each (B, 1, ...). Fewer tensor operations
    than building a new history: batch 1 is bound by them, not by arithmetic."""
    new, prev = [], value
    for j in range(1, len(levels)):
        prev = torch.sub(prev, levels[j - 1]).div_(columns[j - 1])
        new.append(prev)
    levels[0].copy_(value)
    for level, level_value in zip(levels[1:], new):
        level.copy_(level_value)


def add_point_simple(old: torch.Tensor, value: torch.Tensor, columns: list[torch.Tensor]) -> torch.Tensor:
    """`add_point` when every row adds a new node and has every level defined (`columns`: each level's gaps,
    (R, 1, ...) in the value's dtype)."""
    new = [value]
    for j in range(1, old.shape[1]):
        new.append((new[-1] - old[:, j - 1]).div_(columns[j - 1]))
    return torch.stack(new, 1)


def evaluate(levels: tuple[torch.Tensor, ...], columns: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The p+1 (R, *S) divided differences `levels` -> (R, *S) their polynomial at the rows' timesteps, in `dtype`;
    `columns`: each timestep minus the row's node j, (R, 1, ...) in the arithmetic's dtype, for j = 0..p."""
    order = len(levels) - 1
    if order == 0:
        return levels[0].to(dtype)  # the last computed output itself: no arithmetic
    compute = torch.promote_types(dtype, torch.float32)
    out = levels[order].to(compute)
    for j in range(order - 1, -1, -1):  # Horner: d_0 + (t - n_0) * (d_1 + (t - n_1) * d_2)
        out = torch.addcmul(levels[j].to(compute), columns[j], out)
    return out.to(dtype)


def distinct_timesteps(timesteps: list[float]) -> list[float]:
    """A run's call timesteps without the repeats of Heun-type solvers (two calls at one timestep)."""
    return [float(t) for i, t in enumerate(timesteps) if i == 0 or abs(t - timesteps[i - 1]) > SAME_TIMESTEP]
