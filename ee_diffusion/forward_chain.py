"""Our hooks in a module's forward chain: `HookedForward` objects, installed and removed.

Each hook is a `HookedForward` object that sits innermost, right around the module's own class forward, below
any accelerate or diffusers hook already there: in the slot through which that hook calls the forward below it
(accelerate's `_old_forward`; the `fn_ref` of a diffusers `ModelHook`, reached through the registry's public
`hooks`; see `_compat.forward_slots`). Removing one of theirs puts its slot's content back in place and drops
whatever was stacked on top of it, so ours must be below: theirs can then be added and removed in any order
around ours, and removing ours re-links only the slot that calls it. Where an unknown wrapper was stacked on ours
since, ours cannot be unlinked without reaching into that wrapper: removal turns it into an exact pass-through
(it calls the forward below it and holds no engine). Being a plain object, a hook is copied with the model by
`copy.deepcopy`.

Why not diffusers' public `HookRegistry.register_hook`, with our hooks as `ModelHook`s? In diffusers 0.42 it
costs two properties: `copy.deepcopy` of a model carrying registry hooks gives a copy whose hooks call the
original's modules, and removing a registry hook re-links the hook above it through its `fn_ref.forward`, which
silently disables a hook above that replaces the forward (`new_forward`), as ours must to skip blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from ._compat import forward_slots, is_class_forward, relink

if TYPE_CHECKING:
    from .engine import EngineBase

#: The attribute that holds a module's `HookedForward` (as accelerate keeps `_hf_hook`).
HOOK_ATTR = "_ee_diffusion_hook"


class HookedForward:
    """What the engine installs as a module's `forward`: `runner(inner, args, kwargs)`, `inner` the forward below.

    A plain object, not a closure: `copy.deepcopy` of the model copies it with the model, so the copy's hook calls
    the copy's engine and the copy's own forward (a closure would keep calling the original's modules).
    `__wrapped__` lets `inspect.signature` (and so `torch.export`) see the module's real signature. A released
    hook (`release`) calls `inner` and nothing else.
    """

    __slots__ = ("module", "inner", "runner")

    def __init__(self, module: nn.Module, inner: Callable, runner: Callable) -> None:
        self.module = module  # the module this forward belongs to (tells a shallow copy from the original)
        self.inner = inner
        self.runner: Callable | None = runner  # None once released

    def __call__(self, *args, **kwargs):
        if self.runner is None:
            return self.inner(*args, **kwargs)
        return self.runner(self.inner, args, kwargs)

    def release(self) -> None:
        """Become an exact pass-through to `inner` and let go of the engine: what removal leaves where a wrapper
        stacked on this hook since still calls it and cannot be re-linked."""
        self.runner = None

    @property
    def released(self) -> bool:
        return self.runner is None

    @property
    def __wrapped__(self) -> Callable:
        return self.inner

    @property
    def __code__(self):
        # torch.export names its trace after `model.forward.__code__`, which only functions have.
        return getattr(self.inner, "__code__", None) or HookedForward.__call__.__code__


class ModelCallHook(HookedForward):
    """On the model: one `CallState` per call (`EngineBase.call_model`)."""

    __slots__ = ("engine",)

    def __init__(self, module: nn.Module, inner: Callable, engine: EngineBase) -> None:
        super().__init__(module, inner, engine.call_model)
        self.engine: EngineBase | None = engine

    def release(self) -> None:
        super().release()
        self.engine = None


class BlockCallHook(HookedForward):
    """On a block: hands the call to the engine's runner for that block, bound to the block's index."""

    __slots__ = ()


def install(module: nn.Module, make_hook) -> None:
    """Wrap `module`'s own class forward with `make_hook(forward)`, below any accelerate or diffusers hook on it."""
    for holder, key in forward_slots(module):
        forward = holder[key]
        if isinstance(forward, HookedForward) and forward.released:
            forward = forward.inner  # ours, left as a pass-through by an earlier removal: this one takes its place
        if is_class_forward(module, forward):
            hook = holder[key] = make_hook(forward)
            break
    else:
        # The class forward is not in a slot we can rewrite: nothing wraps it yet (the module's forward is the
        # class's), or an unknown wrapper does. Ours goes on top.
        hook = module.forward = make_hook(module.forward)
    setattr(module, HOOK_ATTR, hook)


def uninstall(module: nn.Module) -> None:
    """Unlink `module`'s hook from its forward chain, wherever other hooks have put it by now."""
    hook: HookedForward | None = module.__dict__.pop(HOOK_ATTR, None)
    if hook is None:
        return
    if not relink(module, hook, hook.inner):
        # An unknown wrapper stacked on ours since holds it in a slot of its own: ours stays in its chain as an
        # exact pass-through to the forward below it, the engine let go (a later apply puts a new hook there
        # once that wrapper is gone).
        hook.release()
    if is_class_forward(module, module.__dict__.get("forward")):
        del module.__dict__["forward"]  # leave no instance-level forward where there was none
