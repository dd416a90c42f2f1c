"""Baselines that are not exit policies: diffusers' own FirstBlockCache on the same transformer.

FirstBlockCache (diffusers.hooks) keeps its state per *cache context*. Pipelines with `CacheMixin` transformers
open one around every denoiser call (`transformer.cache_context("cond")`); DiT has no `CacheMixin` and the DiT
pipelines open none, so FirstBlockCache on DiT raises "No cache context is set". The benchmark therefore sets a
context itself, once around every sampling call (through diffusers' private `_set_cache_context`; the batch
holds the conditional and unconditional rows together, so one context covers both), and resets the cached
residuals after the call. The skip decision is batch-global, as in diffusers.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

from torch import nn


def fbc_pipeline(pipe: Any) -> Any:
    """A copy of `pipe` whose transformer is a deep copy (same weights), so cache hooks never touch `pipe`."""
    clone = copy.copy(pipe)
    # DiffusionPipeline exposes components as attributes registered through register_modules.
    clone.transformer = copy.deepcopy(pipe.transformer)
    return clone


@contextlib.contextmanager
def first_block_cache(transformer: nn.Module, threshold: float) -> Iterator[None]:
    """Apply FirstBlockCache(threshold) to `transformer` for one sampling call, with a cache context set."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    from .._compat import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK, CacheContext, HookRegistry, _set_cache_context

    apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=threshold))
    _set_cache_context(transformer, CacheContext("ee_diffusion.bench"))
    try:
        yield
    finally:
        _set_cache_context(transformer, None)
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.reset_stateful_hooks()
        registry.remove_hook(_FBC_LEADER_BLOCK_HOOK, recurse=True)
        registry.remove_hook(_FBC_BLOCK_HOOK, recurse=True)
