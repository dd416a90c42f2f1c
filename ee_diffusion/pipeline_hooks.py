"""One line on a whole pipeline: `enable(pipe, ...)` hooks every denoiser the pipeline holds (both of Wan 2.2's),
`disable(pipe)` puts everything back, `summary(pipe)` says what the last call did.

`enable` takes an exit policy or cache, an `EarlyExitConfig`, or the path of anything the tools wrote (a
calibration JSON, a search JSON or folder, a trainer's output folder; see `ee_diffusion.results`): the exit config,
heads and scheduler of the result are applied, and its steps and guidance become the defaults of a call that
gives none. Every pipeline call is then one sampling run for the caches (their state starts afresh), and its
statistics - every model call, not only the last - are kept for `summary`.

Python looks `__call__` up on the class, so per-pipeline call defaults and run statistics need a class of the
pipeline's own: `enable` gives the pipeline a subclass of its class (same name, same behaviour beyond the
defaults and the bookkeeping), and `disable` gives the original class back.

```py
>>> import ee_diffusion
>>> from ee_diffusion.schedules import BlockForecast
>>> from ee_diffusion.testing import tiny_pipeline
>>> pipe = tiny_pipeline("dit")
>>> pipe.set_progress_bar_config(disable=True)
>>> ee_diffusion.enable(pipe, BlockForecast(interval=2))
>>> images = pipe(class_labels=[1, 2], num_inference_steps=6, output_type="np").images
>>> run = ee_diffusion.summary(pipe)
>>> run.denoisers[0].stats.num_calls, round(run.denoisers[0].stats.compute_fraction, 3)
(6, 0.5)
>>> ee_diffusion.disable(pipe)

```
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from dataclasses import dataclass, field
from typing import Any

from diffusers.utils import BaseOutput
from torch import nn

from .config import EarlyExitConfig
from .hooks import apply_early_exit, check_early_exit, exit_state_nbytes, is_early_exit_applied, \
    record_exit_stats, remove_early_exit, reset_exit_state, set_exit_config
from .pipelines.base import ClassConditionalExitPipeline
from .policies.base import ExitPolicy
from .results import SavedResult, load_result
from .stats import ExitStats

#: Where a pipeline keeps what `enable` did (in its instance `__dict__`, beside diffusers' own attributes).
_RECORD = "_ee_diffusion_enabled"


@dataclass
class DenoiserRun:
    """One denoiser's part of a pipeline call: every model call's `ExitStats` and the cache state's size."""

    name: str
    model_class: str
    policy: str
    stats: ExitStats
    state_nbytes: int

    def lines(self, max_rows: int = 8) -> list[str]:
        stats, n = self.stats, self.stats.num_blocks
        batch = sorted({int(b.numel()) for b in stats.blocks_run})
        lines = [f"{self.name} ({self.model_class}, {n} blocks): {self.policy}",
                 f"  model calls       {stats.num_calls} (batch {', '.join(map(str, batch))})",
                 f"  blocks run        {stats.total_blocks} of {stats.full_blocks} (depth fraction "
                 f"{stats.depth_fraction:.3f})",
                 f"  blocks computed   {stats.total_computed} of {stats.full_blocks} (compute fraction "
                 f"{stats.compute_fraction:.3f}; the rest ran on forecast attention and feed-forward)"
                 if stats.total_computed != stats.total_blocks else
                 f"  blocks computed   all that ran (nothing forecast)",
                 f"  cache state       {_size(self.state_nbytes)}"]
        if len(batch) == 1 and stats.num_calls:
            lines.append("  per row           blocks run / computed, calls computed + forecast")
            for row, (run, computed, calls, forecast) in enumerate(self.per_row()[:max_rows]):
                lines.append(f"    row {row:<3d}         {run} / {computed}, {calls} + {forecast}")
            if batch[0] > max_rows:
                lines.append(f"    ... {batch[0] - max_rows} more rows (see `to_dict()`)")
        return lines

    def per_row(self) -> list[tuple[int, int, int, int]]:
        """Per batch position (when every call has the same batch): (blocks run, blocks computed, calls that
        computed every block they ran, calls a forecast stood in for)."""
        stats = self.stats
        if len({int(b.numel()) for b in stats.blocks_run}) != 1:
            return []
        rows = []
        for row in range(int(stats.blocks_run[0].numel())):
            run = [int(b[row]) for b in stats.blocks_run]
            computed = [int(c[row]) for c in stats.computed]
            forecast = sum(c < r for c, r in zip(computed, run))
            rows.append((sum(run), sum(computed), len(run) - forecast, forecast))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model_class": self.model_class, "policy": self.policy,
                "state_nbytes": self.state_nbytes, "per_row": self.per_row(), **self.stats.to_dict()}


@dataclass
class RunSummary:
    """What the last call of an `enable`d pipeline did, per denoiser (`print(summary(pipe))`)."""

    pipeline: str
    source: str
    denoisers: list[DenoiserRun] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.pipeline}, last call ({self.source})"]
        for run in self.denoisers:
            lines += run.lines()
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "source": self.source, "denoisers": [d.to_dict() for d in self.denoisers]}


@dataclass
class _Enabled:
    """What `enable` changed on one pipeline, to run its calls and to undo it."""

    original_class: type
    denoisers: dict[str, nn.Module]
    configs: dict[str, EarlyExitConfig]
    defaults: dict[str, Any]
    result: SavedResult | None
    original_scheduler: Any
    source: str
    scheduler: Any = None  # the one `enable` set (the result's), which `disable` takes back
    last: RunSummary | None = None


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if nbytes < 1024 or unit == "MiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def find_denoisers(pipe: Any) -> dict[str, nn.Module]:
    """The pipeline's components that early exit can hook (`transformer`, Wan 2.2's `transformer_2`, `unet`), by
    name; `ValueError` naming the components when there is none."""
    from .adapters import get_family, supported_model_classes
    from .unet.adapter import UNetAdapter

    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        raise TypeError(f"enable takes a diffusers pipeline (a DiffusionPipeline), got {type(pipe).__name__}")
    found = {}
    for name, module in components.items():
        if get_family(module) is not None or isinstance(module, UNetAdapter.model_classes):
            found[name] = module
    if not found:
        models = {name: type(m).__name__ for name, m in components.items() if isinstance(m, nn.Module)}
        raise ValueError(f"{type(pipe).__name__} holds no supported denoiser (its models: {models}); supported "
                         f"classes: {', '.join(supported_model_classes())}")
    return found


def _as_config(config: EarlyExitConfig | ExitPolicy | str | os.PathLike | None) -> tuple[EarlyExitConfig,
                                                                                         SavedResult | None]:
    if config is None:
        return EarlyExitConfig(), None
    if isinstance(config, EarlyExitConfig):
        return config, None
    if isinstance(config, ExitPolicy):
        return EarlyExitConfig(policy=config), None
    if isinstance(config, (str, os.PathLike)):
        result = load_result(config)
        return result.exit_config or EarlyExitConfig(), result
    raise TypeError(f"config must be an EarlyExitConfig, an exit policy or cache, a path to a saved result, or "
                    f"None; got {type(config).__name__}")


def enable(pipe: Any, config: EarlyExitConfig | ExitPolicy | str | os.PathLike | None = None, *,
           heads: nn.Module | None = None, bridges: nn.Module | None = None) -> None:
    """Hook early exit (or a training-free cache) into every denoiser of `pipe`, in place.

    Args:
        pipe: a diffusers pipeline, stock or ours.
        config: an `EarlyExitConfig`, an exit policy or cache (`StaticDepth(8)`, `BlockForecast(...)`), or the
            path of a tool's output (`ee_diffusion.results.load_result`): its exit config, heads, scheduler and
            call defaults (steps, guidance) are applied. None: hooks with no policy (the stock computation), so
            that `summary` counts the blocks.
        heads: `UncertaintyHeads` for certainty policies (a saved result's own `exit_heads/` otherwise); only on a
            pipeline with one denoiser.
        bridges: `UNetExitBridges`, for exit policies on a U-Net.

    Calling it again replaces what the previous call applied.
    """
    config, result = _as_config(config)
    denoisers = find_denoisers(pipe)
    if isinstance(pipe, ClassConditionalExitPipeline):
        raise ValueError(f"{type(pipe).__name__} runs its own exits: pass `exit_config=` to its call, or "
                         f"`pipe.set_default_exit_config(...)` / `from_pretrained(folder)` for a saved result")
    heads = heads if heads is not None or result is None else result.load_heads()
    if heads is not None and len(denoisers) > 1:
        raise ValueError(f"heads belong to one model; {type(pipe).__name__} has {len(denoisers)} denoisers "
                         f"({', '.join(denoisers)}): apply_early_exit(pipe.<name>, config, heads=heads) on the one "
                         f"they were made for")
    previous = vars(pipe).get(_RECORD)
    for name, model in denoisers.items():
        if is_early_exit_applied(model) and (previous is None or name not in previous.denoisers):
            raise ValueError(f"pipe.{name} already has early exit applied (apply_early_exit); remove_early_exit("
                             f"pipe.{name}) first, or keep using the hook API on it")
        check_early_exit(model, config, heads, bridges)  # everything refused before anything changes
    if previous is not None:
        disable(pipe)
    record = _Enabled(type(pipe), denoisers, {}, {}, result, getattr(pipe, "scheduler", None),
                      "given config" if result is None else result.source)
    applied = []
    try:
        for index, (name, model) in enumerate(denoisers.items()):
            # Each denoiser gets its own copy: a policy object may keep per-model caches.
            own = config if index == 0 else copy.deepcopy(config)
            apply_early_exit(model, own, heads=heads, bridges=bridges)
            applied.append(model)
            record.configs[name] = own
        scheduler = None if result is None or record.original_scheduler is None else \
            result.make_scheduler(record.original_scheduler)
        if scheduler is not None:
            pipe.scheduler = record.scheduler = scheduler
    except BaseException:
        for model in applied:
            remove_early_exit(model)
        raise
    parameters = inspect.signature(record.original_class.__call__).parameters
    if result is not None:
        record.defaults = {k: v for k, v in result.call_defaults().items() if k in parameters}
    vars(pipe)[_RECORD] = record
    pipe.__class__ = type(record.original_class.__name__, (record.original_class,),
                          {"__call__": _call, "__module__": record.original_class.__module__,
                           "__qualname__": record.original_class.__qualname__})


def disable(pipe: Any) -> None:
    """Undo `enable`: the hooks come off (the denoisers compute exactly what they did before), and the pipeline
    gets its own class and scheduler back."""
    record = vars(pipe).get(_RECORD)
    if not isinstance(record, _Enabled):
        raise ValueError(f"early exit is not enabled on this {type(pipe).__name__}; call ee_diffusion.enable first")
    for model in record.denoisers.values():
        if is_early_exit_applied(model):
            remove_early_exit(model)
    if record.scheduler is not None and pipe.scheduler is record.scheduler:  # not one the user set since
        pipe.scheduler = record.original_scheduler
    pipe.__class__ = record.original_class
    del vars(pipe)[_RECORD]


def summary(pipe: Any) -> RunSummary:
    """What the last call of an `enable`d pipeline did: per denoiser, every model call's blocks run and computed
    per row, the depth and compute fractions of the whole call, and the cache state's size. `print` it."""
    record = vars(pipe).get(_RECORD)
    if not isinstance(record, _Enabled):
        raise ValueError(f"early exit is not enabled on this {type(pipe).__name__}; call ee_diffusion.enable first")
    if record.last is None:
        raise ValueError(f"this {type(pipe).__name__} has not been called since ee_diffusion.enable")
    return record.last


def _call(self: Any, *args: Any, **kwargs: Any) -> Any:
    """An `enable`d pipeline's call: the saved result's defaults, a fresh run for the caches, the run's statistics."""
    record: _Enabled = vars(self)[_RECORD]
    call = record.original_class.__call__
    given = inspect.signature(call).bind_partial(self, *args, **kwargs).arguments
    kwargs.update({k: v for k, v in record.defaults.items() if k not in given})
    point = None if record.result is None else record.result.point
    if point is not None:  # the point's exit config for the steps this call runs (its own, or another count's)
        steps = given.get("num_inference_steps")
        resolved = point.resolve(steps, None, type(self.scheduler).__name__).exit_config
        for name, model in record.denoisers.items():
            if resolved != record.configs[name]:
                set_exit_config(model, copy.deepcopy(resolved))
                record.configs[name] = resolved
    with contextlib.ExitStack() as stack:
        runs = {}
        for name, model in record.denoisers.items():
            reset_exit_state(model)  # one pipeline call is one sampling run
            runs[name] = stack.enter_context(record_exit_stats(model))
        output = call(self, *args, **kwargs)
    record.last = RunSummary(record.original_class.__name__, record.source, [
        DenoiserRun(name, type(model).__name__, _describe(record.configs[name]), runs[name], exit_state_nbytes(model))
        for name, model in record.denoisers.items()])
    if isinstance(output, BaseOutput):
        output.exit_summary = record.last  # beside the images, as our pipelines' `exit_stats`
    return output


def _describe(config: EarlyExitConfig) -> str:
    return "no policy (the stock computation)" if config.policy is None else repr(config.policy)
