"""ee-diffusion: early exit for diffusers denoisers.

The public names are imported lazily, so `import ee_diffusion` stays cheap and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BatchLayout": "ee_diffusion.layout",
    "EarlyExitConfig": "ee_diffusion.config",
    "OperatingPoint": "ee_diffusion.operating_point",
    "ExitStats": "ee_diffusion.stats",
    "UncertaintyHeads": "ee_diffusion.heads",
    "UNetExitBridges": "ee_diffusion.unet",
    "apply_early_exit": "ee_diffusion.hooks",
    "remove_early_exit": "ee_diffusion.hooks",
    "set_exit_config": "ee_diffusion.hooks",
    "get_exit_stats": "ee_diffusion.hooks",
    "record_exit_stats": "ee_diffusion.hooks",
    "early_exit": "ee_diffusion.hooks",
    "is_early_exit_applied": "ee_diffusion.hooks",
    "reset_exit_state": "ee_diffusion.hooks",
    "exit_state_nbytes": "ee_diffusion.hooks",
    "EarlyExitDiTPipeline": "ee_diffusion.pipelines",
    "EarlyExitUNetPipeline": "ee_diffusion.pipelines",
    "load_default_pipeline": "ee_diffusion.default_model",
    "enable": "ee_diffusion.pipeline_hooks",
    "disable": "ee_diffusion.pipeline_hooks",
    "summary": "ee_diffusion.pipeline_hooks",
    "load_result": "ee_diffusion.results",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .config import EarlyExitConfig
    from .layout import BatchLayout
    from .operating_point import OperatingPoint
    from .default_model import load_default_pipeline
    from .hooks import (
        apply_early_exit,
        early_exit,
        exit_state_nbytes,
        get_exit_stats,
        is_early_exit_applied,
        record_exit_stats,
        remove_early_exit,
        reset_exit_state,
        set_exit_config,
    )
    from .heads import UncertaintyHeads
    from .pipeline_hooks import disable, enable, summary
    from .results import load_result
    from .pipelines import EarlyExitDiTPipeline, EarlyExitUNetPipeline
    from .stats import ExitStats
    from .unet import UNetExitBridges


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ee_diffusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
