"""Exit policies: which rows stop after which block.

- `StaticDepth(depth)`: every row runs `depth` blocks (the "exit after block k" baseline).
- `TimestepSchedule(boundaries, depths)`: ASE, depth chosen from each row's timestep.
- `UncertaintyThreshold(threshold, patience, per_timestep)`: DeeDiff, a row stops when its uncertainty
  head is confident enough (needs `UncertaintyHeads`).
- `CachedTailResidual(threshold, ...)`: training-free, for pretrained models: a row that skips the tail
  adds its own tail residual cached from its last full call (FirstBlockCache's idea, decided per row), or
  forecast in the timestep from its last full calls (`forecast_order=1` or `2`).
- `BlockForecast(interval, forecast_order, ...)`: training-free, TaylorSeer's structure per row: a row computes
  every block's attention and feed-forward on every `interval`-th call of its own and forecasts their outputs in
  its timestep on the others; every block's norms, modulation, gates and residual additions always run.

Write your own policy by subclassing `ExitPolicy`. Calibration of policies to a budget or a tolerance lives in
`ee_diffusion.calibration` (it samples pipelines, so it sits above the core).
"""

from .base import ExitContext, ExitPolicy, PolicyState, SerializablePolicy, as_exit_policy, policy_from_dict
from .block_forecast import BlockForecast, BlockForecastState
from .static import StaticDepth, TimestepSchedule
from .tail_cache import CachedTailResidual, TailCacheState
from .uncertainty import UncertaintyThreshold

__all__ = [
    "BlockForecast",
    "BlockForecastState",
    "CachedTailResidual",
    "ExitContext",
    "ExitPolicy",
    "PolicyState",
    "SerializablePolicy",
    "StaticDepth",
    "TailCacheState",
    "TimestepSchedule",
    "UncertaintyThreshold",
    "as_exit_policy",
    "policy_from_dict",
]
