"""Exit policies: which rows stop after which block.

- `StaticDepth(depth)`: every row runs `depth` blocks (the "exit after block k" baseline).
- `TimestepSchedule(boundaries, depths)`: ASE, depth chosen from each row's timestep.
- `UncertaintyThreshold(threshold, patience, per_timestep)`: DeeDiff, a row stops when its uncertainty
  head is confident enough (needs `UncertaintyHeads`).

Write your own by implementing the `ExitPolicy` protocol.
"""

from .base import ExitContext, ExitPolicy, policy_from_dict
from .static import StaticDepth, TimestepSchedule
from .uncertainty import UncertaintyThreshold

__all__ = [
    "ExitContext",
    "ExitPolicy",
    "StaticDepth",
    "TimestepSchedule",
    "UncertaintyThreshold",
    "policy_from_dict",
]
