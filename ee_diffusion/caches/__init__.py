"""Training-free per-row caches for pretrained models, with their own contract (`TrainingFreeCache`).

- `CachedTailResidual(threshold, ...)`: a row that skips the tail adds its own tail residual cached from its last
  full call (FirstBlockCache's idea, decided per row), or forecast in the timestep from its last full calls
  (`forecast_order=1` or `2`).
- `BlockForecast(interval, forecast_order, ...)`: TaylorSeer's structure per row: a row computes every block's
  attention and feed-forward on every `interval`-th call of its own and forecasts their outputs in its timestep on
  the others; every block's norms, modulation, gates and residual additions run, except on a call where every row
  forecasts a block of a family with a forecast step (DiT, PixArt): then only its gates and residual additions.

Configure one like an exit policy, `EarlyExitConfig(policy=BlockForecast(...))`: one object decides per row what
the model computes. `ee_diffusion.schedules` re-exports both caches.
"""

from .base import CacheState, SubmoduleForecast, TrainingFreeCache
from .block_forecast import BlockForecast
from .block_forecast_call import BlockForecastState
from .tail_cache import CachedTailResidual, TailCacheState

__all__ = [
    "BlockForecast",
    "BlockForecastState",
    "CacheState",
    "CachedTailResidual",
    "SubmoduleForecast",
    "TailCacheState",
    "TrainingFreeCache",
]
