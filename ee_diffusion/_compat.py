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
