"""`ee-diffusion bench --pipeline FOLDER`: the paired benchmark on the user's model, data and feature networks.

The same protocol as `bench --settings` (`bench.py`; definitions in docs/evaluation.md), on any supported
pipeline folder (`pipelines.stock.SUPPORTED_PIPELINES`):
- every method samples the same N images (image i from its own noise, condition i % len(conditions)), cached in
  shards on disk (`sample_cache.py`: resumable, reused, split over `accelerate launch` processes);
- the reference is the stock pipeline at `steps`; the frontier is fewer steps at full depth (a sweep, plus the
  step counts matched to every other method's block evaluations); the other methods are early exit (exit-config
  JSON files, static depth, the ASE schedule) and diffusers' caches;
- FID against the user's real images (`--real DIR`, or saved statistics `--real-stats FILE`) under each feature
  network asked for (Inception-v3 from a local weights file, CLIP from a local folder, or our shipped nets),
  with paired bootstrap intervals; one report entry per feature network, never compared across them;
- the CLIP score for text-conditioned pipelines (with a full CLIP folder); wall-clock of every method,
  interleaved (`eval.timing`); `frontier.decide` gives the knee, the recommendation and the one-line verdict.

Everything that can be wrong with the input (the folder, the conditioning, the methods, the weights files, the
real images) raises `ValueError` in `prepare`, before any sampling.

```py
>>> config = BenchConfig(pipeline="my-dit", real="imagenet-val", inception_weights="pt_inception.pth",
...                      methods=("static:0.75", "fbc:0.1"), steps=50, num_images=10_000)
>>> config.features, config.frontier_fractions
(('inception',), (0.4, 0.6, 0.8))
>>> BenchConfig(pipeline="my-dit", real="x", solver="euler")
Traceback (most recent call last):
...
ValueError: solver must be one of ('pipeline', 'ddim', 'dpmpp'), got 'euler'

```
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_write_json, atomic_write_text
from .._validation import check_int
from ..config import EarlyExitConfig
from ..eval.baselines import CacheBaseline
from ..eval.paired import FrechetReference, PairedFID, fidelity
from ..eval.real_images import ImageFolder, RealStats, warn_small_set
from ..pipelines.conditioning import Conditioning
from ..pipelines.stock import PIPELINES, denoiser_of, kind_of, load_pipeline, pipeline_class_name
from ..schedules import StaticDepth
from . import frontier
from .bench import _load_average, _store_times
from .grid import SOLVERS, TAYLORSEER_DIT_MODULES, Method, ase_schedules, make_schedulers
from .report import _describe_point, _finite, _json_default, plot, rows_table
from .sample_cache import ShardCache, run_key

logger = logging.getLogger(__name__)

SOLVER_CHOICES = ("pipeline", *SOLVERS)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: Method spec prefixes (`--methods`); any other spec is an exit-config JSON file. `@K` runs it at K steps.
METHOD_KINDS = ("steps", "static", "ase", "fbc", "taylorseer", "sea")


@dataclass
class BenchConfig:
    """One `bench --pipeline` run (the CLI flags, validated).

    `methods`: specs `steps:K`, `static:D` (D blocks, or a fraction of them), `ase:released|aggressive`,
    `fbc:T`, `taylorseer:I`, `sea:T` (diffusers' caches; transformers only) or a path to an exit-config JSON
    file, each optionally `@K` (at K steps; default `steps`). `features`: "inception" (needs
    `inception_weights`), "clip" (needs `clip`, a CLIP folder), a shipped feature net ("digits", "glyphs") or a
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
        for name, low in (("steps", 1), ("num_images", 2), ("batch_size", 1), ("shard_size", 1), ("bootstrap", 1),
                          ("inception_resolution", 75), ("timing_repeats", 0)):
            check_int(getattr(self, name), name, low)
        check_int(self.seed, "seed", 0)
        if self.timing_batch is not None:
            check_int(self.timing_batch, "timing_batch", 1)
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
            raise ValueError("give the real side as exactly one of: real (an image folder) or real_stats (files of "
                             f"precomputed statistics); got real={self.real!r}, real_stats={self.real_stats}")
        if self.classes and self.prompts:
            raise ValueError("give classes or prompts, not both")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")


# ----------------------------------------------------------------------------------------------- feature nets
@dataclass
class FeatureSpec:
    """One feature network of the run: what the report calls it, its cache key, and how it encodes images."""

    name: str
    key: str
    net: nn.Module
    resolution: str
    unit_input: bool = False  # our shipped nets take float images in [0, 1]; the standard ones uint8
    batch_size: int = 64
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(self.net.num_features)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, F) float64 features of uint8 images (B, C, H, W)."""
        parameter = next(self.net.parameters())
        out = []
        for chunk in images.split(self.batch_size):
            x = chunk.to(parameter.device)
            x = x.float() / 255.0 if self.unit_input else x
            out.append(self.net(x).double().cpu())
        return torch.cat(out)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "features": self.num_features, "resolution": self.resolution, **self.meta}


def _fingerprint(path: str | os.PathLike) -> str:
    """Name, size and the first MiB of a file: enough to tell weights files apart for the cache."""
    file = Path(path)
    with file.open("rb") as f:
        head = f.read(1 << 20)
    return hashlib.sha256(head + f"{file.name}:{file.stat().st_size}".encode()).hexdigest()[:12]


def load_features(config: BenchConfig, device: str) -> list[FeatureSpec]:
    """The feature networks of `config.features`, loaded and checked (`ValueError` before any sampling)."""
    from ..eval.features import RECIPES, load_feature_net
    from ..eval.standard_features import ClipImageFeatures, load_inception

    specs = []
    for name in config.features:
        if name == "inception":
            net = load_inception(config.inception_weights, config.inception_resolution)
            r = config.inception_resolution
            specs.append(FeatureSpec(f"inception-v3 (pool3) at {r}x{r}", f"inception{r}-{_fingerprint(config.inception_weights)}",
                                     net, f"{r}x{r}", meta={"weights": str(config.inception_weights)}))
        elif name == "clip":
            if config.clip is None:
                raise ValueError("features 'clip' needs the CLIP model folder: pass --clip FOLDER (a local "
                                 "transformers CLIPModel or CLIPVisionModel folder)")
            net = ClipImageFeatures(config.clip)
            folder = Path(config.clip)
            r = net.resolution
            specs.append(FeatureSpec(f"clip {net.architecture} ({folder.name}) at {r}x{r}",
                                     f"clip{r}-{_fingerprint(folder / 'config.json')}", net, f"{r}x{r}",
                                     meta={"folder": str(folder)}))
        elif name in RECIPES or Path(f"{name}.json").is_file():
            net = load_feature_net(name)
            size = net.config["image_size"]
            specs.append(FeatureSpec(f"{Path(name).name} (ee-diffusion feature net)", f"net-{Path(name).name}", net,
                                     f"{size}x{size} (native)", unit_input=True))
        else:
            raise ValueError(f"unknown feature network {name!r}; known: 'inception', 'clip', {sorted(RECIPES)} or "
                             f"the path (without suffix) of a saved feature net")
    for spec in specs:
        spec.net.to(device)
    return specs


# ---------------------------------------------------------------------------------------------------- methods
def _at(spec: str, steps: int) -> tuple[str, int]:
    """'static:6@12' -> ('static:6', 12); no '@': the run's steps."""
    body, _, at = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if not at:
        return body, steps
    if not at.isdigit() or int(at) < 1:
        raise ValueError(f"method {spec!r}: the step count after '@' must be an int >= 1, got {at!r}")
    return body, int(at)


def parse_method(spec: str, pipe: Any, steps: int, solver: str) -> Method:
    """One `--methods` spec as a `Method` (see `BenchConfig`); `ValueError` naming the allowed forms."""
    body, k = _at(spec, steps)
    kind, _, value = body.partition(":")
    denoiser = denoiser_of(pipe)
    blocks = getattr(denoiser, "transformer_blocks", None)
    at = f"@{solver}{k}"
    if kind not in METHOD_KINDS:
        if not body.endswith(".json"):
            raise ValueError(f"method {spec!r}: expected one of {[k + ':...' for k in METHOD_KINDS]} or an exit-config "
                             f".json file (each optionally @STEPS)")
        config = EarlyExitConfig.from_file(body)
        if config.policy is not None and config.policy.needs_certainty and getattr(pipe, "exit_heads", None) is None:
            raise ValueError(f"method {spec!r}: its policy {type(config.policy).__name__} needs uncertainty heads, "
                             f"and the {type(pipe).__name__} folder has none (train them, or use a schedule)")
        return Method(f"{Path(body).stem}{at}", "exit_config", solver, k, config, notes={"file": body})
    if kind == "steps":
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"method {spec!r}: steps:K needs an int K >= 1")
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


# -------------------------------------------------------------------------------------------------- preparing
def output_shape(pipe: Any) -> tuple[int, int]:
    """(channels, side) of the images the pipeline makes by default, known before sampling."""
    kind = kind_of(pipe)
    config = denoiser_of(pipe).config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    if not kind.latent:
        return int(config.in_channels), int(size)
    vae = pipe.vae
    factor = getattr(pipe, "vae_scale_factor", 2 ** (len(vae.config.block_out_channels) - 1))
    return int(vae.config.out_channels), int(size) * int(factor)


def default_guidance(pipe: Any) -> float | None:
    """The guidance scale a call without one runs at (None for unconditional pipelines)."""
    if kind_of(pipe).ours:
        return float(pipe.resolve_call(None, None, None).guidance_scale)
    parameter = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    return None if parameter is None else float(parameter.default)


def conditioning_of(config: BenchConfig, pipe: Any) -> Conditioning:
    kind = kind_of(pipe).conditioning
    name = type(pipe).__name__
    if kind == "prompts":
        if config.classes or not config.prompts:
            raise ValueError(f"{name} is text-conditioned: pass --prompts FILE (one prompt per line, or JSONL)")
        return Conditioning.from_prompt_file(config.prompts)
    if kind == "none":
        if config.classes or config.prompts:
            raise ValueError(f"{name} is unconditional: it takes neither --classes nor --prompts")
        return Conditioning("none")
    if config.prompts:
        raise ValueError(f"{name} is class-conditional: pass --classes (ids or names), not --prompts")
    if config.classes:
        return Conditioning.from_classes(list(config.classes), pipe)
    from ..pipelines.conditioning import _num_classes

    count = _num_classes(pipe)
    if count is None:
        raise ValueError(f"{name}: cannot tell how many classes it has; pass --classes")
    return Conditioning("classes", class_ids=list(range(count)))


@dataclass
class Prepared:
    """Everything checked before sampling."""

    pipe: Any
    conditioning: Conditioning
    methods: list[Method]
    features: list[FeatureSpec]
    real_folder: ImageFolder | None
    real_stats: dict[str, RealStats]
    real_stats_files: dict[str, str]
    shape: tuple[int, int]
    guidance: float | None
    warnings: dict[str, list[str]]  # per feature network (key)
    pipeline_key: str


def _pipeline_key(folder: str, config: BenchConfig, device: str) -> str:
    root = Path(folder).resolve()
    files = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())
    return run_key({"folder": str(root), "index": (root / "model_index.json").read_text(), "files": files,
                    "dtype": config.dtype, "device": torch.device(device).type})


def prepare(config: BenchConfig, device: str = "cpu") -> Prepared:
    """Load and check everything (`ValueError` for bad input); nothing is sampled."""
    pipeline_class_name(config.pipeline)  # an unsupported class is refused before anything loads
    if config.real is not None and not Path(config.real).is_dir():
        raise ValueError(f"real image folder {config.real!r} does not exist or is not a folder")
    features = load_features(config, device)
    pipe = load_pipeline(config.pipeline, torch_dtype=DTYPES[config.dtype], device=device)
    pipe.set_progress_bar_config(disable=True)
    conditioning = conditioning_of(config, pipe)
    guidance = config.guidance_scale if config.guidance_scale is not None else default_guidance(pipe)
    if kind_of(pipe).conditioning == "none" and config.guidance_scale is not None:
        raise ValueError(f"{type(pipe).__name__} is unconditional and takes no guidance scale, got {config.guidance_scale}")
    if config.solver != "pipeline" and not hasattr(pipe.scheduler, "alphas_cumprod"):
        raise ValueError(f"solver {config.solver!r} needs a DDPM-type schedule; {type(pipe.scheduler).__name__} has "
                         f"none: use solver 'pipeline'")
    solver = config.solver
    methods = [Method(f"{solver}{config.steps}", "reference", solver, config.steps)]
    sweep = config.frontier_steps or tuple(max(1, round(f * config.steps)) for f in config.frontier_fractions)
    methods += [Method(f"{solver}{k}", "fewer_steps", solver, k) for k in sorted(set(sweep), reverse=True)
                if k < config.steps]
    for spec in config.methods:
        method = parse_method(spec, pipe, config.steps, solver)
        if method.name not in {m.name for m in methods}:
            methods.append(method)
    shape = output_shape(pipe)
    warnings: dict[str, list[str]] = {spec.key: [] for spec in features}
    folder, stats, stats_files = None, {}, {}
    if config.real is not None:
        folder = ImageFolder(config.real, resolution=shape[1], channels=shape[0])
        logger.info("real images: %s", folder.describe())
    else:
        loaded = [RealStats.load(p) for p in config.real_stats]
        by_net = {s.feature_net: (s, p) for s, p in zip(loaded, config.real_stats)}
        for spec in features:
            if spec.key not in by_net:
                raise ValueError(f"no real statistics for the feature network {spec.name!r} (key {spec.key}); the "
                                 f"files given hold {sorted(by_net)}: pass --real DIR once to write them")
            s, path = by_net[spec.key]
            if s.num_features != spec.num_features:
                raise ValueError(f"{path!r} holds {s.num_features} features; {spec.name} gives {spec.num_features}")
            stats[spec.key], stats_files[spec.key] = s, path
    for spec in features:
        count = len(folder) if folder is not None else stats[spec.key].count
        for n, what in ((count, "real images"), (config.num_images, "generated images per method")):
            message = warn_small_set(n, spec.num_features, f"{spec.name}, {what}")
            if message:
                warnings[spec.key].append(message)
    return Prepared(pipe, conditioning, methods, features, folder, stats, stats_files, shape, guidance, warnings,
                    _pipeline_key(config.pipeline, config, device))


# ------------------------------------------------------------------------------------------------------- run
class _Runner:
    """Samples, encodes and scores methods on the prepared pipeline; keeps one row per method and feature net."""

    def __init__(self, config: BenchConfig, prep: Prepared, cache: ShardCache, progress: bool) -> None:
        self.config, self.prep, self.cache = config, prep, cache
        self.pipe = prep.pipe
        self.schedulers = {"pipeline": self.pipe.scheduler}
        if config.solver != "pipeline":
            self.schedulers.update(make_schedulers(self.pipe.scheduler))
        self.progress = progress and cache.rank == 0
        self.paired: dict[str, PairedFID] = {}
        self.rows: dict[str, dict[str, dict]] = {spec.key: {} for spec in prep.features}
        self.methods: dict[str, Method] = {}
        self.block_evals: dict[str, float] = {}  # per image, on every process (they decide what to sample next)
        self.not_attached: dict[str, str] = {}
        self.reference: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        self.text_features: torch.Tensor | None = None

    def sample(self, method: Method, indices: list[int], batch_size: int | None = None) -> Any:
        from ..eval.baselines import diffusers_cache
        from ..eval.pipeline_sampling import sample_pipeline

        self.pipe.scheduler = self.schedulers[method.solver]
        wrapper = None
        if method.cache is not None:
            wrapper = lambda: diffusers_cache(denoiser_of(self.pipe), method.cache, self.pipe.scheduler, method.steps)  # noqa: E731
        guidance = None if kind_of(self.pipe).conditioning == "none" else self.prep.guidance
        return sample_pipeline(self.pipe, indices, self.prep.conditioning, exit_config=method.exit_config,
                               num_inference_steps=method.steps, guidance_scale=guidance, seed=method.seed,
                               batch_size=batch_size or self.config.batch_size, call_wrapper=wrapper)

    def _shard(self, method: Method, indices: list[int]) -> tuple[torch.Tensor, dict[str, int]]:
        run = self.sample(method, indices)
        images = (run.images.clamp(0, 1) * 255).round().to(torch.uint8)  # what a saved PNG holds
        return images, {"block_evals": run.block_evals, "model_rows": run.model_rows}

    def key(self, method: Method) -> str:
        scheduler = self.schedulers[method.solver]
        return run_key({"pipeline": self.prep.pipeline_key, "method": {**method.describe(), "name": None},
                        "scheduler": [type(scheduler).__name__, dict(scheduler.config)],
                        "guidance": self.prep.guidance, "conditioning": self.prep.conditioning.to_dict(),
                        "seed": method.seed})

    def real_reference(self, spec: FeatureSpec, out: Path) -> FrechetReference:
        """The real side under `spec`: from the saved statistics, or from the folder (encoded in shards across
        processes, then saved as OUT/real-stats-<key>.safetensors for `--real-stats`)."""
        if spec.key in self.prep.real_stats:
            s = self.prep.real_stats[spec.key]
            return FrechetReference.from_moments(s.mean, s.cov)
        folder = self.prep.real_folder
        key = run_key({"real": folder.summary(), "files": [(str(f), f.stat().st_size) for f in folder.files]})
        features = self.cache.features(key, len(folder), spec.key, spec.encode,
                                       lambda s, e: next(folder.batches(e - s, folder.files[s:e])))
        if self.cache.rank == 0:
            RealStats.from_features(features, spec.key).save(out / f"real-stats-{spec.key}.safetensors")
        return FrechetReference(features)

    def measure(self, method: Method) -> bool:
        """Sample (or read back), encode and score `method`; False when a diffusers cache cannot attach."""
        if method.name in self.methods:
            return True
        n = self.config.num_images
        if method.cache is not None:
            try:  # a two-image trial, as `grid.cache_methods`: a cache that cannot attach is reported, not fatal
                self.sample(method, [0, 1], batch_size=2)
            except (ValueError, RuntimeError, TypeError, KeyError, AttributeError) as error:
                self.not_attached[method.name] = f"{type(error).__name__}: {error}"
                logger.info("%s cannot attach: %s", method.name, self.not_attached[method.name])
                return False
        from tqdm.auto import tqdm

        key = self.key(method)
        t0 = time.perf_counter()
        with tqdm(total=self.cache.missing(key, n), desc=f"{method.name:24s}", unit="img",
                  disable=not self.progress, leave=False) as bar:
            images, counters = self.cache.images(key, n, lambda i: self._shard(method, i), bar.update)
        expected = self.prep.shape
        if images.shape[1] != expected[0] or images.shape[-1] != expected[1]:
            raise RuntimeError(f"{method.name}: the pipeline made {tuple(images.shape[1:])} images, expected "
                               f"{expected[0]} channels at {expected[1]}x{expected[1]} (the real images were read so)")
        features = {spec.key: self.cache.features(key, n, spec.key, spec.encode, lambda s, e: images[s:e])
                    for spec in self.prep.features}
        self.methods[method.name] = method
        self.block_evals[method.name] = counters["block_evals"] / n
        if self.cache.rank != 0:  # the statistics are the main process's; the others only sample and encode
            return True
        if self.reference is None:
            self.reference = (images, features)
        ref_images, ref_features = self.reference
        base = {**method.describe(), "block_evals_per_image": self.block_evals[method.name],
                "block_fraction": self.block_evals[method.name] / next(iter(self.block_evals.values())),
                "model_rows_per_image": counters["model_rows"] / n, "sample_s": time.perf_counter() - t0,
                "fidelity": fidelity(images.float() / 255, ref_images.float() / 255)}
        for spec in self.prep.features:
            f = features[spec.key]
            row = {**base, "fid": self.paired[spec.key].add(method.name, f),
                   "fid_resamples": [round(float(v), 5) for v in self.paired[spec.key].resampled[method.name]],
                   "fidelity": {**base["fidelity"],
                                "feature_distance": float((f - ref_features[spec.key]).norm(dim=1).mean())}}
            if hasattr(spec.net, "logits") and self.prep.conditioning.kind == "classes":
                labels = torch.tensor([self.prep.conditioning.class_id(i) for i in range(n)])
                with torch.no_grad():
                    row["accuracy"] = float((spec.net.logits(images.float() / 255).argmax(1) == labels).float().mean())
            if self.text_features is not None and spec.key == self._clip_key():
                from ..eval.standard_features import clip_scores

                prompt_rows = torch.tensor([i % self.prep.conditioning.size for i in range(n)])
                row["clip_score"] = float(clip_scores(f, self.text_features[prompt_rows]).mean())
            self.rows[spec.key][method.name] = row
        logger.info("%-28s blocks %.3f  %s  (%.1fs)", method.name, base["block_fraction"],
                    "  ".join(f"FID[{s.key}] {self.rows[s.key][method.name]['fid']:.3f}" for s in self.prep.features),
                    base["sample_s"])
        return True

    def _clip_key(self) -> str | None:
        return next((s.key for s in self.prep.features if s.key.startswith("clip")), None)

    def matched_frontier(self) -> list[Method]:
        """Fewer-steps points at the block cost of every other row (the step counts just below and above it)."""
        reference = next(iter(self.block_evals.values()))
        steps = self.config.steps
        out: dict[str, Method] = {}
        for name, method in list(self.methods.items()):
            if method.family in frontier.FRONTIER_FAMILIES:
                continue
            exact = self.block_evals[name] / reference * steps
            for k in sorted({int(np.floor(exact + 1e-9)), int(np.ceil(exact - 1e-9))}):
                candidate = f"{self.config.solver}{k}"
                if 1 <= k < steps and candidate not in self.methods:
                    out[candidate] = Method(candidate, "fewer_steps", self.config.solver, k, notes={"matched": True})
        return list(out.values())

    def timings(self) -> dict[str, list[float]]:
        """Interleaved wall-clock of one call on `timing_batch` images per method (no caching)."""
        from ..eval.timing import interleaved_timings

        batch = self.config.timing_batch or self.config.batch_size
        fns = {name: (lambda m=m: self.sample(m, list(range(batch)), batch_size=batch)) for name, m in self.methods.items()}
        device = next(denoiser_of(self.pipe).parameters()).device
        return interleaved_timings(fns, repeats=self.config.timing_repeats, warmup=1, device=device)


def run(config: BenchConfig, out: str | Path = "bench_out", progress: bool = True, command: str = "") -> dict | None:
    """Run the benchmark; the main process writes OUT/report.json, report.md and pareto.png and returns the
    report (other processes of an `accelerate launch` return None after sampling and encoding their shards)."""
    from accelerate import PartialState

    state = PartialState(cpu=config.device == "cpu")
    device = str(state.device) if config.device == "cuda" and state.num_processes > 1 else config.device
    out = Path(out)
    started = time.perf_counter()
    load_before = _load_average()
    prep = prepare(config, device)  # every input error surfaces here, before sampling
    out.mkdir(parents=True, exist_ok=True)
    cache = ShardCache(Path(config.cache_dir) if config.cache_dir else out / "samples", config.shard_size, state)
    runner = _Runner(config, prep, cache, progress)
    n = config.num_images
    with torch.no_grad():
        for spec in prep.features:
            reference = runner.real_reference(spec, out)
            runner.paired[spec.key] = PairedFID(reference, n, num_resamples=config.bootstrap,
                                                confidence=config.confidence)
        if prep.conditioning.kind == "prompts" and any(s.key.startswith("clip") for s in prep.features):
            clip = next(s for s in prep.features if s.key.startswith("clip")).net
            if clip.scores_text:
                runner.text_features = clip.text_features([p.text for p in prep.conditioning.prompts]).double().cpu()
        for method in prep.methods:
            runner.measure(method)
        if config.match_frontier:
            for method in runner.matched_frontier():
                runner.measure(method)
        if cache.rank != 0:
            return None
        times = runner.timings() if config.timing_repeats > 0 else {}
    return _report(config, prep, runner, times, out, command, started, load_before)


def _report(config: BenchConfig, prep: Prepared, runner: _Runner, times: dict, out: Path, command: str,
            started: float, load_before: Any) -> dict:
    pipe = prep.pipe
    batch = config.timing_batch or config.batch_size
    reference = next(iter(runner.methods))
    classes = {name: type(s).__name__ for name, s in runner.schedulers.items()}
    entries = []
    for spec in prep.features:
        rows = runner.rows[spec.key]
        if times:
            _store_times(rows, times, reference, batch, primary=True)
        decisions = frontier.decide(rows, config.confidence, timing_batch=batch)
        point = frontier.operating_point(rows, decisions["recommended"], classes, prep.guidance, config.steps,
                                         config.confidence, f"{out / 'report.json'} ({command or 'ee-diffusion bench --pipeline'})")
        entries.append({
            "setting": f"{type(pipe).__name__} / {spec.name}", "pipeline": str(config.pipeline),
            "pipeline_class": type(pipe).__name__, "num_blocks": len(getattr(denoiser_of(pipe), "transformer_blocks", [])) or None,
            "conditioning": prep.conditioning.describe(), "num_images": config.num_images,
            "reference_steps": config.steps, "reference": reference, "guidance_scale": prep.guidance,
            "image_shape": list(prep.shape), "solvers": {s: {"class": c} for s, c in classes.items()},
            "feature_net": spec.describe(),
            "real": (prep.real_folder.summary() if prep.real_folder is not None else
                     {"stats_file": prep.real_stats_files[spec.key], "count": prep.real_stats[spec.key].count}),
            "floor": None,
            "bootstrap": {"resamples": config.bootstrap, "confidence": config.confidence, "seed": 0,
                          "what": "percentile intervals over resamples of image indices shared by every method; the "
                                  "real statistics stay fixed"},
            "not_attached": runner.not_attached, "rows": rows, "decisions": decisions, "operating_point": point,
            "timing": {"batches": [batch] if times else [], "repeats": config.timing_repeats, "warmup": 1,
                       "what": "one pipeline call on `batch` images per method per round, interleaved in rotating "
                               "order; exit hooks and caches are attached inside each timed call; speedup = median "
                               "over rounds of (reference time / method time)"},
            "warnings": prep.warnings[spec.key],
        })
    report = {
        "kind": "bench --pipeline", "config": asdict(config), "command": command,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                        "python": platform.python_version(), "cpu_count": os.cpu_count(), "device": str(config.device),
                        "dtype": config.dtype, "processes": runner.cache.world,
                        "load_average_before": load_before, "load_average_after": _load_average()},
        "sampled_shards": runner.cache.sampled_shards, "elapsed_s": time.perf_counter() - started,
        "settings": entries,
    }
    report.update(_finite(report))
    atomic_write_json(out / "report.json", report, indent=1, default=_json_default, allow_nan=False)
    atomic_write_text(out / "report.md", markdown(report))
    plot(report, out / "pareto.png")
    return report


def markdown(report: dict) -> str:
    """The report as Markdown: per feature network the verdict, the recommendation and every method."""
    env = report["environment"]
    lines = ["# ee-diffusion bench --pipeline", "", f"Command: `{report['command']}`", "",
             f"torch {env['torch']}, {env['threads']} threads, {env['processes']} process(es), {env['device']} "
             f"{env['dtype']}; total {report['elapsed_s']:.0f} s. FIDs under different feature networks are not "
             f"comparable: each has its own section.", ""]
    for s in report["settings"]:
        d = s["decisions"]
        ref = s["rows"][s["reference"]]
        real = s["real"]
        real_text = real.get("described", f"{real['count']} images (statistics file {real.get('stats_file')})")
        lines += [f"## {s['setting']}", "",
                  f"**Verdict.** {d['verdict']}", "",
                  f"Pipeline `{s['pipeline']}` ({s['pipeline_class']}), {s['conditioning']}, {s['num_images']} images "
                  f"per method at {s['image_shape'][1]}x{s['image_shape'][1]}, guidance {s['guidance_scale']}. "
                  f"Feature network: {s['feature_net']['name']}, {s['feature_net']['features']} features. Real: "
                  f"{real_text}. Reference: `{s['reference']}` (stock pipeline, no hooks), FID {ref['fid']:.3f}. "
                  f"Intervals: {s['bootstrap']['confidence']:.0%} paired bootstrap, {s['bootstrap']['resamples']} "
                  f"resamples of image indices.", ""]
        lines += [f"Warning: {w}" for w in s["warnings"]] + ([""] if s["warnings"] else [])
        lines += ["Knee (fewest steps whose interval against the reference includes 0 or lies below it): "
                  + (", ".join(f"{k}: `{v}`" for k, v in d["knees"].items()) or "none") + ".", "",
                  f"Recommended operating point: `{d['recommended']}` - {_describe_point(s['operating_point'])}.", "",
                  "### Every method", ""] + rows_table(s)
        if any("clip_score" in r for r in s["rows"].values()):
            lines += ["", "CLIP score (100 x max(cos, 0), mean over images): " + ", ".join(
                f"{name} {r['clip_score']:.2f}" for name, r in s["rows"].items() if "clip_score" in r) + "."]
        if s["not_attached"]:
            lines += ["", "Diffusers caches that could not attach: " + "; ".join(
                f"{k}: {v}" for k, v in s["not_attached"].items())]
        lines += ["", f"Timing: {s['timing']['what']}; {s['timing']['repeats']} rounds after {s['timing']['warmup']} "
                      f"warm-up at batch {s['timing']['batches'] or 'none (no timing: decisions by block evaluations)'}.", ""]
    return "\n".join(lines) + "\n"
