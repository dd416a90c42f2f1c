"""The flags of `ee-diffusion bench --pipeline` as a validated config (`BenchConfig`), and `parse_method`, which
turns one `--methods` spec into a `method.Method` (a row of the report) or refuses it with the allowed forms.

```py
>>> config = BenchConfig(pipeline="my-dit", real="imagenet-val", inception_weights="pt_inception.pth",
...                      methods=("static:0.75", "fbc:0.1"), steps=50, num_images=10_000)
>>> config.features, config.frontier_fractions
(('inception',), (0.4, 0.6, 0.8))
>>> BenchConfig(pipeline="my-dit", real="x", solver="euler")
Traceback (most recent call last):
...
ValueError: solver must be one of ('pipeline', 'ddim', 'dpmpp', 'unipc'), got 'euler'

```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._validation import check_int
from ..adapters import get_adapter
from ..config import EarlyExitConfig
from ..pipelines.stock import denoiser_of
from ..schedules import StaticDepth
from .baselines import TAYLORSEER_DIT_MODULES, CacheBaseline
from .method import Method
from .solvers import SEARCH_SOLVERS, ase_schedules

#: The pipeline's own scheduler, or one built from its config (on flow matching: the flow-matching versions).
SOLVER_CHOICES = ("pipeline", *SEARCH_SOLVERS)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: Method spec prefixes (`--methods`, see `BenchConfig`); any other spec is an exit-config JSON file.
METHOD_KINDS = ("steps", *SOLVER_CHOICES, "static", "ase", "fbc", "taylorseer", "sea")
#: The least value of every integer field (`timing_batch` may also be None); the flags of the same names take them.
INT_LOWS = {"steps": 1, "num_images": 2, "batch_size": 1, "shard_size": 1, "bootstrap": 1, "inception_resolution": 75,
            "timing_repeats": 0, "seed": 0, "timing_batch": 1}


@dataclass
class BenchConfig:
    """One `bench --pipeline` run (the CLI flags, validated).

    `methods`: specs `steps:K`, `SOLVER:K` (K steps of another solver), `static:D` (D blocks, or a fraction of
    them), `ase:released|aggressive`, `fbc:T`, `taylorseer:I`, `sea:T` (diffusers' caches; transformers only) or
    a path to an exit-config JSON file, each optionally `@K` or `@SOLVER:K` (at K steps of that solver, so one
    report can place a DPM-Solver++ point against a DDIM reference; default: `solver` at `steps`).
    `solver` is the reference's (and the fewer-steps sweep's). `features`: "inception" (needs
    `inception_weights`), "clip" (needs `clip`, a CLIP folder), a shipped feature net ("digits", "digits-pool") or a
    saved one (path). `real` (an image folder) or `real_stats` (files written by an earlier run, one per feature
    network) give the real side.
    """

    pipeline: str
    real: str | None = None
    real_stats: tuple[str, ...] = ()
    features: tuple[str, ...] = ("inception",)
    inception_weights: str | None = None
    inception_resolution: int = 299
    clip: str | None = None
    methods: tuple[str, ...] = ()
    steps: int = 25
    frontier_steps: tuple[int, ...] = ()  # empty: round(f * steps) for f in frontier_fractions
    frontier_fractions: tuple[float, ...] = (0.4, 0.6, 0.8)
    match_frontier: bool = True  # also measure the step counts matched to every other row's block evaluations
    solver: str = "pipeline"
    classes: tuple[str, ...] = ()  # ids or names; empty: every class of a class-conditional pipeline
    prompts: str | None = None
    num_images: int = 1000
    guidance_scale: float | None = None  # None: the pipeline's default
    seed: int = 0
    batch_size: int = 16
    shard_size: int = 64
    device: str = "cpu"
    dtype: str = "float32"
    cache_dir: str | None = None  # None: OUT/samples
    bootstrap: int = 200
    confidence: float = 0.9
    timing_repeats: int = 3  # 0: no wall-clock (decisions by block evaluations)
    timing_batch: int | None = None  # None: batch_size

    def __post_init__(self) -> None:
        self.real_stats, self.features = tuple(self.real_stats), tuple(self.features)
        self.methods, self.classes = tuple(self.methods), tuple(str(c) for c in self.classes)
        self.frontier_steps = tuple(self.frontier_steps)
        if self.solver not in SOLVER_CHOICES:
            raise ValueError(f"solver must be one of {SOLVER_CHOICES}, got {self.solver!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        for name, low in INT_LOWS.items():
            if getattr(self, name) is not None or name != "timing_batch":
                check_int(getattr(self, name), name, low)
        bad = [k for k in self.frontier_steps if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.steps]
        if bad:
            raise ValueError(f"frontier_steps must be ints in [1, steps={self.steps}], got {bad}")
        if not all(0 < f < 1 for f in self.frontier_fractions):
            raise ValueError(f"frontier_fractions must lie in (0, 1), got {self.frontier_fractions}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence!r}")
        if not self.features:
            raise ValueError("features must name at least one feature network ('inception', 'clip', 'digits', ...)")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features must not repeat, got {self.features}")
        if (self.real is None) == (not self.real_stats):
            raise ValueError("give the real side as exactly one of: real (--real, an image folder) or real_stats "
                             f"(--real-stats, files of precomputed statistics); got real={self.real!r}, "
                             f"real_stats={self.real_stats}")
        if self.classes and self.prompts:
            raise ValueError("give classes or prompts, not both")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")


def _at(spec: str, steps: int, solver: str) -> tuple[str, str, int]:
    """'static:6@12' -> ('static:6', solver, 12); 'static:6@dpmpp:12' -> ('static:6', 'dpmpp', 12); no '@': the
    run's solver and steps."""
    body, _, at = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if not at:
        return body, solver, steps
    named, _, count = at.rpartition(":")
    if named and named not in SOLVER_CHOICES:
        raise ValueError(f"method {spec!r}: the solver after '@' must be one of {SOLVER_CHOICES}, got {named!r}")
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"method {spec!r}: the step count after '@' must be an int >= 1, got {count!r}")
    return body, named or solver, int(count)


def parse_method(spec: str, pipe: Any, steps: int, solver: str) -> Method:
    """One `--methods` spec as a `Method` (see `BenchConfig`); `ValueError` naming the allowed forms."""
    body, solver, k = _at(spec, steps, solver)
    kind, _, value = body.partition(":")
    denoiser = denoiser_of(pipe)
    blocks = getattr(denoiser, "transformer_blocks", None)
    at = f"@{solver}{k}"
    if kind not in METHOD_KINDS:
        if not body.endswith(".json"):
            raise ValueError(f"method {spec!r}: expected one of {[k + ':...' for k in METHOD_KINDS]} or an exit-config "
                             f".json file (each optionally @STEPS)")
        if not Path(body).is_file():
            raise ValueError(f"method {spec!r}: no exit-config file {body!r}")
        config = EarlyExitConfig.from_file(body)  # a bare exit config, or what `ee-diffusion calibrate` writes
        if config.policy is not None:
            try:  # a depth the model does not have, a cache on a U-Net: refused before any sampling
                config.policy.validate_for(get_adapter(denoiser))
            except ValueError as error:
                raise ValueError(f"method {spec!r}: {error}") from None
        if config.policy is not None and config.policy.needs_certainty and getattr(pipe, "exit_heads", None) is None:
            raise ValueError(f"method {spec!r}: its policy {type(config.policy).__name__} needs uncertainty heads, "
                             f"and the {type(pipe).__name__} folder has none (train them, or use a schedule)")
        return Method(f"{Path(body).stem}{at}", "exit_config", solver, k, config, notes={"file": body})
    if kind == "steps" or kind in SOLVER_CHOICES:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"method {spec!r}: {kind}:K needs an int K >= 1")
        solver = solver if kind == "steps" else kind
        return Method(f"{solver}{int(value)}", "fewer_steps", solver, int(value))
    if blocks is None:
        raise ValueError(f"method {spec!r}: {kind} needs a transformer denoiser; {type(pipe).__name__} has a "
                         f"{type(denoiser).__name__} (use an exit-config file or fewer steps)")
    n = len(blocks)
    try:
        number = float(value)
    except ValueError:
        number = None
    if kind == "static":
        if number is None or not (0 < number < 1 or (number.is_integer() and 1 <= number < n)):
            raise ValueError(f"method {spec!r}: static:D needs D blocks in [1, {n - 1}] or a fraction in (0, 1)")
        depth = max(1, min(n - 1, round(number * n))) if number < 1 else int(number)
        return Method(f"static{depth}{at}", "static_depth", solver, k, EarlyExitConfig(StaticDepth(depth)))
    if kind == "ase":
        schedules = ase_schedules(n)
        if value not in schedules:
            raise ValueError(f"method {spec!r}: ase:NAME takes one of {sorted(schedules)}")
        return Method(f"ase_{value}{at}", "ase", solver, k, EarlyExitConfig(schedules[value]))
    if number is None or number <= 0:
        raise ValueError(f"method {spec!r}: {kind}:VALUE needs a number > 0")
    if kind == "fbc":
        cache = CacheBaseline("first_block_cache", {"threshold": number})
        return Method(f"fbc{number:g}{at}", "first_block_cache", solver, k, cache=cache)
    if kind == "sea":
        return Method(f"sea{number:g}{at}", "sea_cache", solver, k, cache=CacheBaseline("sea_cache", {"threshold": number}))
    if not number.is_integer():
        raise ValueError(f"method {spec!r}: taylorseer:I needs an int cache interval")
    params = {"cache_interval": int(number), "disable_cache_before_step": max(1, k // 8), "max_order": 1}
    if type(denoiser).__name__ == "DiTTransformer2DModel":
        params["cache_identifiers"] = TAYLORSEER_DIT_MODULES
    return Method(f"taylorseer{int(number)}{at}", "taylorseer_cache", solver, k,
                  cache=CacheBaseline("taylorseer_cache", params))
