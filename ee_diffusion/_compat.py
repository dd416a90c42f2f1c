"""Every diffusers internal that ee-diffusion touches, in one place.

`diffusers.hooks` is not covered by diffusers' stability promise; if a release moves these names, this is the
only module to change. The hooks read one private diffusers name, `DIFFUSERS_REGISTRY_ATTR`, and otherwise only
public ones; `tests/test_compat_hooks.py` fails when diffusers (or accelerate) changes any of what they rely on.
"""

import functools

import torch.utils.checkpoint
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import CacheContext, _set_cache_context

__all__ = [
    "CacheContext",
    "HookRegistry",
    "forget_child_registries",
    "registry_hook_names",
    "ModelHook",
    "_set_cache_context",
]


# ------------------------------------------------------------------------------------- forward chains of hooks
# Hook libraries wrap `module.forward` and keep what they wrapped in a slot that they call through at call time:
# accelerate's `add_hook_to_module` in `module._old_forward` (transformers' `keep_accelerate_hooks` writes the
# same slot); diffusers' `HookRegistry` in `hook.fn_ref`, the `HookFunctionReference` through which a `ModelHook`
# calls the forward below it (`forward`, or `original_forward` for a hook with `new_forward`). Removing one of
# their hooks puts what its slot holds back as `module.forward` (or into the slot of the hook above it), dropping
# whatever was stacked on top of it since. So ee-diffusion's hooks sit innermost, in the slot that holds the
# module's class forward: theirs then come and go around ours (a LoRA load re-applies group offloading, say),
# and removing ours rewrites only the slot that holds it.

#: The one private diffusers name the hooks read: where a module keeps its `HookRegistry` (created by the public
#: `HookRegistry.check_if_exists_or_initialize`; diffusers' own modules look it up by this name).
DIFFUSERS_REGISTRY_ATTR = "_diffusers_hook"

#: The names diffusers' FirstBlockCache registers its hooks under (on the first block; on every other block):
#: the keys of those blocks' `HookRegistry.hooks`.
FIRST_BLOCK_CACHE_HOOKS = ("fbc_leader_block_hook", "fbc_block_hook")


def hook_registry(module) -> HookRegistry | None:
    """`module`'s own diffusers `HookRegistry`, or None (never creates one)."""
    return vars(module).get(DIFFUSERS_REGISTRY_ATTR)


def forward_slots(module) -> list[tuple[dict, str]]:
    """(holder dict, key) of every slot on `module` that holds a forward some wrapper calls next, the module's
    own `forward` (the top of the chain) first; only slots that hold something."""
    own = vars(module)
    slots = [(own, "forward"), (own, "_old_forward")]
    registry = hook_registry(module)
    for hook in registry.hooks.values() if registry is not None else ():
        slots += [(vars(hook.fn_ref), "original_forward"), (vars(hook.fn_ref), "forward")]
    return [(holder, key) for holder, key in slots if holder.get(key) is not None]


def relink(module, old, new) -> bool:
    """Put `new` in every slot of `module`'s forward chain that holds `old`; whether any did."""
    found = False
    for holder, key in forward_slots(module):
        forward = holder[key]
        if forward is old:
            holder[key] = new
            found = True
        elif getattr(forward, "__wrapped__", None) is old:
            # `functools.update_wrapper` metadata of the wrapper above: keep `inspect.signature` right and let
            # `old` be freed.
            forward.__wrapped__ = new
    return found


def is_class_forward(module, forward) -> bool:
    """Whether `forward` is `module`'s own class forward, bound to `module` (the bottom of every chain)."""
    return getattr(forward, "__func__", None) is type(module).forward and getattr(forward, "__self__", None) is module


def has_first_block_cache(module) -> bool:
    """Whether diffusers' FirstBlockCache hooks sit on `module` (a transformer block)."""
    registry = hook_registry(module)
    return registry is not None and any(name in registry.hooks for name in FIRST_BLOCK_CACHE_HOOKS)


def checkpoint_function(model):
    """The gradient-checkpointing function diffusers' `enable_gradient_checkpointing` gave `model`."""
    function = getattr(model, "_gradient_checkpointing_func", None)
    return function or functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)


def registry_hook_names(module):
    """Names of the diffusers hooks registered on `module` itself (oldest first); [] without a registry."""
    registry = getattr(module, "_diffusers_hook", None)
    return list(registry._hook_order) if registry is not None else []


def forget_child_registries(module):
    """Drop the list of hooked submodules that `module`'s diffusers registry caches for `_set_cache_context`:
    hooks applied after the list was built (a cache on attention modules, say) would never get a context."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and hasattr(registry, "_child_registries_cache"):
        registry._child_registries_cache = None


# ------------------------------------------------------------ model attributes the engine reads (not our contracts)
def gradient_checkpointing_on(model) -> bool:
    """Whether diffusers' `enable_gradient_checkpointing` is on for `model` (a model without the flag: False)."""
    return bool(getattr(model, "gradient_checkpointing", False))


def forward_chunking_on(block) -> bool:
    """Whether `enable_forward_chunking` is on for `block`: diffusers keeps the chunk size in the block's private
    `_chunk_size` (None when off; a block without feed-forward chunking has no such attribute)."""
    return getattr(block, "_chunk_size", None) is not None


def model_output_sample(output):
    """A model call's main output: a tuple's first element, a diffusers output's `sample`, else `output` itself."""
    return output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
