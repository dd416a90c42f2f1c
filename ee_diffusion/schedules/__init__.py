"""Exit policies: which rows stop after which block.

- `StaticDepth(depth)`: every row runs `depth` blocks (the "exit after block k" baseline).
- `TimestepSchedule(boundaries, depths)`: ASE, depth chosen from each row's timestep.
- `UncertaintyThreshold(threshold, patience, per_timestep)`: DeeDiff, a row stops when its uncertainty
  head is confident enough (needs `UncertaintyHeads`).
- `CachedTailResidual(threshold, ...)`: training-free, for pretrained models: a row that skips the tail
  adds its own tail residual cached from its last full call (FirstBlockCache's idea, decided per row).

Calibration to a budget or tolerance, and distillation of a dynamic policy into a static schedule:
`ee_diffusion.schedules.calibrate`. Write your own policy by implementing the `ExitPolicy` protocol.
"""

from .base import ExitContext, ExitPolicy, policy_from_dict
from .static import StaticDepth, TimestepSchedule
from .tail_cache import CachedTailResidual
from .uncertainty import UncertaintyThreshold

__all__ = [
    "CachedTailResidual",
    "ExitContext",
    "ExitPolicy",
    "StaticDepth",
    "TimestepSchedule",
    "UncertaintyThreshold",
    "calibrate_schedule",
    "calibrate_thresholds",
    "distil_schedule",
    "load_policy",
    "policy_from_dict",
]


_CALIBRATION = ("calibrate_schedule", "calibrate_thresholds", "distil_schedule", "load_policy")


def __getattr__(name: str):
    # Calibration imports the config (which imports this package): load it on first use.
    if name in _CALIBRATION:
        from . import calibrate

        return getattr(calibrate, name)
    raise AttributeError(f"module 'ee_diffusion.schedules' has no attribute {name!r}")
