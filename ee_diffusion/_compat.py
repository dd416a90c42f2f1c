"""Every diffusers internal that ee-diffusion touches, in one place.

`diffusers.hooks` is not covered by diffusers' stability promise; if a release moves these names, this is the
only module to change.
"""

import functools

import torch.utils.checkpoint
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


# ------------------------------------------------------------------------------------- forward chains of hooks
# Hook libraries wrap `module.forward` and keep what they wrapped in their own slots: accelerate in
# `module._old_forward`, diffusers' HookRegistry in the `forward`/`original_forward` of each hook's function
# reference. Each wrapper calls the next one through its slot at call time, so the chain can be re-linked by
# rewriting one slot. ee-diffusion's hooks sit innermost (right around the class's own forward): other
# wrappers then come and go above them without dropping them, and removing ours touches only the one slot
# that calls us.
def forward_slots(module) -> list[tuple[dict, str]]:
    """(holder dict, key) of every slot on `module` that holds a forward some wrapper calls next; the first is
    the module's own `forward` (the top of the chain)."""
    own = vars(module)
    slots = [(own, "_old_forward")]
    registry = own.get("_diffusers_hook")
    for ref in getattr(registry, "_fn_refs", ()):
        slots += [(vars(ref), "original_forward"), (vars(ref), "forward")]
    return [(own, "forward"), *((holder, key) for holder, key in slots if holder.get(key) is not None)]


def is_class_forward(module, forward) -> bool:
    """Whether `forward` is `module`'s own class forward, bound to `module` (the bottom of every chain)."""
    return getattr(forward, "__func__", None) is type(module).forward and getattr(forward, "__self__", None) is module


def has_first_block_cache(module) -> bool:
    """Whether diffusers' FirstBlockCache hooks sit on `module` (a transformer block)."""
    hooks = getattr(vars(module).get("_diffusers_hook"), "hooks", {})
    return _FBC_LEADER_BLOCK_HOOK in hooks or _FBC_BLOCK_HOOK in hooks


def checkpoint_function(model):
    """The gradient-checkpointing function diffusers' `enable_gradient_checkpointing` gave `model`."""
    function = getattr(model, "_gradient_checkpointing_func", None)
    return function or functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)


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
