"""The public name for what decides, per row, how much of the model runs: exit policies and training-free caches.

Exit policies (`ee_diffusion.policies`, the exit contract `ExitPolicy`):

- `StaticDepth(depth)`, `TimestepSchedule(boundaries, depths)` (ASE), `UncertaintyThreshold(threshold, ...)`
  (DeeDiff, needs `UncertaintyHeads`).

Training-free caches for pretrained models (`ee_diffusion.caches`, their own contract `TrainingFreeCache`):

- `CachedTailResidual(threshold, ...)`: a row skips the tail and adds its own cached or forecast tail residual.
- `BlockForecast(interval, forecast_order, ...)`: a row forecasts every block's attention and feed-forward outputs
  on the calls it does not compute them.

`policy_from_dict` rebuilds any of them from `to_dict()` (its `type` key).
"""

from ..caches import (
    BlockForecast,
    BlockForecastState,
    CachedTailResidual,
    CacheState,
    SubmoduleForecast,
    TailCacheState,
    TrainingFreeCache,
)
from ..policies import (
    ExitContext,
    ExitPolicy,
    SerializablePolicy,
    StaticDepth,
    TimestepSchedule,
    UncertaintyThreshold,
    as_exit_policy,
    policy_from_dict,
)

__all__ = [
    "BlockForecast",
    "BlockForecastState",
    "CacheState",
    "CachedTailResidual",
    "ExitContext",
    "ExitPolicy",
    "SerializablePolicy",
    "StaticDepth",
    "SubmoduleForecast",
    "TailCacheState",
    "TimestepSchedule",
    "TrainingFreeCache",
    "UncertaintyThreshold",
    "as_exit_policy",
    "policy_from_dict",
]
