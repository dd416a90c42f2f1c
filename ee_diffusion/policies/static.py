"""Policies that fix each row's depth from its timestep alone: static depth and ASE schedules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .._validation import check_int
from .base import ExitContext, SerializablePolicy
from .buckets import bucket_index, check_boundaries

if TYPE_CHECKING:
    from ..families.base import BackboneAdapter


def _check_depth(depth: Any, name: str) -> int:
    return check_int(depth, name, 1, "number of blocks to run")


class _PlannedPolicy(SerializablePolicy):
    """Shared behaviour of policies that know every row's depth before the forward pass."""

    def plan_depths(self, timesteps: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """(B,) timesteps -> (B,) long: how many blocks each row runs."""
        raise NotImplementedError

    def validate_for(self, adapter: BackboneAdapter) -> None:
        num_blocks = adapter.num_blocks
        deepest = max(self._all_depths())
        if deepest > num_blocks:
            raise ValueError(
                f"{type(self).__name__} asks for depth {deepest} but the model has {num_blocks} blocks; "
                f"depths must lie in 1..{num_blocks}"
            )

    def _all_depths(self) -> list[int]:
        raise NotImplementedError

    def depth_range(self, num_blocks: int) -> tuple[int, int]:
        depths = [min(max(d, 1), num_blocks) for d in self._all_depths()]
        return min(depths), max(depths)

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        # (A,) bool: a row stops after the block that completes its depth.
        return self.plan_depths(ctx.timesteps, ctx.num_blocks) == ctx.block_index + 1


@dataclass
class StaticDepth(_PlannedPolicy):
    """Every row, at every step, runs blocks `0 .. depth-1` and returns the decode of block `depth-1`.

    The "exit after block k" baseline. `StaticDepth(depth=N)` is the full model.

    ```py
    >>> from ee_diffusion.schedules import StaticDepth
    >>> StaticDepth(depth=4).to_dict()
    {'type': 'StaticDepth', 'depth': 4}

    ```
    """

    depth: int

    def __post_init__(self) -> None:
        _check_depth(self.depth, "depth")

    def plan_depths(self, timesteps: torch.Tensor, num_blocks: int) -> torch.Tensor:
        return torch.full(timesteps.shape, min(self.depth, num_blocks), dtype=torch.long, device=timesteps.device)

    def _all_depths(self) -> list[int]:
        return [self.depth]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "StaticDepth", "depth": self.depth}


@dataclass
class TimestepSchedule(_PlannedPolicy):
    """ASE: a piecewise-constant depth per timestep - fewer blocks near pure noise.

    A row with timestep t runs `depths[j]` blocks, where j is the number of `boundaries` that are <= t. So
    `boundaries=[200, 400, 600, 800], depths=[28, 24, 20, 16, 12]` (the released DiT-XL/2 schedule) runs 28
    blocks for t in [0, 200), 24 for [200, 400), ..., 12 for [800, inf).

    ```py
    >>> import torch
    >>> from ee_diffusion.schedules import TimestepSchedule
    >>> s = TimestepSchedule(boundaries=[500], depths=[8, 4])
    >>> s.plan_depths(torch.tensor([10.0, 499.0, 500.0, 999.0]), num_blocks=8).tolist()
    [8, 8, 4, 4]

    ```
    """

    boundaries: Sequence[int | float]
    depths: Sequence[int]

    def __post_init__(self) -> None:
        self.boundaries = check_boundaries(self.boundaries, "boundaries")
        if isinstance(self.depths, (str, bytes)) or not isinstance(self.depths, Sequence):
            raise ValueError(f"depths must be a list of integers, got {self.depths!r}")
        self.depths = list(self.depths)
        if len(self.depths) != len(self.boundaries) + 1:
            raise ValueError(
                f"depths needs one entry more than boundaries (one per interval): got {len(self.boundaries)} "
                f"boundaries {self.boundaries!r} and {len(self.depths)} depths {self.depths!r}"
            )
        for d in self.depths:
            _check_depth(d, "every entry of depths")

    def plan_depths(self, timesteps: torch.Tensor, num_blocks: int) -> torch.Tensor:
        # (B,) -> (B,): bucket j = number of boundaries <= t.
        table = torch.tensor(self.depths, dtype=torch.long, device=timesteps.device)
        return table[bucket_index(timesteps, self.boundaries)].clamp(max=num_blocks)

    def _all_depths(self) -> list[int]:
        return list(self.depths)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "TimestepSchedule", "boundaries": list(self.boundaries), "depths": list(self.depths)}
