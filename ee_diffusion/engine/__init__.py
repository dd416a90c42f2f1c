"""The per-call engine: a model call's rows, plans and exits (`calls`), and its work on block stacks (`stacks`).

`EngineBase` holds a model call's lifecycle (one `CallState` per call), the exit plan and the per-block decisions;
`SequentialEngine` runs a declared family's blocks on the rows still running, parks exited rows and serves a cache's
sub-module forecasts. U-Nets truncate their depth instead (`ee_diffusion.unet.truncation`, on `EngineBase`). The
hooks that hand calls to an engine: `ee_diffusion.forward_chain`; the public API: `ee_diffusion.hooks`.
"""

from .calls import CallState, EngineBase, check_foreign_hooks, pair_mask
from .stacks import SequentialEngine

__all__ = ["CallState", "EngineBase", "SequentialEngine", "check_foreign_hooks", "pair_mask"]
