"""What our hooks rely on in diffusers and accelerate (`ee_diffusion._compat`), checked against the installed
releases so that a release that changes it fails here, and what removal leaves under a wrapper we cannot see into.

The contracts: diffusers keeps a module's `HookRegistry` in `DIFFUSERS_REGISTRY_ATTR` (the one private name we
read); a registry hook calls the forward below it through its `fn_ref`, read at call time, and its removal puts
that forward back where the hook was; accelerate's hook does the same through `module._old_forward`; diffusers'
FirstBlockCache registers its hooks under `FIRST_BLOCK_CACHE_HOOKS`.
"""

from __future__ import annotations

import functools
import gc
import weakref

import pytest
import torch
from _interop import PER_ROW, run
from accelerate.hooks import ModelHook as AccelerateHook
from accelerate.hooks import add_hook_to_module, remove_hook_from_module
from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, ModelHook, apply_first_block_cache
from torch import nn

from ee_diffusion import EarlyExitConfig, apply_early_exit, remove_early_exit
from ee_diffusion._compat import (
    FIRST_BLOCK_CACHE_HOOKS,
    forward_slots,
    has_first_block_cache,
    hook_registry,
    is_class_forward,
)
from ee_diffusion.hooks import _engine_of, is_early_exit_applied
from ee_diffusion.forward_chain import HOOK_ATTR
from ee_diffusion.testing import tiny_dit

X = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))


class Doubling(ModelHook):
    """A diffusers hook that replaces the forward (`new_forward`), as its caches and skips do."""

    def new_forward(self, module, *args, **kwargs):
        return 2 * self.fn_ref.original_forward(*args, **kwargs)


class Scaled:
    """A forward of our own put in a slot: `inner`'s output times `factor`."""

    def __init__(self, inner, factor):
        self.inner, self.factor = inner, factor

    def __call__(self, *args, **kwargs):
        return self.factor * self.inner(*args, **kwargs)


def linear():
    return nn.Linear(4, 4).requires_grad_(False)


def class_forward_slots(module):
    return [(holder, key) for holder, key in forward_slots(module) if is_class_forward(module, holder[key])]


def test_registry_attribute_is_where_diffusers_keeps_the_registry():
    module = linear()
    assert hook_registry(module) is None  # reading never creates one
    registry = HookRegistry.check_if_exists_or_initialize(module)
    assert hook_registry(module) is registry


@pytest.mark.parametrize("hook, factor", [(ModelHook(), 1), (Doubling(), 2)], ids=["pre_post", "new_forward"])
def test_registry_hooks_call_the_forward_below_through_their_fn_ref(hook, factor):
    module = linear()
    stock = module(X)
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, "theirs")
    slots = class_forward_slots(module)
    assert len(slots) == 1 and slots[0][0] is vars(registry.hooks["theirs"].fn_ref)
    holder, key = slots[0]
    ours = holder[key] = Scaled(holder[key], 3)
    assert torch.equal(module(X), 3 * factor * stock)  # the slot is read at call time
    registry.remove_hook("theirs")
    assert vars(module)["forward"] is ours  # removal puts the slot's content back, not the class forward
    assert torch.equal(module(X), 3 * stock)


def test_registry_removal_relinks_the_hook_above_through_its_fn_ref():
    module = linear()
    stock = module(X)
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(ModelHook(), "below")
    registry.register_hook(ModelHook(), "above")
    (holder, key), = class_forward_slots(module)
    holder[key] = Scaled(holder[key], 3)
    registry.remove_hook("below")
    (holder, key), = [(h, k) for h, k in forward_slots(module) if isinstance(h[k], Scaled)]
    assert holder is vars(registry.hooks["above"].fn_ref) and torch.equal(module(X), 3 * stock)


def test_accelerate_hooks_call_the_forward_below_through_old_forward():
    module = linear()
    stock = module(X)
    add_hook_to_module(module, AccelerateHook())
    assert class_forward_slots(module) == [(vars(module), "_old_forward")]
    ours = vars(module)["_old_forward"] = Scaled(vars(module)["_old_forward"], 3)
    assert torch.equal(module(X), 3 * stock)
    remove_hook_from_module(module)
    assert vars(module)["forward"] is ours and "_old_forward" not in vars(module)


def test_first_block_cache_hook_names():
    model = tiny_dit(num_layers=3)
    assert not any(has_first_block_cache(block) for block in model.transformer_blocks)
    apply_first_block_cache(model, FirstBlockCacheConfig(threshold=0.05))
    names = [set(hook_registry(block).hooks) for block in model.transformer_blocks]
    leader, other = FIRST_BLOCK_CACHE_HOOKS
    assert names == [{leader}, {other}, {other}]
    assert all(has_first_block_cache(block) for block in model.transformer_blocks)


def wrap_forward(module):
    """An unknown wrapper on `module.forward`, as a user's own patch would be; returns what it wrapped."""
    inner = module.forward

    @functools.wraps(inner)  # keeps the signature that the engine reads the model's call with
    def wrapper(*args, **kwargs):
        return inner(*args, **kwargs)

    module.forward = wrapper
    return inner


def test_removal_under_an_unknown_wrapper_passes_through_exactly():
    model = tiny_dit(num_layers=4)
    stock = run(model)
    apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))
    exits = run(model)
    engine = weakref.ref(_engine_of(model))
    hook, block_hook = vars(model)[HOOK_ATTR], vars(model.transformer_blocks[1])[HOOK_ATTR]
    wrapped = [wrap_forward(module) for module in (model, model.transformer_blocks[1])]
    assert wrapped == [hook, block_hook]

    remove_early_exit(model)  # ours cannot be unlinked from under the wrappers: they become pass-throughs
    assert hook.released and block_hook.released and hook.engine is None
    assert not is_early_exit_applied(model) and torch.equal(run(model), stock)
    gc.collect()
    assert engine() is None  # nothing holds the engine any more

    apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))  # a new hook goes on top of the wrapper
    assert torch.equal(run(model), exits)
    remove_early_exit(model)
    assert torch.equal(run(model), stock)

    # The wrappers go (putting back what they wrapped: our pass-throughs); the next hook takes their place.
    for module, inner in zip((model, model.transformer_blocks[1]), wrapped):
        module.forward = inner
    assert torch.equal(run(model), stock)
    apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))
    assert is_class_forward(model, vars(model)[HOOK_ATTR].inner)
    assert torch.equal(run(model), exits)
    remove_early_exit(model)
    assert torch.equal(run(model), stock)
    assert all("forward" not in vars(m) for m in (model, *model.transformer_blocks))
