"""What `bench --pipeline` checks and loads before it samples anything: the feature networks, the pipeline, its
conditioning and methods, the real images or their saved statistics, and the warnings about small sets.

`prepare(config)` raises `ValueError` for every bad input (see `BenchConfig`), so a run fails before the first
image is sampled.

```py
>>> import tempfile
>>> from ee_diffusion.testing import tiny_pipeline
>>> folder = tempfile.mkdtemp()
>>> tiny_pipeline("sd").save_pretrained(folder)
>>> pipe = load_pipeline(folder)
>>> output_shape(pipe), default_guidance_scale(pipe)
((3, 16), 7.5)

```
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import check_output_folder
from ..pipelines.conditioning import Conditioning, num_classes_of
from ..pipelines.stock import default_guidance_scale, denoiser_of, kind_of, load_pipeline, pipeline_class_name
from .bench_config import DTYPES, BenchConfig, parse_method
from .method import Method
from .real_images import ImageFolder, RealStats, warn_small_set
from .runner import FeatureSpec
from .sample_cache import run_key
from .solvers import solver_spec

logger = logging.getLogger(__name__)


def _fingerprint(path: str | os.PathLike) -> str:
    """Name, size and the first MiB of a file: enough to tell weights files apart for the cache."""
    file = Path(path)
    with file.open("rb") as f:
        head = f.read(1 << 20)
    return hashlib.sha256(head + f"{file.name}:{file.stat().st_size}".encode()).hexdigest()[:12]


def our_feature_net(name: str) -> FeatureSpec:
    """One of our feature nets (a shipped name such as "digits-pool", or a saved net's path without suffix)."""
    from .features import load_feature_net

    net = load_feature_net(name)
    size = net.config["image_size"]
    return FeatureSpec(f"{Path(name).name} (ee-diffusion feature net)", f"net-{Path(name).name}", net,
                       f"{size}x{size} (native)", unit_input=True)


def load_features(config: BenchConfig, device: str) -> list[FeatureSpec]:
    """The feature networks of `config.features`, loaded and checked (`ValueError` before any sampling)."""
    from .features import FEATURE_NETS
    from .standard_features import ClipImageFeatures, load_inception

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
            # The folder's files by name and size, and its config: another checkpoint gets another cache key.
            files = sorted((f.name, f.stat().st_size) for f in folder.iterdir() if f.is_file())
            key = run_key({"files": files, "config": _fingerprint(folder / "config.json")})[:12]
            specs.append(FeatureSpec(f"clip {net.architecture} ({folder.name}) at {r}x{r}", f"clip{r}-{key}", net,
                                     f"{r}x{r}", meta={"folder": str(folder)}))
        elif name in FEATURE_NETS or Path(f"{name}.json").is_file():
            specs.append(our_feature_net(name))
        else:
            raise ValueError(f"unknown feature network {name!r}; known: 'inception', 'clip', {sorted(FEATURE_NETS)} or "
                             f"the path (without suffix) of a saved feature net")
    for spec in specs:
        spec.net.to(device)
    return specs


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
    count = num_classes_of(pipe)
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


def pipeline_key(folder: str | os.PathLike, dtype: str, device: str) -> str:
    """What a pipeline folder's images depend on (its files, dtype and device type), as a run-key part."""
    root = Path(folder).resolve()
    files = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())
    return run_key({"folder": str(root), "index": (root / "model_index.json").read_text(), "files": files,
                    "dtype": dtype, "device": torch.device(device).type})


def prepare(config: BenchConfig, device: str = "cpu") -> Prepared:
    """Load and check everything (`ValueError` for bad input); nothing is sampled."""
    pipeline_class_name(config.pipeline)  # an unsupported class is refused before anything loads
    if config.cache_dir is not None:
        check_output_folder(config.cache_dir, "cache_dir")
    if config.real is not None and not Path(config.real).is_dir():
        raise ValueError(f"real image folder {config.real!r} does not exist or is not a folder")
    features = load_features(config, device)
    pipe = load_pipeline(config.pipeline, torch_dtype=DTYPES[config.dtype], device=device)
    pipe.set_progress_bar_config(disable=True)
    conditioning = conditioning_of(config, pipe)
    guidance = config.guidance_scale if config.guidance_scale is not None else default_guidance_scale(pipe)
    if kind_of(pipe).conditioning == "none" and config.guidance_scale is not None:
        raise ValueError(f"{type(pipe).__name__} is unconditional and takes no guidance scale, got {config.guidance_scale}")
    solver = config.solver
    methods = [Method(f"{solver}{config.steps}", "reference", solver, config.steps)]
    sweep = config.frontier_steps or tuple(max(1, round(f * config.steps)) for f in config.frontier_fractions)
    methods += [Method(f"{solver}{k}", "fewer_steps", solver, k) for k in sorted(set(sweep), reverse=True)
                if k < config.steps]
    for spec in config.methods:
        method = parse_method(spec, pipe, config.steps, solver)
        if method.name not in {m.name for m in methods}:
            methods.append(method)
    # Every solver a row names is built from the folder's scheduler config: one its noise schedule cannot run
    # (DDIM on flow matching) is refused here, before any sampling.
    for name in dict.fromkeys(m.solver for m in methods):
        if name != "pipeline":
            solver_spec(name, pipe.scheduler)
    shape = output_shape(pipe)
    for spec in features:
        native = getattr(spec.net, "config", None)
        if spec.unit_input and (native["in_channels"], native["image_size"]) != shape:
            raise ValueError(f"the feature net {spec.name!r} takes {native['in_channels']}-channel "
                             f"{native['image_size']}x{native['image_size']} images; {type(pipe).__name__} makes "
                             f"{shape[0]}-channel {shape[1]}x{shape[1]} ones: use inception or clip")
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
                    pipeline_key(config.pipeline, config.dtype, device))
