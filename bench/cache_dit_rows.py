"""cache-dit (PyPI `cache-dit`, a bench requirement, never the package's) as a baseline of `bench-caches`.

cache-dit's DBCache computes the first `Fn` blocks of every model call and, once `warmup` calls have computed fully,
reuses the residual of the other blocks (here Bn = 0: no trailing blocks are computed) whenever the first blocks'
residual changed by less than the threshold since the last computed call (relative L1 over the whole batch: the
decision is batch-global, as diffusers' caches are, so these rows are sampled at every batch they are timed at). Its
TaylorSeer calibrator forecasts that residual instead of reusing it (order 1 or 2); a step-computation mask
(`cache_dit.steps_mask`: "slow", "medium", "fast") forces the steps it marks 1 to compute and leaves the others to the
threshold rule (cache-dit's default "dynamic" policy). cache-dit's TaylorSeer state starts at the first computed step
and takes a derivative from its own third step on (`TaylorSeerState.derivative`: step index 3 of the run), so with
fewer than 4 warm-up steps a calibrator reuses the residual as is until a later step computes; the presets sweep
warm-ups of 2 (the fastest DBCache) and 4 (the fewest after which the calibrator forecasts from the first cached step).

It is attached the way a user attaches it to a pipeline cache-dit has not registered (ours is `EarlyExitDiTPipeline`,
not diffusers' `DiTPipeline`): a `BlockAdapter` on `pipe.transformer.transformer_blocks` with `ForwardPattern.Pattern_3`
(a DiT block takes and returns hidden_states only) and cache-dit's `DiTPatchFunctor` (DiT's output head reads
`transformer_blocks[0].norm1`, which the block list cache-dit swaps in has not). cache-dit patches the pipeline
*class*'s `__call__` and the transformer's `forward`; `attached` takes both off again (`disable_cache` leaves the
patched forward in place, so it is restored here), so stock rows and our hooks see the model as it was.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from ee_diffusion._validation import check_int
from ee_diffusion.eval.method import Method
from ee_diffusion.eval.runner import MethodSampler

MASKS = ("slow", "medium", "fast")
# What cache-dit's DiT patch functor sets on the transformer instance (and `disable_cache` leaves there).
_PATCHED = ("forward", "_is_patched", "_norm1_emb")


@dataclass(frozen=True)
class CacheDitBaseline:
    """One DBCache setting. `taylorseer_order` 0: no calibrator (the cached residual is reused as is); `mask`: a
    predefined step-computation mask of cache-dit, or None; `warmup`: cache-dit's `max_warmup_steps` (calls that
    always compute)."""

    fn: int
    threshold: float
    taylorseer_order: int = 0
    mask: str | None = None
    warmup: int = 2
    kind: str = "cache_dit"

    def __post_init__(self) -> None:
        check_int(self.fn, "fn", 1, "first blocks computed on every call")
        check_int(self.warmup, "warmup", 0, "calls computed before any is cached")
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0 (a relative L1 change), got {self.threshold!r}")
        if self.taylorseer_order not in (0, 1, 2):
            raise ValueError(f"taylorseer_order must be 0 (no calibrator), 1 or 2, got {self.taylorseer_order!r}")
        if self.mask is not None and self.mask not in MASKS:
            raise ValueError(f"mask must be one of {list(MASKS)} or None, got {self.mask!r}")

    def describe(self) -> dict[str, Any]:
        params = {k: v for k, v in asdict(self).items() if k != "kind"}
        return {"kind": self.kind, "params": params}

    def configs(self, steps: int) -> tuple[Any, Any]:
        """cache-dit's (DBCacheConfig, calibrator config or None) for a run of `steps` model calls."""
        import cache_dit

        mask = None if self.mask is None else cache_dit.steps_mask(total_steps=steps, mask_policy=self.mask)
        cache = cache_dit.DBCacheConfig(Fn_compute_blocks=self.fn, Bn_compute_blocks=0,
                                        residual_diff_threshold=self.threshold, max_warmup_steps=self.warmup,
                                        num_inference_steps=steps, steps_computation_mask=mask)
        calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=self.taylorseer_order) \
            if self.taylorseer_order else None
        return cache, calibrator


def version() -> str:
    """The installed cache-dit's version (the report records which one ran)."""
    import cache_dit

    return cache_dit.__version__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """cache-dit logs every attach at INFO and every detach at WARNING through its own handlers: raise its loggers to
    ERROR meanwhile."""
    loggers = [lg for name, lg in logging.root.manager.loggerDict.items()
               if isinstance(lg, logging.Logger) and name.lower().startswith("cache_dit")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def attached(pipe: Any, baseline: CacheDitBaseline, steps: int, record: list[list[int]]) -> Iterator[None]:
    """DBCache on `pipe` (a DiT pipeline) while the block runs; every pipeline call inside it starts a fresh cache
    context (cache-dit's own `__call__` wrapper). On leaving, the step indices cache-dit reports as cached in the last
    call (`cache_dit.summary`) are appended to `record`, and everything cache-dit patched is restored."""
    import cache_dit
    from cache_dit.caching.patch_functors import DiTPatchFunctor

    transformer = pipe.transformer
    before = {k: transformer.__dict__[k] for k in _PATCHED if k in transformer.__dict__}
    with _quiet():
        adapter = cache_dit.BlockAdapter(pipe=pipe, transformer=transformer, blocks=transformer.transformer_blocks,
                                         forward_pattern=cache_dit.ForwardPattern.Pattern_3,
                                         patch_functor=DiTPatchFunctor(), check_forward_pattern=True)
        cache, calibrator = baseline.configs(steps)
        cache_dit.enable_cache(adapter, cache_config=cache, calibrator_config=calibrator)
    try:
        yield
        with _quiet():
            stats = cache_dit.summary(adapter, logging=False)
        record.append(sorted(int(s) for s in stats[0].cached_steps))
    finally:
        with _quiet():
            cache_dit.disable_cache(adapter)
        for key in _PATCHED:
            transformer.__dict__.pop(key, None)
        transformer.__dict__.update(before)


class CacheDitSampler(MethodSampler):
    """`MethodSampler` that also samples and times cache-dit rows (`Method.cache` a `CacheDitBaseline`); the cached
    steps cache-dit reports for each pipeline call land in `cached_steps` (one list per call)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cached_steps: list[list[int]] = []

    def cache_context(self, method: Method) -> Any:
        if isinstance(method.cache, CacheDitBaseline):
            return attached(self.pipe, method.cache, method.steps, self.cached_steps)
        return super().cache_context(method)


def cache_dit_methods(solver: str, steps: int, fns: tuple[int, ...], thresholds: tuple[float, ...],
                      orders: tuple[int, ...], masks: tuple[tuple[str, float, int], ...],
                      warmups: tuple[int, ...]) -> list[Method]:
    """DBCache rows: every Fn x threshold x calibrator order (0: none) x warm-up, and each (mask, threshold, order) at
    Fn 1 after the longest warm-up. Names: `cachedit_f{Fn}_r{threshold}[_ts{order}]_w{warm-up}[_m{mask}]@{solver}
    {steps}`."""
    at = f"@{solver}{steps}"
    settings = [CacheDitBaseline(fn, r, order, None, w) for fn in fns for r in thresholds for order in orders
                for w in warmups]
    settings += [CacheDitBaseline(1, r, order, mask, max(warmups)) for mask, r, order in masks]
    out = []
    for b in settings:
        name = (f"cachedit_f{b.fn}_r{b.threshold:g}{f'_ts{b.taylorseer_order}' if b.taylorseer_order else ''}"
                f"_w{b.warmup}{f'_m{b.mask}' if b.mask else ''}{at}")
        out.append(Method(name, "cache_dit", solver, steps, cache=b, notes=b.describe()["params"]))
    return out
