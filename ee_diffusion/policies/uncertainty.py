"""DeeDiff: a row stops when its uncertainty head is confident enough."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_int
from .base import ExitContext, SerializablePolicy
from .buckets import bucket_index, check_boundaries


def _check_threshold(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a certainty strictly between 0 and 1, got {value!r}")
    return float(value)


@dataclass
class UncertaintyThreshold(SerializablePolicy):
    """Exit a row after block i when the mean certainty of its head `i` exceeds `threshold`.

    Certainty is `1 - u` of DeeDiff's uncertainty estimation module, averaged over the row's pixels and
    channels. In the first half of the network a row must pass the threshold on `patience` consecutive
    blocks before it stops (the authors' code uses 2); in the second half one pass is enough.

    Args:
        threshold: certainty in (0, 1). The authors used 0.92 (CIFAR-10, ImageNet-256), 0.95 (CelebA).
        patience: consecutive passes needed in the first half of the network (>= 1; 1 disables patience).
        per_timestep: optional per-timestep-bucket thresholds, `{"boundaries": [b_1, ...], "thresholds":
            [c_0, c_1, ...]}`; a row with timestep t uses `c_j`, j = number of boundaries <= t. Replaces
            `threshold` when given.

    ```py
    >>> from ee_diffusion.schedules import UncertaintyThreshold
    >>> policy = UncertaintyThreshold(0.9, per_timestep={"boundaries": [500], "thresholds": [0.95, 0.85]})
    >>> policy.needs_certainty
    True

    ```
    """

    threshold: float = 0.92
    patience: int = 2
    per_timestep: Mapping[str, Sequence[float]] | None = None

    needs_certainty = True

    def __post_init__(self) -> None:
        self.threshold = _check_threshold(self.threshold, "threshold")
        check_int(self.patience, "patience", 1)
        if self.per_timestep is not None:
            if not isinstance(self.per_timestep, Mapping) or set(self.per_timestep) != {"boundaries", "thresholds"}:
                raise ValueError(
                    "per_timestep must be a dict with exactly the keys 'boundaries' and 'thresholds', "
                    f"got {self.per_timestep!r}"
                )
            boundaries = check_boundaries(self.per_timestep["boundaries"], "per_timestep boundaries")
            values = self.per_timestep["thresholds"]
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise ValueError(f"per_timestep 'thresholds' must be a list of numbers, got {values!r}")
            thresholds = [_check_threshold(c, "every per_timestep threshold") for c in values]
            if len(thresholds) != len(boundaries) + 1:
                raise ValueError(
                    f"per_timestep needs one threshold more than boundaries: got {len(boundaries)} boundaries "
                    f"and {len(thresholds)} thresholds"
                )
            self.per_timestep = {"boundaries": boundaries, "thresholds": thresholds}

    def thresholds_for(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(A,) timesteps -> (A,) thresholds (float32, on the timesteps' device)."""
        if self.per_timestep is None:
            return torch.full(timesteps.shape, self.threshold, dtype=torch.float32, device=timesteps.device)
        table = torch.tensor(self.per_timestep["thresholds"], dtype=torch.float32, device=timesteps.device)
        return table[bucket_index(timesteps, self.per_timestep["boundaries"])]

    def create_call_state(self, batch_size: int, device: torch.device) -> torch.Tensor | None:
        """(B,) long: every row's count of consecutive passes in this call (only with patience > 1)."""
        return None if self.patience == 1 else torch.zeros(batch_size, dtype=torch.long, device=device)

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        if ctx.certainty is None:
            raise ValueError("UncertaintyThreshold needs certainties: pass `heads=` to apply_early_exit")
        passed = ctx.certainty.float() > self.thresholds_for(ctx.timesteps)  # (A,)
        if self.patience == 1 or ctx.block_index >= ctx.num_blocks // 2:
            return passed
        streak = ctx.call_state  # (B,) consecutive passes, across the blocks of this call
        if streak is None:
            raise ValueError("UncertaintyThreshold with patience > 1 needs ctx.call_state from create_call_state()")
        count = torch.where(passed, streak[ctx.rows] + 1, torch.zeros_like(streak[ctx.rows]))
        streak[ctx.rows] = count
        return count >= self.patience

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "UncertaintyThreshold",
            "threshold": self.threshold,
            "patience": self.patience,
            "per_timestep": None if self.per_timestep is None else dict(self.per_timestep),
        }
