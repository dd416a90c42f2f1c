"""Early exit on U-Nets (`UNet2DModel`, `UNet2DConditionModel`) by depth truncation, in one package.

- `adapter.py`: `UNetAdapter`, the engine's view of a U-Net (levels, skip bookkeeping, training pass);
- `bridges.py`: `UNetExitBridges`, the learned replacement of the inner levels a truncated row skips;
- `truncation.py`: the engine for U-Nets (rows leave after a down block and rejoin at its up block).

The class-conditional pipeline is `ee_diffusion.pipelines.EarlyExitUNetPipeline` (integration layer).
"""

from .adapter import UNetAdapter
from .bridges import UNetExitBridges

__all__ = ["UNetAdapter", "UNetExitBridges"]
