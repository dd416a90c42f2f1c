"""Early exit on a stock diffusers model, through hooks of our own: the public hook API.

`apply_early_exit(model, config)` picks the engine for the model's backbone - `SequentialEngine` for
transformers (`ee_diffusion.engine.stacks`), `UNetEngine` for U-Nets (`ee_diffusion.unet.truncation`) - and
installs its hooks: one on the model (opens and closes every call), one on every block (U-Nets: every down, mid
and up block), and, while the policy forecasts sub-modules (`BlockForecast`), one on each block's attention and
feed-forward modules (`set_exit_config` adds and removes those). Nothing is stored on the model but the hooks;
`remove_early_exit` restores the original forwards exactly. The hooks do not go through diffusers' `HookRegistry`
(why: at the end) nor through torch's forward hooks (which cannot skip a forward): each is installed in the
module's forward chain, as below.

How the hooks sit in a module's forward chain, below accelerate's and diffusers' hooks, and why not diffusers'
`HookRegistry`: `ee_diffusion.forward_chain`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .adapters import get_adapter
from .caches.base import TrainingFreeCache
from .config import EarlyExitConfig
from .engine import EngineBase, SequentialEngine, check_foreign_hooks
from .families.base import BackboneAdapter
from .forward_chain import HOOK_ATTR, BlockCallHook, HookedForward, ModelCallHook, install, uninstall
from .heads import UncertaintyHeads
from .layout import BatchLayout
from .policies.base import as_exit_policy
from .stats import ExitStats
from .unet.bridges import UNetExitBridges
from .unet.truncation import UNetEngine


# --------------------------------------------------------------------------------------------------- public API
def _engine_of(model: nn.Module) -> EngineBase | None:
    hook = model.__dict__.get(HOOK_ATTR) if isinstance(model, nn.Module) else None
    if not isinstance(hook, ModelCallHook):
        return None
    if hook.module is not model:
        raise ValueError(
            f"this {type(model).__name__} carries the early-exit hooks of another {type(model).__name__}: it is a "
            f"shallow copy (copy.copy), which shares that model's blocks and hooks. Use copy.deepcopy(model) for an "
            f"independent copy with its own hooks, or call this on the original model"
        )
    return hook.engine


def _require_engine(model: nn.Module) -> EngineBase:
    engine = _engine_of(model)
    if engine is None:
        raise ValueError(f"early exit is not applied to this {type(model).__name__}; call apply_early_exit first")
    return engine


def _check_bridges(adapter: BackboneAdapter, bridges: nn.Module | None) -> None:
    if bridges is None:
        return
    if adapter.sequential:
        raise ValueError(
            f"bridges are for U-Nets (UNet2DModel, UNet2DConditionModel); {type(adapter.model).__name__} exits by "
            f"decoding a block's hidden state with its own head: pass bridges=None"
        )
    if not isinstance(bridges, UNetExitBridges):
        raise TypeError(f"bridges must be UNetExitBridges or None, got {type(bridges).__name__}")
    bridges.check_model(adapter.model)


def _check_setup(
    adapter: BackboneAdapter, config: EarlyExitConfig, heads: UncertaintyHeads | None, bridges: nn.Module | None = None
) -> None:
    if not isinstance(config, EarlyExitConfig):
        raise TypeError(f"config must be an EarlyExitConfig, got {type(config).__name__}")
    if heads is not None:
        if not isinstance(heads, UncertaintyHeads):
            raise TypeError(f"heads must be UncertaintyHeads or None, got {type(heads).__name__}")
        heads.check_model(adapter.model)
    if config.policy is None:
        return
    policy = as_exit_policy(config.policy)
    check_foreign_hooks(adapter)
    if not adapter.sequential and isinstance(policy, TrainingFreeCache):
        policy.validate_for(adapter)  # a cache refuses the U-Net itself: bridges would not help
        raise ValueError(
            f"{type(policy).__name__} is a training-free cache, which the U-Net engine cannot serve: a truncated row "
            f"has no hidden state of its own to cache or park. Use StaticDepth, TimestepSchedule or "
            f"UncertaintyThreshold on {type(adapter.model).__name__}"
        )
    if not adapter.sequential and bridges is None:
        raise ValueError(
            f"early exit on a {type(adapter.model).__name__} truncates its inner levels and needs their learned "
            f"replacement: pass `bridges=UNetExitBridges.from_model(model)` (fine-tuned) to apply_early_exit"
        )
    if policy.needs_certainty and heads is None:
        raise ValueError(
            f"{type(policy).__name__} needs certainties: pass `heads=UncertaintyHeads(...)` made for this model"
        )
    policy.validate_for(adapter)


def check_early_exit(
    model: nn.Module, config: EarlyExitConfig, heads: UncertaintyHeads | None = None, bridges: nn.Module | None = None
) -> BackboneAdapter:
    """Everything `apply_early_exit(model, config, heads, bridges)` checks before it hooks anything (the model's
    class, the policy against its blocks, heads and bridges made for it); returns the model's adapter."""
    adapter = get_adapter(model)
    _check_bridges(adapter, bridges)
    _check_setup(adapter, config, heads, bridges)
    return adapter


def is_early_exit_applied(model: nn.Module) -> bool:
    """Whether `apply_early_exit` hooks are on `model`."""
    return _engine_of(model) is not None


def apply_early_exit(
    model: nn.Module,
    config: EarlyExitConfig | None = None,
    heads: UncertaintyHeads | None = None,
    bridges: nn.Module | None = None,
    layout: BatchLayout | None = None,
) -> None:
    """Hook early exit into a stock diffusers model, in place.

    Args:
        model: a supported diffusers denoiser, e.g. `pipe.transformer` (`DiTTransformer2DModel`,
            `PixArtTransformer2DModel`, `SD3Transformer2DModel`) or `pipe.unet` (`UNet2DModel`,
            `UNet2DConditionModel`).
        config: the exit policy and options; `EarlyExitConfig()` (the default) never exits.
        heads: `UncertaintyHeads` made for this model; required by uncertainty policies.
        bridges: U-Nets only, `UNetExitBridges` made for this model: the learned replacement of the inner
            levels that a truncated row skips (see `ee_diffusion.unet`); required when a U-Net
            policy is set.
        layout: the `BatchLayout` of every batch the model will see (guidance pairs), if the caller knows it;
            None infers guidance pairs from each call's inputs.

    After every model call, `get_exit_stats(model)` tells how many blocks each row ran.

    ```py
    >>> import torch
    >>> from diffusers import DiTTransformer2DModel
    >>> from ee_diffusion import EarlyExitConfig, apply_early_exit, get_exit_stats, remove_early_exit
    >>> from ee_diffusion.schedules import TimestepSchedule
    >>> model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, num_layers=4,
    ...                               sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1).eval()
    >>> apply_early_exit(model, EarlyExitConfig(policy=TimestepSchedule(boundaries=[500], depths=[4, 2])))
    >>> out = model(torch.randn(2, 1, 8, 8), timestep=torch.tensor([100, 900]), class_labels=torch.tensor([3, 5]))
    >>> get_exit_stats(model).blocks_run[0].tolist()
    [4, 2]
    >>> remove_early_exit(model)

    ```
    """
    config = EarlyExitConfig() if config is None else config
    if is_early_exit_applied(model):
        raise ValueError(
            f"early exit is already applied to this {type(model).__name__}; call remove_early_exit(model) first, "
            f"or change the policy with set_exit_config(model, config)"
        )
    adapter = check_early_exit(model, config, heads, bridges)
    _check_layout(layout)
    engine: EngineBase = SequentialEngine(adapter, config, heads) if adapter.sequential else \
        UNetEngine(adapter, config, heads, bridges)
    engine.layout = layout
    engine.attach_context_reader()
    install(model, lambda inner: ModelCallHook(model, inner, engine))
    for module, run in engine.hook_targets():
        install(module, lambda inner, module=module, run=run: BlockCallHook(module, inner, run))


def _sync_hooks(engine: EngineBase) -> None:
    """After a config change: hook what the new policy needs (a sub-module forecast hooks the blocks' attention
    and feed-forward modules too), unhook what it does not."""
    wanted = engine.hook_targets()
    keep = {id(module) for module, _ in wanted}
    for module in engine.hookable_modules():
        if id(module) not in keep:
            uninstall(module)
    for module, run in wanted:
        if not isinstance(module.__dict__.get(HOOK_ATTR), HookedForward):
            install(module, lambda inner, module=module, run=run: BlockCallHook(module, inner, run))


def _check_layout(layout: BatchLayout | None) -> None:
    if layout is not None and not isinstance(layout, BatchLayout):
        raise TypeError(f"layout must be a BatchLayout or None, got {type(layout).__name__}")


def remove_early_exit(model: nn.Module) -> None:
    """Remove the hooks of `apply_early_exit`; the model computes exactly what it did before."""
    engine = _require_engine(model)
    for module in engine.hookable_modules():
        uninstall(module)
    uninstall(model)
    engine.detach_context_reader()
    engine.close()
    engine.recorders.clear()
    engine.policy_state = None


def reset_exit_state(model: nn.Module) -> None:
    """Forget the per-row state that a training-free cache keeps across model calls (every guidance branch's).

    The state is also made anew when the exit config changes (our pipelines' `early_exit` around each sampling
    loop) and dropped on `remove_early_exit`; a stock pipeline's `cache_context(..., step_index=0)` starts its
    branch's run, and where the caller says nothing the cache starts a new run for a row whose timestep goes up.
    Call this to start afresh explicitly, e.g. between two runs at the same timesteps.
    """
    state = _require_engine(model).policy_state
    if state is not None:
        state.reset()


def exit_state_nbytes(model: nn.Module) -> int:
    """Bytes held by the per-row state that a training-free cache keeps across model calls (0 when there is none).

    Every tensor of the cache's `CacheState` of every guidance branch counts, e.g. `CachedTailResidual`'s whole
    history (its formula is in `TailCacheState`). What lives for one call only (block activations) does not.
    """
    state = _require_engine(model).policy_state
    return 0 if state is None else int(state.nbytes())


def set_exit_config(
    model: nn.Module, config: EarlyExitConfig, heads: UncertaintyHeads | None | str = "keep"
) -> None:
    """Change the policy (and optionally the heads) of a model that already has early exit applied."""
    engine = _require_engine(model)
    heads = engine.heads if isinstance(heads, str) and heads == "keep" else heads
    _check_setup(engine.adapter, config, heads, engine.bridges)
    engine.configure(config, heads)
    _sync_hooks(engine)


def get_exit_stats(model: nn.Module) -> ExitStats | None:
    """Statistics of the last MODEL call only - one step of a sampling run, or one guidance branch of it (None
    before the first call). For a whole run: `record_exit_stats(model)`, `ee_diffusion.summary(pipe)` after
    `ee_diffusion.enable(pipe, ...)`, or our pipelines' `out.exit_stats`."""
    return _require_engine(model).last_stats


@contextlib.contextmanager
def record_exit_stats(model: nn.Module) -> Iterator[ExitStats]:
    """Collect the statistics of every model call inside the `with` block into one `ExitStats`."""
    engine = _require_engine(model)
    stats = ExitStats(engine.num_blocks)
    engine.recorders.append(stats)
    try:
        yield stats
    finally:
        engine.recorders = [r for r in engine.recorders if r is not stats]


@contextlib.contextmanager
def early_exit(
    model: nn.Module,
    config: EarlyExitConfig | None = None,
    heads: UncertaintyHeads | None = None,
    bridges: nn.Module | None = None,
    layout: BatchLayout | None = None,
) -> Iterator[ExitStats]:
    """Run the `with` block with early exit on `model`, then leave the model exactly as it was.

    If the model already has early exit applied, its config, heads, policy state and batch layout are swapped
    for the block's duration and restored afterwards; otherwise the hooks are applied and removed again
    (U-Nets: with `bridges`; an applied engine keeps its own). Yields the statistics of every call in the block.
    """
    config = EarlyExitConfig() if config is None else config
    engine = _engine_of(model)
    if engine is None:
        apply_early_exit(model, config, heads, bridges, layout)
        try:
            with record_exit_stats(model) as stats:
                yield stats
        finally:
            remove_early_exit(model)
        return
    _check_layout(layout)
    previous = (engine.config, engine.heads, engine.policy_state, engine.layout)
    set_exit_config(model, config, heads)
    engine.layout = layout
    try:
        with record_exit_stats(model) as stats:
            yield stats
    finally:
        config, heads, state, engine.layout = previous
        engine.configure(config, heads, state)
        _sync_hooks(engine)
