"""The one engine of the paired benchmarks: sample a method, cache its images, score them under every network.

`bench --pipeline`, the operating-point search (`calibration.search_phases`), point timing and the repository's
benches measure through here (`bench-caches` samples and times through `MethodSampler` in a loop of its own):
- `MethodSampler` samples any `Method` on any supported pipeline with `pipeline_sampling.sample_pipeline` (image i
  from its own noise: it does not depend on the batch, diffusers' caches excepted, which decide per batch);
  `timed` gives interleaved wall-clock with hooks and caches put on and taken off outside the timed region.
- `Runner` keeps a method's N images as uint8 shards (`sample_cache.ShardCache`: resumable, split over
  `accelerate launch` processes), encodes them under every feature network and makes the method's row: its FID
  under each network on shared bootstrap resamples (`paired.PairedFIDs`), its fidelity to the reference image
  from the same noise, its class accuracy, its block evaluations. Every process computes the rows, so a caller
  that decides what to measure next (the search) takes the same path on each. With no feature networks (the
  search's PSNR goal) it keeps images and fidelity only.

A row's `fid` and `fid_resamples` are the primary (first) network's; `fid_by_net` and `fid_resamples_by_net`
hold every network's.

```py
>>> import tempfile
>>> from diffusers import DDIMScheduler
>>> from ee_diffusion.pipelines import EarlyExitDiTPipeline
>>> from ee_diffusion.pipelines.conditioning import Conditioning
>>> from ee_diffusion.testing import tiny_dit
>>> pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DDIMScheduler())
>>> pipe.set_progress_bar_config(disable=True)
>>> sampler = MethodSampler(pipe, Conditioning("classes", class_ids=[0, 1]), 1.0, {"ddim": pipe.scheduler})
>>> run = sampler(Method("ddim2", "reference", "ddim", 2), [0, 1, 2])
>>> tuple(run.images.shape), run.labels.tolist()
((3, 1, 8, 8), [0, 1, 0])

```
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..pipelines.conditioning import Conditioning
from ..pipelines.stock import denoiser_of, kind_of
from . import frontier
from .method import Method
from .paired import FrechetReference, PairedFIDs, fidelity
from .pipeline_sampling import SampleRun, image_labels, sample_pipeline
from .sample_cache import ShardCache, run_key
from .timing import ExitConfigSwitch, interleaved_timings

__all__ = ["FeatureSpec", "MethodSampler", "Runner", "as_uint8"]

logger = logging.getLogger(__name__)


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] as a saved PNG holds them: uint8, rounded. Generated and real images are
    scored so alike."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


@dataclass
class FeatureSpec:
    """One feature network of the run: what the report calls it, its cache key, and how it encodes images."""

    name: str
    key: str
    net: nn.Module | Callable[[torch.Tensor], torch.Tensor]
    resolution: str
    unit_input: bool = False  # our shipped nets take float images in [0, 1]; the standard ones uint8
    batch_size: int = 64
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int | None:
        """The feature dimension, when the network states it (a plain function does not)."""
        count = getattr(self.net, "num_features", None)
        return None if count is None else int(count)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, F) float64 features of uint8 images (B, C, H, W)."""
        # A network without parameters (or a plain function, as the search API accepts) runs on the CPU.
        parameter = next(iter(getattr(self.net, "parameters", tuple)()), None)
        device = torch.device("cpu") if parameter is None else parameter.device
        out = []
        for chunk in images.split(self.batch_size):
            x = chunk.to(device)
            x = x.float() / 255.0 if self.unit_input else x
            out.append(self.net(x).double().cpu())
        return torch.cat(out)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "features": self.num_features, "resolution": self.resolution, **self.meta}


class MethodSampler:
    """Samples any `Method` on one pipeline (see the module doc).

    Args:
        conditioning: what image i is conditioned on (`Conditioning`).
        guidance: the guidance scale of every method that names none (None: the pipeline's default; unconditional
            pipelines take None).
        schedulers: solver name -> scheduler; a method's `solver` picks one.
        sample_batch, cache_batch: images per pipeline call for exit methods and for diffusers' caches.
        heads, bridges: a stock pipeline's `UncertaintyHeads` / U-Net bridges for the exit hooks (ours carry
            their own).
    """

    def __init__(self, pipe: Any, conditioning: Conditioning, guidance: float | None, schedulers: dict[str, Any],
                 sample_batch: int = 64, cache_batch: int | None = None, heads: Any = None, bridges: Any = None) -> None:
        self.pipe, self.conditioning, self.guidance, self.schedulers = pipe, conditioning, guidance, schedulers
        self.sample_batch = sample_batch
        self.cache_batch = cache_batch or sample_batch
        self.ours = kind_of(pipe).ours
        self.heads = pipe.exit_heads if self.ours else heads
        self.bridges = bridges
        self.denoiser = denoiser_of(pipe)
        self.switch = ExitConfigSwitch(self.denoiser)

    def use_solver(self, solver: str) -> None:
        if solver not in self.schedulers:
            raise ValueError(f"no scheduler for solver {solver!r}; this run has {sorted(self.schedulers)}")
        self.pipe.scheduler = self.schedulers[solver]

    def cache_context(self, method: Method) -> Any:
        from .baselines import diffusers_cache

        if method.cache is None:
            return contextlib.nullcontext()
        return diffusers_cache(self.denoiser, method.cache, self.pipe.scheduler, method.steps)

    def __call__(self, method: Method, indices: Iterable[int], batch_size: int | None = None,
                 in_timing: bool = False, on_batch: Callable[[int], None] | None = None) -> SampleRun:
        """Images `indices` of `method`. `in_timing`: the hooks or cache were put on by `timed`'s setup."""
        self.use_solver(method.solver)
        batch = batch_size or (self.cache_batch if method.cache is not None else self.sample_batch)
        wrapper = None if in_timing or method.cache is None else (lambda: self.cache_context(method))
        guidance = self.guidance if method.guidance_scale is None else method.guidance_scale
        # A stock denoiser hooked by `timed`'s setup runs hooked when called without a config.
        config = None if in_timing and not self.ours else method.exit_config
        return sample_pipeline(self.pipe, list(indices), self.conditioning, exit_config=config, heads=self.heads,
                               bridges=self.bridges, num_inference_steps=method.steps, guidance_scale=guidance,
                               seed=method.seed, batch_size=batch, call_wrapper=wrapper, on_batch=on_batch)

    def timed(self, methods: list[Method], batch: int, repeats: int, warmup: int) -> dict[str, list[float]]:
        """Interleaved timings of one pipeline call on `batch` images per method: the stock model has no hooks,
        exit methods get theirs and caches get theirs in untimed setup steps."""
        indices = list(range(batch))
        fns, setup, teardown = {}, {}, {}
        stacks: dict[str, contextlib.ExitStack] = {}
        for m in methods:
            fns[m.name] = lambda m=m: self(m, indices, batch_size=batch, in_timing=True)
            hook = self.switch.use(m.exit_config, heads=self.heads) if m.exit_config is not None else self.switch.stock

            def enter(m: Method = m, hook: Callable[[], None] = hook) -> None:
                hook()
                self.use_solver(m.solver)
                if m.cache is not None:
                    stacks[m.name] = contextlib.ExitStack()
                    stacks[m.name].enter_context(self.cache_context(m))

            setup[m.name] = enter
            teardown[m.name] = lambda m=m: stacks.pop(m.name).close() if m.name in stacks else None
        device = next(self.denoiser.parameters()).device
        try:
            return interleaved_timings(fns, repeats=repeats, warmup=warmup, setup=setup, teardown=teardown,
                                       device=device)
        finally:
            for stack in stacks.values():
                stack.close()
            self.switch.close()


class Runner:
    """Samples (or reads back), encodes and scores methods; keeps one row per method (see the module doc).

    Args:
        sampler: the `MethodSampler` of the run's pipeline.
        cache: where the images and features live (`ShardCache`; its processes split the shards).
        features: the run's feature networks (`FeatureSpec`), the primary one first (may be empty:
            no FIDs).
        reals: feature key -> the real side (`FrechetReference`) under that network.
        what: what every cached image of this run depends on beyond the method (pipeline folder, conditioning,
            guidance): part of every run key.
        text_features: (P, D) CLIP text features of the prompts, for the CLIP score (or None).
        image_shape: (channels, size) the feature networks and real images were prepared for: a method whose
            images differ is refused after its first shard (None: not checked).
        fidelity: give each row its mean PSNR/SSIM against the reference image from the same noise (it reads
            every shard of the run and of the reference once more; the search's calibration phase needs none).
    """

    def __init__(self, sampler: MethodSampler, cache: ShardCache, features: list[Any],
                 reals: dict[str, FrechetReference], num_images: int, what: dict[str, Any], bootstrap: int = 200,
                 confidence: float = 0.9, progress: bool = False, text_features: torch.Tensor | None = None,
                 image_shape: tuple[int, int] | None = None, fidelity: bool = True) -> None:
        self.sampler, self.cache, self.features, self.what = sampler, cache, features, what
        self.num_images = num_images
        self.scores = PairedFIDs({spec.key: reals[spec.key] for spec in features}, num_images, bootstrap,
                                 confidence) if features else None
        self.progress = progress and cache.rank == 0
        self.text_features = text_features
        self.image_shape = image_shape
        self.fidelity = fidelity
        self.rows: dict[str, dict[str, Any]] = {}
        self.methods: dict[str, Method] = {}
        self.block_evals: dict[str, float] = {}  # per image
        self.keys: dict[str, str] = {}  # method name -> the run key its images are cached under
        self.not_attached: dict[str, str] = {}
        self.reference: tuple[str, dict[str, torch.Tensor]] | None = None  # its run key and (N, F) features

    @property
    def primary(self) -> str | None:
        return None if self.scores is None else self.scores.primary

    def key(self, method: Method) -> str:
        """The run key of `method`'s images: what they depend on (not its name, family or notes, so two rows that
        run the same thing share their images). Image i does not depend on the batching (its own noise), except
        under diffusers' caches, which decide per batch: their key holds the batch and shard sizes too."""
        scheduler = self.sampler.schedulers[method.solver]
        described = {k: v for k, v in method.describe().items() if k not in ("name", "family", "notes")}
        # diffusers' private config entries are bookkeeping (`_use_default_values` lists names in set order, which
        # differs between processes): the class and the public fields are what the images depend on.
        config = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
        what = {**self.what, "method": described, "scheduler": [type(scheduler).__name__, config], "seed": method.seed}
        if method.cache is not None:
            what["batching"] = [self.sampler.cache_batch, self.cache.shard_size]
        return run_key(what)

    def _shard(self, method: Method, indices: list[int], bar: Any) -> tuple[torch.Tensor, dict[str, int]]:
        run = self.sampler(method, indices, on_batch=bar.update)
        return as_uint8(run.images), {"block_evals": run.block_evals, "model_rows": run.model_rows}

    def measure(self, method: Method) -> dict[str, Any] | None:
        """Sample (or read back), encode and score `method`; returns its row (None for a diffusers cache that
        cannot attach: `not_attached` says why)."""
        if method.name in self.methods:
            return self.rows.get(method.name)
        n = self.num_images
        if method.cache is not None:
            try:  # a two-image trial: a cache that cannot attach is reported, not fatal
                self.sampler(method, [0, 1], batch_size=2)
            except (ValueError, RuntimeError, TypeError, KeyError, AttributeError) as error:
                self.not_attached[method.name] = f"{type(error).__name__}: {error}"
                logger.info("%s cannot attach: %s", method.name, self.not_attached[method.name])
                return None
        from tqdm.auto import tqdm

        key = self.key(method)
        t0 = time.perf_counter()
        with tqdm(total=self.cache.missing(key, n), desc=f"{method.name:24s}", unit="img",
                  disable=not self.progress, leave=False) as bar:
            counters = self.cache.images(key, n, lambda i: self._shard(method, i, bar))
        if self.image_shape is not None:
            channels, size = self.image_shape
            first = self.cache.read(key, *self.cache.ranges(n)[0])
            if first.shape[1] != channels or first.shape[-2:] != (size, size):
                raise RuntimeError(f"{method.name}: the pipeline made {tuple(first.shape[1:])} images, expected "
                                   f"{channels} channels at {size}x{size} (the real images were read so)")
        features = {spec.key: self.cache.features(key, n, spec.key, spec.encode,
                                                  lambda s, e: self.cache.read(key, s, e))
                    for spec in self.features}
        self.methods[method.name] = method
        self.keys[method.name] = key
        self.block_evals[method.name] = counters["block_evals"] / n
        if self.reference is None:
            self.reference = (key, features)
        row = {**method.describe(), "block_evals_per_image": self.block_evals[method.name],
               "block_fraction": self.block_evals[method.name] / next(iter(self.block_evals.values())),
               "model_rows_per_image": counters["model_rows"] / n, "sample_s": time.perf_counter() - t0}
        if self.fidelity:
            row["fidelity"] = self._fidelity(key)
        if self.scores is not None:
            fids = self.scores.add(method.name, features)
            row.update(fid=fids[self.primary], fid_by_net=fids, fid_resamples=self._resamples(self.primary, method.name),
                       fid_resamples_by_net={net: self._resamples(net, method.name) for net in fids})
            if self.fidelity:
                row["fidelity"]["feature_distance"] = float(
                    (features[self.primary] - self.reference[1][self.primary]).norm(dim=1).mean())
        accuracy = self._accuracy(key)
        if accuracy is not None:
            row["accuracy"] = accuracy
        clip = next((s.key for s in self.features if s.key.startswith("clip")), None)
        if self.text_features is not None and clip is not None:
            from .standard_features import clip_scores

            prompts = torch.tensor([i % self.sampler.conditioning.size for i in range(n)])
            row["clip_score"] = float(clip_scores(features[clip], self.text_features[prompts]).mean())
        self.rows[method.name] = row
        if self.cache.rank == 0:
            logger.info("%-30s blocks %.3f  %s  (%.1fs)", method.name, row["block_fraction"],
                        "  ".join(f"FID[{k}] {v:.3f}" for k, v in row.get("fid_by_net", {}).items()), row["sample_s"])
        return row

    def images(self, name: str, start: int, end: int) -> torch.Tensor:
        """Images start..end-1 (one shard, `cache.ranges`) of a measured method, as floats in [0, 1]."""
        return self.cache.read(self.keys[name], start, end).float() / 255

    def sample_run(self, name: str) -> SampleRun:
        """A measured method's images (read back from its shards), labels and block evaluations as a `SampleRun`."""
        n = self.num_images
        images = torch.cat([self.images(name, s, e) for s, e in self.cache.ranges(n)])
        labels = image_labels(self.sampler.conditioning, range(n))
        evals = round(self.block_evals[name] * n)
        return SampleRun(images, labels, torch.arange(n), evals, round(self.rows[name]["model_rows_per_image"] * n))

    def _resamples(self, net: str, name: str) -> list[float]:
        return [round(float(v), 5) for v in self.scores.sets[net].resampled[name]]

    def _fidelity(self, key: str) -> dict[str, Any]:
        """PSNR and SSIM to the reference's image from the same noise, shard by shard (means over images)."""
        sums: dict[str, float] = {}
        for start, end in self.cache.ranges(self.num_images):
            images = self.cache.read(key, start, end).float() / 255
            part = fidelity(images, self.cache.read(self.reference[0], start, end).float() / 255)
            for name in ("psnr_db", "ssim"):
                sums[name] = sums.get(name, 0.0) + part[name] * (end - start)
            sums["ssim_kernel"] = part["ssim_kernel"]
        return {k: (v / self.num_images if k != "ssim_kernel" else v) for k, v in sums.items()}

    def _accuracy(self, key: str) -> float | None:
        """Under the first feature net that is one of our classifiers: the share of images it gives the class
        they were conditioned on (None: no such net, or not a class-conditioned run)."""
        conditioning = self.sampler.conditioning
        spec = next((s for s in self.features if hasattr(s.net, "logits")), None)
        if conditioning.kind != "classes" or spec is None:
            return None
        device, hits = next(spec.net.parameters()).device, 0
        for start, end in self.cache.ranges(self.num_images):
            images = (self.cache.read(key, start, end).float() / 255).to(device)
            labels = image_labels(conditioning, range(start, end))
            with torch.no_grad():
                hits += int((spec.net.logits(images).argmax(1).cpu() == labels).sum())
        return hits / self.num_images

    def difference(self, name: str, other: str) -> dict[str, Any]:
        """FID(name) - FID(other) under the primary network, `by_net` every network's."""
        return self.scores.difference(name, other)

    def matched_frontier(self, solvers: Iterable[str], reference_steps: int,
                         keep: Callable[[dict[str, Any]], bool] = lambda row: True) -> list[Method]:
        """Fewer-steps points of each solver at the block cost of every other method whose row `keep`s (the step
        counts just below and above its cost), not yet measured."""
        reference = next(iter(self.block_evals.values()))
        out: dict[str, Method] = {}
        for name, method in list(self.methods.items()):
            if method.family in frontier.FRONTIER_FAMILIES + ("seed", "guidance"):
                continue
            if name in self.rows and not keep(self.rows[name]):
                continue
            exact = self.block_evals[name] / reference * reference_steps
            for solver in solvers:
                for k in sorted({int(np.floor(exact + 1e-9)), int(np.ceil(exact - 1e-9))}):
                    candidate = f"{solver}{k}"
                    if 1 <= k <= reference_steps and candidate not in self.methods and candidate not in out:
                        out[candidate] = Method(candidate, "fewer_steps", solver, k, notes={"matched": True})
        return list(out.values())
