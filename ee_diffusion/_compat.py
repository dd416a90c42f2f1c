"""Every diffusers internal that ee-diffusion touches, in one place.

`diffusers.hooks` is not covered by diffusers' stability promise; if a release moves these names, this is the
only module to change.
"""

from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
from diffusers.hooks.hooks import CacheContext, _set_cache_context

__all__ = [
    "CacheContext",
    "HookRegistry",
    "forget_child_registries",
    "mag_cache_states",
    "registry_hook_names",
    "ModelHook",
    "_FBC_BLOCK_HOOK",
    "_FBC_LEADER_BLOCK_HOOK",
    "_set_cache_context",
]


def registry_hook_names(module):
    """Names of the diffusers hooks registered on `module` itself (oldest first); [] without a registry."""
    registry = getattr(module, "_diffusers_hook", None)
    return list(registry._hook_order) if registry is not None else []


def mag_cache_states(module):
    """Every MagCache state (one per cache context) held by the hooks under `module`."""
    from diffusers.hooks.mag_cache import MagCacheState

    states = []
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        for hook in (registry.hooks.values() if registry is not None else ()):
            manager = getattr(hook, "state_manager", None)
            if manager is not None and manager._state_cls is MagCacheState:
                states.extend(manager._state_cache.values())
    return states



def forget_child_registries(module):
    """Drop the list of hooked submodules that `module`'s diffusers registry caches for `_set_cache_context`:
    hooks applied after the list was built (a cache on attention modules, say) would never get a context."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and hasattr(registry, "_child_registries_cache"):
        registry._child_registries_cache = None
