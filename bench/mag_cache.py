"""MagCache's per-step magnitude ratios of our models, from diffusers' own calibration mode: the one baseline of
the bench that needs a measurement of the model before it runs (`grid.cache_methods`).

The ratios live in MagCache's private state objects (`diffusers.hooks.mag_cache.MagCacheState`, held by each hook's
state manager): this module is the bench's one place that reads them, so a diffusers release that moves them
changes only this file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import HookRegistry, MagCacheConfig, apply_mag_cache
from diffusers.hooks.hooks import CacheContext, _set_cache_context
from diffusers.hooks.mag_cache import MagCacheState
from torch import nn

from ee_diffusion._compat import forget_child_registries
from ee_diffusion.eval.baselines import hook_names, remove_hooks_since


def mag_cache_states(module: nn.Module) -> list[MagCacheState]:
    """Every MagCache state (one per cache context) held by the hooks under `module`."""
    states = []
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        for hook in (registry.hooks.values() if registry is not None else ()):
            manager = getattr(hook, "state_manager", None)
            if manager is not None and manager._state_cls is MagCacheState:
                states.extend(manager._state_cache.values())
    return states


@torch.no_grad()
def calibrate_mag_ratios(run: Callable[[], Any], transformer: nn.Module, scheduler: Any,
                         num_inference_steps: int) -> list[float]:
    """MagCache's per-step magnitude ratios of `transformer`, from diffusers' calibration mode (no skipping) during
    `run()` (one sampling run of `num_inference_steps` steps, e.g. a few calibration images)."""
    before = hook_names(transformer)
    # One step more than the run has: MagCache clears its recorded ratios when its step counter reaches the
    # configured count, so with the true count they would be gone before we read them.
    apply_mag_cache(transformer, MagCacheConfig(calibrate=True, num_inference_steps=num_inference_steps + 1))
    forget_child_registries(transformer)
    _set_cache_context(transformer, CacheContext("ee_diffusion.calibration"))
    try:
        run()
        ratios = _mag_calibration_ratios(transformer)
    finally:
        _set_cache_context(transformer, None)
        HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks()
        remove_hooks_since(transformer, before)
        forget_child_registries(transformer)
    if len(ratios) != num_inference_steps:
        raise RuntimeError(f"MagCache calibration recorded {len(ratios)} ratios for {num_inference_steps} steps")
    return ratios


def _mag_calibration_ratios(transformer: nn.Module) -> list[float]:
    """The ratios MagCache's calibration recorded in its shared state (read before the state is reset)."""
    for state in mag_cache_states(transformer):
        if state.calibration_ratios:
            return [float(r) for r in state.calibration_ratios]
    return []
