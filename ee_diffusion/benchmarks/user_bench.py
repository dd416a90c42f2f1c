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
>>> import tempfile
>>> from pathlib import Path
>>> from PIL import Image
>>> from diffusers import DDIMScheduler
>>> from ee_diffusion.pipelines import EarlyExitDiTPipeline
>>> from ee_diffusion.testing import tiny_dit
>>> root = Path(tempfile.mkdtemp())
>>> EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=4), scheduler=DDIMScheduler()).save_pretrained(root / "model")
>>> (root / "real").mkdir()
>>> for i in range(10):
...     Image.new("L", (8, 8), 25 * i).save(root / "real" / f"{i}.png")
>>> config = BenchConfig(pipeline=str(root / "model"), real=str(root / "real"), features=("digits",),
...                      methods=("static:2",), steps=4, num_images=6, bootstrap=20, timing_repeats=0)
>>> report = run(config, root / "out", progress=False)
>>> entry = report["settings"][0]
>>> entry["setting"], list(entry["rows"])
('EarlyExitDiTPipeline / digits (ee-diffusion feature net)', ['pipeline4', 'pipeline3', 'pipeline2', 'static2@pipeline4'])

```
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_json, atomic_write_text
from ..eval.paired import FrechetReference, PairedFID, fidelity
from ..eval.real_images import RealStats
from ..pipelines.stock import denoiser_of, kind_of
from . import frontier
from .bench import load_average, _store_times
from .grid import Method, make_schedulers
from .report import _describe_point, _finite, _json_default, plot, rows_table
from .sample_cache import ShardCache, run_key
from .user_config import BenchConfig
from .user_prepare import FeatureSpec, Prepared, prepare

__all__ = ["BenchConfig", "markdown", "run"]

logger = logging.getLogger(__name__)


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
        self.reference: tuple[str, dict[str, torch.Tensor]] | None = None  # its cache key and (N, F) features
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
        """The cache key of `method`'s images. Image i does not depend on the batching (its own noise), except
        under diffusers' caches, which decide per batch: their key holds the batch and shard sizes too."""
        scheduler = self.schedulers[method.solver]
        what = {"pipeline": self.prep.pipeline_key, "method": {**method.describe(), "name": None},
                "scheduler": [type(scheduler).__name__, dict(scheduler.config)], "guidance": self.prep.guidance,
                "conditioning": self.prep.conditioning.to_dict(), "seed": method.seed}
        if method.cache is not None:
            what["batching"] = [self.config.batch_size, self.config.shard_size]
        return run_key(what)

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
            counters = self.cache.images(key, n, lambda i: self._shard(method, i), bar.update)
        first = self.cache.read(key, *self.cache.ranges(n)[0])
        expected = self.prep.shape
        if first.shape[1] != expected[0] or first.shape[-1] != expected[1]:
            raise RuntimeError(f"{method.name}: the pipeline made {tuple(first.shape[1:])} images, expected "
                               f"{expected[0]} channels at {expected[1]}x{expected[1]} (the real images were read so)")
        features = {spec.key: self.cache.features(key, n, spec.key, spec.encode,
                                                  lambda s, e: self.cache.read(key, s, e))
                    for spec in self.prep.features}
        self.methods[method.name] = method
        self.block_evals[method.name] = counters["block_evals"] / n
        if self.cache.rank != 0:  # the statistics are the main process's; the others only sample and encode
            return True
        if self.reference is None:
            self.reference = (key, features)
        base = {**method.describe(), "block_evals_per_image": self.block_evals[method.name],
                "block_fraction": self.block_evals[method.name] / next(iter(self.block_evals.values())),
                "model_rows_per_image": counters["model_rows"] / n, "sample_s": time.perf_counter() - t0,
                "fidelity": self._fidelity(key)}
        accuracy = self._accuracy(key)
        for spec in self.prep.features:
            f = features[spec.key]
            row = {**base, "fid": self.paired[spec.key].add(method.name, f),
                   "fid_resamples": [round(float(v), 5) for v in self.paired[spec.key].resampled[method.name]],
                   "fidelity": {**base["fidelity"],
                                "feature_distance": float((f - self.reference[1][spec.key]).norm(dim=1).mean())}}
            if spec.key in accuracy:
                row["accuracy"] = accuracy[spec.key]
            if self.text_features is not None and spec.key == self._clip_key():
                from ..eval.standard_features import clip_scores

                prompt_rows = torch.tensor([i % self.prep.conditioning.size for i in range(n)])
                row["clip_score"] = float(clip_scores(f, self.text_features[prompt_rows]).mean())
            self.rows[spec.key][method.name] = row
        logger.info("%-28s blocks %.3f  %s  (%.1fs)", method.name, base["block_fraction"],
                    "  ".join(f"FID[{s.key}] {self.rows[s.key][method.name]['fid']:.3f}" for s in self.prep.features),
                    base["sample_s"])
        return True

    def _fidelity(self, key: str) -> dict[str, Any]:
        """PSNR and SSIM to the reference's image from the same noise, shard by shard (means over images)."""
        sums: dict[str, float] = {}
        for start, end in self.cache.ranges(self.config.num_images):
            images = self.cache.read(key, start, end).float() / 255
            part = fidelity(images, self.cache.read(self.reference[0], start, end).float() / 255)
            for name in ("psnr_db", "ssim"):
                sums[name] = sums.get(name, 0.0) + part[name] * (end - start)
            sums["ssim_kernel"] = part["ssim_kernel"]
        return {k: (v / self.config.num_images if k != "ssim_kernel" else v) for k, v in sums.items()}

    def _accuracy(self, key: str) -> dict[str, float]:
        """Per feature net that is one of our classifiers: the share of images it gives the conditioned class."""
        out = {}
        if self.prep.conditioning.kind != "classes":
            return out
        for spec in self.prep.features:
            if not hasattr(spec.net, "logits"):
                continue
            device, hits = next(spec.net.parameters()).device, 0
            for start, end in self.cache.ranges(self.config.num_images):
                images = (self.cache.read(key, start, end).float() / 255).to(device)
                labels = torch.tensor([self.prep.conditioning.class_id(i) for i in range(start, end)])
                with torch.no_grad():
                    hits += int((spec.net.logits(images).argmax(1).cpu() == labels).sum())
            out[spec.key] = hits / self.config.num_images
        return out

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
    load_before = load_average()
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
                        "load_average_before": load_before, "load_average_after": load_average()},
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
