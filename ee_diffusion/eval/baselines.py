"""Baselines that are not exit policies: diffusers' own training-free caches (FirstBlockCache, TaylorSeerCache,
MagCache, SeaCache, under `diffusers.hooks`) on the same transformer.

Their hooks keep state per *cache context*, which `CacheMixin` pipelines open around every denoiser call; DiT has no
`CacheMixin` and our pipelines open no context, so `diffusers_cache` sets one in a forward pre-hook before every
model call, carrying what the caches read: the step index, the step count, the timestep and the noise level
sigma = sqrt(1 - alpha_bar_t) (in [0, 1], which SeaCache requires). One sampling run shares the context, so the
batch is one trajectory (the caches decide batch-globally, as in diffusers); afterwards the hooks' state is reset
and every hook the cache added is removed. FirstBlockCache and TaylorSeerCache attach as they are; MagCache needs
the model's per-step magnitude ratios (`mag_ratios`: the repository's `bench/mag_cache.py` measures them);
SeaCache gets an image batch as B clips of one frame (`_image_trajectory`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..adapters import get_adapter

KINDS = ("first_block_cache", "taylorseer_cache", "mag_cache", "sea_cache")
#: TaylorSeer forecasts the outputs of these modules of a DiT block (diffusers' default patterns expect attention
#: modules named `attn`; DiT's are `attn1`, so its default would hook nothing).
TAYLORSEER_DIT_MODULES = [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]


def taylorseer_steps(steps: int, interval: int, warmup: int, last: bool) -> list[int]:
    """The step indices (0 first) at which diffusers' TaylorSeerCache computes in a run of `steps` model calls:
    every step before `warmup` (`disable_cache_before_step`), then step warmup + 1 and every `interval`-th one
    after it, and with `last` (`disable_cache_after_step=steps - 1`) the last step. Step `warmup` itself is
    forecast from the warm-up's outputs when interval > 1.

    ```py
    >>> taylorseer_steps(15, interval=4, warmup=1, last=False)
    [0, 2, 6, 10, 14]

    ```
    """
    return [s for s in range(steps) if s < warmup or (s - warmup - 1) % interval == 0 or (last and s >= steps - 1)]


@dataclass(frozen=True)
class CacheBaseline:
    """One diffusers cache and its settings (the keyword arguments of its diffusers config class; `mag_cache`'s
    step count is filled in per run)."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown diffusers cache {self.kind!r}; known: {list(KINDS)}")

    def describe(self) -> dict[str, Any]:
        params = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in self.params.items()}
        return {"kind": self.kind, "params": params}


def _config(baseline: CacheBaseline, num_inference_steps: int) -> tuple[Any, Callable[[nn.Module, Any], None]]:
    """The diffusers config object and apply function of `baseline`."""
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        SeaCacheConfig,
        TaylorSeerCacheConfig,
        apply_first_block_cache,
        apply_mag_cache,
        apply_sea_cache,
        apply_taylorseer_cache,
    )

    params = dict(baseline.params)
    if baseline.kind == "first_block_cache":
        return FirstBlockCacheConfig(**params), apply_first_block_cache
    if baseline.kind == "taylorseer_cache":
        params.setdefault("taylor_factors_dtype", torch.float32)
        return TaylorSeerCacheConfig(**params), apply_taylorseer_cache
    if baseline.kind == "mag_cache":
        params["num_inference_steps"] = num_inference_steps
        return MagCacheConfig(**params), apply_mag_cache
    params.setdefault("raw_vision_callback", _image_trajectory)
    return SeaCacheConfig(**params), apply_sea_cache


def _image_trajectory(module: nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """SeaCache's raw latents for an image batch: hidden_states (B, C, H, W) as B clips of one frame (C, 1, H, W)."""
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    return [x.unsqueeze(1) for x in hidden]


def _noise_levels(scheduler: Any) -> torch.Tensor:
    """sqrt(1 - alpha_bar_t) for every training timestep t (shape (T,)): the std of the noise in x_t, in [0, 1]."""
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ValueError(f"the scheduler {type(scheduler).__name__} has no alphas_cumprod: cannot give caches sigma")
    return (1 - alphas_cumprod.double()).clamp(min=0).sqrt()


@contextlib.contextmanager
def diffusers_cache(transformer: nn.Module, baseline: CacheBaseline, scheduler: Any,
                    num_inference_steps: int) -> Iterator[dict[str, Any]]:
    """Apply `baseline` to `transformer` for one sampling run of `num_inference_steps` model calls, with a cache
    context set before every call; yields a dict that records `calls`. Removes every hook it added afterwards."""
    from .._compat import CacheContext, HookRegistry, _set_cache_context, forget_child_registries

    config, apply = _config(baseline, num_inference_steps)
    before = hook_names(transformer)
    apply(transformer, config)
    forget_child_registries(transformer)
    sigmas = _noise_levels(scheduler)
    record = {"calls": 0}

    timestep_arg = get_adapter(transformer).timestep_arg  # HiDream's is `timesteps`

    def set_context(module: nn.Module, args: tuple, kwargs: dict) -> None:
        timestep = kwargs.get(timestep_arg, args[1] if len(args) > 1 else None)
        t = int(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else int(timestep)
        context = CacheContext("ee_diffusion.bench", step_index=min(record["calls"], num_inference_steps - 1),
                               num_inference_steps=num_inference_steps, timestep=t, sigma=float(sigmas[t]))
        _set_cache_context(module, context)
        record["calls"] += 1

    handle = transformer.register_forward_pre_hook(set_context, with_kwargs=True)
    try:
        yield record
    finally:
        handle.remove()
        _set_cache_context(transformer, None)
        HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks()
        remove_hooks_since(transformer, before)
        forget_child_registries(transformer)


def hook_names(module: nn.Module) -> dict[str, list[str]]:
    """Names of the diffusers hooks on every submodule (by qualified name) of `module`."""
    from .._compat import registry_hook_names

    return {name: registry_hook_names(m) for name, m in module.named_modules()}


def remove_hooks_since(module: nn.Module, before: dict[str, list[str]]) -> None:
    """Remove the diffusers hooks added to `module`'s submodules since `before` (newest first)."""
    from .._compat import HookRegistry, registry_hook_names

    for name, m in module.named_modules():
        added = [h for h in registry_hook_names(m) if h not in before.get(name, [])]
        if added:
            registry = HookRegistry.check_if_exists_or_initialize(m)
            for hook in reversed(added):
                registry.remove_hook(hook, recurse=False)
