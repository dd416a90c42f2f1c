"""What a caller knows about the model calls it makes: the batch layout, the sampling run, the guidance branch.

A pipeline that builds its own classifier-free-guidance batches knows their layout, and one that runs a sampling
loop knows where a run starts; ours tell the engine through `early_exit(..., layout=BatchLayout(guidance_pairs=True,
one_run=True))` around each sampling loop, so the engine never compares tensors (no O(B*C*H*W) work, no host sync)
to rediscover the pairs, and a training-free cache never guesses a new run from the timesteps.

Stock pipelines say what they say: the newer diffusers pipelines (Flux, Qwen-Image, Wan, ...) open the model's
`cache_context(name, step_index=...)` around every call, naming the guidance branch ("cond"/"uncond") when guidance
runs as two calls and "cond_uncond" when it runs as one batch. `CacheContextReader` reads it through that public
method, with no diffusers internal: the engine keys a cache's run state by the branch, starts the branch's run at
step 0, and takes the guidance layout from the name. What no caller says is inferred, as the last fallback:
guidance pairs from the inputs (the adapter's `is_cfg_pair_batch`), a new run from a row whose timestep goes up
(`CacheState.infer_runs`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from diffusers.models.cache_utils import CacheMixin
from torch import nn


@dataclass(frozen=True)
class BatchLayout:
    """The layout of every batch the model is called with while it is declared, and whether those calls are one run.

    Args:
        guidance_pairs: True when every batch is `[conditional rows; their unconditional partners]` (2n rows,
            row i and row n + i are one guidance pair); False when the batch holds no pairs.
        one_run: True when every call while the layout is declared belongs to one sampling run, which starts when
            the layout is declared (our pipelines declare it around each sampling loop): a training-free cache's
            state starts empty then, and never infers a new run from the timesteps. False (default): the caller
            says nothing about runs, and a cache restarts a row whose timestep goes up.

    ```py
    >>> BatchLayout(guidance_pairs=True, one_run=True).guidance_pairs
    True

    ```
    """

    guidance_pairs: bool = False
    one_run: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.guidance_pairs, bool):
            raise TypeError(f"guidance_pairs must be True or False, got {self.guidance_pairs!r}")
        if not isinstance(self.one_run, bool):
            raise TypeError(f"one_run must be True or False, got {self.one_run!r}")

    def paired(self, batch_size: int) -> bool:
        """Whether a batch of `batch_size` rows is made of guidance pairs; ValueError for an odd paired batch."""
        if self.guidance_pairs and batch_size % 2:
            raise ValueError(
                f"the declared batch layout has guidance pairs, so the batch size must be even, got {batch_size}"
            )
        return self.guidance_pairs


@dataclass(frozen=True)
class CallerContext:
    """What a stock pipeline's `cache_context(name, step_index=..., ...)` says about the calls inside it.

    Attributes:
        branch: the name of the call ("cond"/"uncond" when guidance runs as two calls, "cond_uncond" for one
            batch of both); the engine keeps a cache's run state per branch.
        step_index: the sampling step, when the pipeline gives it: step 0 starts a new run of that branch, and a
            cache then infers no run from the timesteps.
    """

    branch: str
    step_index: int | None = None

    def paired(self, batch_size: int) -> bool | None:
        """Whether the batch holds guidance pairs, as diffusers' pipelines name their calls: "cond_uncond" for
        `[uncond rows; cond rows]` in one call (an even batch), "cond" or "uncond" for one branch; None otherwise."""
        if self.branch == "cond_uncond":
            return batch_size % 2 == 0
        return False if self.branch in ("cond", "uncond") else None


class CacheContextReader:
    """Stands in for a `CacheMixin` model's `cache_context` method while early exit is applied, and remembers the
    context the pipeline opened (`current`) until it closes; the model's own method still runs inside.

    A plain object installed on the model instance (as the forward hooks are), so `copy.deepcopy` copies it with
    the model: its `inner` is then the copy's own bound method. Removing it (`del model.cache_context`) restores
    the class method.
    """

    __slots__ = ("inner", "current")

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner  # the model's bound `cache_context`
        self.current: CallerContext | None = None

    @classmethod
    def install(cls, model: nn.Module) -> CacheContextReader | None:
        """Stand in for `model.cache_context` if the model has one (a `CacheMixin`); None for other models, whose
        pipelines open no cache context."""
        if not isinstance(model, CacheMixin):
            return None
        reader = model.cache_context = cls(model.cache_context)
        return reader

    def paired(self, batch_size: int) -> bool | None:
        """What the open context says about guidance pairs (`CallerContext.paired`); None outside a context."""
        return None if self.current is None else self.current.paired(batch_size)

    def uninstall(self, model: nn.Module) -> None:
        """Give `model` its class's `cache_context` back."""
        if vars(model).get("cache_context") is self:
            del model.cache_context

    @contextlib.contextmanager
    def __call__(self, name: str, **kwargs: Any) -> Iterator[None]:
        step = kwargs.get("step_index")
        previous, self.current = self.current, CallerContext(name, None if step is None else int(step))
        try:
            with self.inner(name, **kwargs):
                yield
        finally:
            self.current = previous
