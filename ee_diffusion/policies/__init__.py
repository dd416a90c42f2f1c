"""Exit policies: which rows stop after which block (the exit contract, `ExitPolicy`).

- `StaticDepth(depth)`: every row runs `depth` blocks (the "exit after block k" baseline).
- `TimestepSchedule(boundaries, depths)`: ASE, depth chosen from each row's timestep.
- `UncertaintyThreshold(threshold, patience, per_timestep)`: DeeDiff, a row stops when its uncertainty
  head is confident enough (needs `UncertaintyHeads`).

Write your own policy by subclassing `ExitPolicy`. Calibration of policies to a budget or a tolerance lives in
`ee_diffusion.calibration` (it samples pipelines, so it sits above the core). `ee_diffusion.schedules` re-exports
these names.
"""

from .base import ExitContext, ExitPolicy, SerializablePolicy, as_exit_policy, policy_from_dict
from .static import StaticDepth, TimestepSchedule
from .uncertainty import UncertaintyThreshold

__all__ = [
    "ExitContext",
    "ExitPolicy",
    "SerializablePolicy",
    "StaticDepth",
    "TimestepSchedule",
    "UncertaintyThreshold",
    "as_exit_policy",
    "policy_from_dict",
]
