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
    "ModelHook",
    "_FBC_BLOCK_HOOK",
    "_FBC_LEADER_BLOCK_HOOK",
    "_set_cache_context",
]
