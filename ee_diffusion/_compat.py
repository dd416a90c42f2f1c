"""Every diffusers internal that ee-diffusion touches, in one place.

`diffusers.hooks` is not covered by diffusers' stability promise; if a release moves these names, this is the
only module to change.
"""

from diffusers.hooks import HookRegistry, ModelHook

__all__ = ["HookRegistry", "ModelHook"]
