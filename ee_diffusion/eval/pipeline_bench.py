"""`ee-diffusion bench --pipeline FOLDER`: the paired benchmark on the user's model, data and feature networks.

The protocol of docs/evaluation.md on any supported pipeline folder (`pipelines.stock.SUPPORTED_PIPELINES`),
through the one engine (`runner.py`): every method samples the same N images (cached in shards: `sample_cache.py`);
the reference is the stock pipeline at `steps`, the frontier fewer steps at full depth (a sweep, plus the step
counts matched to every other method's block evaluations), the other methods early exit and diffusers' caches.
FID against the user's real images (`--real DIR`, or saved statistics `--real-stats FILE`) under each feature
network asked for, with paired intervals per network (FIDs of different networks are never compared); the CLIP
score for text-conditioned pipelines; interleaved wall-clock (`timing.py`); `frontier.decide` gives the knee, the
recommendation and the verdict, under every network. Every input error raises `ValueError` in
`bench_prepare.prepare`, before any sampling.

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

import torch

from .._io import check_output_folder
from ..pipelines.stock import denoiser_of, kind_of
from . import frontier
from .bench_config import BenchConfig
from .bench_prepare import Prepared, prepare
from .paired import FrechetReference
from .real_images import RealStats
from .report import write_report
from .runner import FeatureSpec, MethodSampler, Runner
from .sample_cache import ShardCache, run_key
from .solvers import make_schedulers
from .timing import load_average, store_times

__all__ = ["BenchConfig", "run"]

logger = logging.getLogger(__name__)


def _real_reference(spec: FeatureSpec, prep: Prepared, cache: ShardCache, out: Path) -> FrechetReference:
    """The real side under `spec`: from the saved statistics, or from the folder (encoded in shards across
    processes, then saved as OUT/real-stats-<key>.safetensors for `--real-stats`)."""
    if spec.key in prep.real_stats:
        s = prep.real_stats[spec.key]
        return FrechetReference.from_moments(s.mean, s.cov)
    folder = prep.real_folder
    key = run_key({"real": folder.summary(), "files": [(str(f), f.stat().st_size) for f in folder.files]})
    features = cache.features(key, len(folder), spec.key, spec.encode,
                              lambda s, e: next(folder.batches(e - s, folder.files[s:e])))
    if cache.rank == 0:
        RealStats.from_features(features, spec.key).save(out / f"real-stats-{spec.key}.safetensors")
    return FrechetReference(features)


def run(config: BenchConfig, out: str | Path = "bench_out", progress: bool = True, command: str = "") -> dict | None:
    """Run the benchmark; the main process writes OUT/report.json, report.md and pareto.png and returns the
    report (other processes of an `accelerate launch` return None after sampling and encoding their shards)."""
    from accelerate import PartialState

    state = PartialState(cpu=config.device == "cpu")
    device = str(state.device) if config.device == "cuda" and state.num_processes > 1 else config.device
    out = check_output_folder(out, "out")  # a file there is refused before anything loads
    started = time.perf_counter()
    load_before = load_average()
    prep = prepare(config, device)  # every input error surfaces here, before sampling
    out.mkdir(parents=True, exist_ok=True)
    cache = ShardCache(Path(config.cache_dir) if config.cache_dir else out / "samples", config.shard_size, state)
    pipe = prep.pipe
    # The folder's own scheduler and every other solver a row names, built from its config (checked in `prepare`).
    named = [m.solver for m in prep.methods if m.solver != "pipeline"]
    schedulers = {"pipeline": pipe.scheduler, **make_schedulers(pipe.scheduler, dict.fromkeys(named))}
    guidance = None if kind_of(pipe).conditioning == "none" else prep.guidance
    sampler = MethodSampler(pipe, prep.conditioning, guidance, schedulers, config.batch_size)
    what = {"pipeline": prep.pipeline_key, "guidance": prep.guidance, "conditioning": prep.conditioning.to_dict()}
    with torch.no_grad():
        reals = {spec.key: _real_reference(spec, prep, cache, out) for spec in prep.features}
        text_features = None
        clip = next((s.net for s in prep.features if s.key.startswith("clip")), None)
        if prep.conditioning.kind == "prompts" and clip is not None and clip.scores_text:
            text_features = clip.text_features([p.text for p in prep.conditioning.prompts]).double().cpu()
        runner = Runner(sampler, cache, prep.features, reals, config.num_images, what, config.bootstrap,
                        config.confidence, progress, text_features, image_shape=prep.shape)
        for method in prep.methods:
            runner.measure(method)
        if config.match_frontier:
            # Fewer steps of every solver a row runs, at that row's block cost.
            for method in runner.matched_frontier(dict.fromkeys(m.solver for m in prep.methods), config.steps):
                runner.measure(method)
        if cache.rank != 0:
            return None
        batch = config.timing_batch or config.batch_size
        times = sampler.timed(list(runner.methods.values()), batch, config.timing_repeats, warmup=1) \
            if config.timing_repeats > 0 else {}
    return _report(config, prep, runner, times, out, command, started, load_before)


def _report(config: BenchConfig, prep: Prepared, runner: Runner, times: dict, out: Path, command: str,
            started: float, load_before: Any) -> dict:
    """One entry for the pipeline: every row scored under every feature network, decided under all of them."""
    pipe = prep.pipe
    batch = config.timing_batch or config.batch_size
    rows = runner.rows
    reference = next(iter(runner.methods))
    classes = {name: type(s).__name__ for name, s in runner.sampler.schedulers.items()}
    if times:
        store_times(rows, times, reference, batch, primary=True)
    decisions = frontier.decide(rows, config.confidence, timing_batch=batch)
    point = frontier.operating_point(rows, decisions["recommended"], classes, prep.guidance, config.steps,
                                     config.confidence,
                                     f"{out / 'report.json'} ({command or 'ee-diffusion bench --pipeline'})")
    specs = prep.features
    real = (prep.real_folder.summary() if prep.real_folder is not None else
            {"stats_files": dict(prep.real_stats_files), "count": prep.real_stats[specs[0].key].count})
    entry = {
        "setting": f"{type(pipe).__name__} / " + " + ".join(spec.name for spec in specs),
        "pipeline": str(config.pipeline), "pipeline_class": type(pipe).__name__,
        "num_blocks": len(getattr(denoiser_of(pipe), "transformer_blocks", [])) or None,
        "conditioning": prep.conditioning.describe(), "num_images": config.num_images,
        "reference_steps": config.steps, "reference": reference, "guidance_scale": prep.guidance,
        "image_shape": list(prep.shape), "solvers": {s: {"class": c} for s, c in classes.items()},
        "feature_net": specs[0].describe(), "feature_nets": [{**spec.describe(), "key": spec.key} for spec in specs],
        "real": real, "floor": None,
        "bootstrap": {"resamples": config.bootstrap, "confidence": config.confidence, "seed": 0,
                      "what": "percentile intervals over resamples of image indices shared by every method and "
                              "every feature network; the real statistics stay fixed"},
        "not_attached": runner.not_attached, "rows": rows, "decisions": decisions, "operating_point": point,
        "timing": {"batches": [batch] if times else [], "repeats": config.timing_repeats, "warmup": 1,
                   "what": "one pipeline call on `batch` images per method per round, interleaved in shuffled "
                           "order; exit hooks and caches are put on outside the timed call; speedup = median "
                           "over rounds of (reference time / method time)"},
        "warnings": [w for spec in specs for w in prep.warnings[spec.key]],
    }
    report = {
        "kind": "bench --pipeline", "config": asdict(config), "command": command,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                        "python": platform.python_version(), "cpu_count": os.cpu_count(), "device": str(config.device),
                        "dtype": config.dtype, "processes": runner.cache.world,
                        "load_average_before": load_before, "load_average_after": load_average()},
        "sampled_shards": runner.cache.sampled_shards, "elapsed_s": time.perf_counter() - started,
        "settings": [entry],
    }
    write_report(report, out)
    return report
