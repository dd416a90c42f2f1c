"""`ee-diffusion bench`: quality, speed and compute of every method on the same weights and noise, in one run.

For each setting (the shipped digits model; the harder 8x8 upper-case glyphs model) the benchmark samples the same
class-balanced, seeded images with every method and reports FID/KID (shipped feature network), class accuracy,
block evaluations, FLOPs (heads and decode included), wall-clock (batch sampling calls, warm-up, interleaved,
medians, ratios to the full model) and peak memory, next to the real-vs-real floor and the spread between noise
seeds of the full model. Methods: full model; fewer steps (a sweep, and matched to every method's compute);
static depth N/4, N/2, 3N/4; ASE schedules; DeeDiff thresholds (per sample, CFG pairs exit together);
calibrated schedules and thresholds (ours, calibrated on separate seeds); a DeeDiff policy distilled into a
static schedule; diffusers' FirstBlockCache.

Writes OUT/report.json, OUT/report.md and OUT/pareto.png through `ee_diffusion.benchmarks.report` (which also
re-renders a saved report). Presets: `ci` (digits, small counts; a committed run: docs/bench-ci-report.md) and
`full` (both settings; docs/bench-full-digits-report.md).
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..calibration import (
    CalibrationSet,
    calibrate_thresholds,
    distil_schedule,
    measure_depth_deviation,
    schedule_from_deviation,
    thresholds_for_fractions,
)
from ..config import EarlyExitConfig
from ..default_model import load_setting_pipeline
from ..eval.baselines import fbc_pipeline, first_block_cache
from ..eval.compute import count_flops, overhead_breakdown, peak_memory
from ..eval.features import load_feature_net
from ..eval.quality import QualityEvaluator, balanced_subset, real_images
from ..eval.sampling import generate
from ..eval.timing import interleaved_timings
from ..schedules import StaticDepth, TimestepSchedule, UncertaintyThreshold
from .report import _interp, _recommend, _targets, write_report

logger = logging.getLogger(__name__)

@dataclass
class Preset:
    """What a bench run measures and how much: settings, counts, sweeps and timing rounds (see `PRESETS`)."""

    settings: tuple[str, ...] = ("digits",)
    num_images: int = 200
    steps: int = 20
    # Per setting. Both small pixel-space models sample best without guidance: strong guidance over-saturates
    # them (measured in assets/digits-dit/TRAINING.md and in docs/evaluation.md's table of settings).
    guidance: tuple[tuple[str, float], ...] = (("digits", 1.0), ("glyphs", 1.0))
    extra_seeds: int = 1  # seeds of the full model beyond seed 0, for the spread
    fewer_steps: tuple[int, ...] = (6, 10, 14)
    thresholds: tuple[float, ...] = (0.7, 0.8, 0.9)
    # If set, the DeeDiff sweep's thresholds are instead chosen on the calibration set to hit these block
    # fractions (the heads' certainty scale differs between models).
    threshold_fractions: tuple[float, ...] | None = None
    budgets: tuple[float, ...] = (0.45, 0.6)
    threshold_budgets: tuple[float, ...] = (0.6,)
    fbc_thresholds: tuple[float, ...] = (0.1, 0.3)
    # Early exit composed with fewer steps: (steps, budget) -> a schedule calibrated at that step count.
    combined: tuple[tuple[int, float], ...] = ((12, 0.8), (14, 0.7))
    calib_images: int = 20
    calib_buckets: int = 4
    calib_depths: tuple[int, ...] | None = None  # depths measured per bucket (None: all); others interpolated
    timing_batch: int = 64
    timing_repeats: int = 2
    timing_warmup: int = 1
    extra_batch_sizes: tuple[int, ...] = ()  # images/s of full + recommended at these batch sizes
    flops_images: int = 2
    matched_fewer_steps: bool = True
    sample_batch: int = 100
    overhead_repeats: int = 4


PRESETS = {
    "ci": Preset(calib_depths=(2, 3, 4, 6), fewer_steps=(5, 8, 10, 12, 14, 16), matched_fewer_steps=False,
                 threshold_fractions=(0.45, 0.6, 0.8)),
    "full": Preset(
        settings=("digits", "glyphs"), num_images=1000, steps=25, extra_seeds=2, fewer_steps=(6, 9, 12, 16, 20),
        thresholds=(0.7, 0.8, 0.85, 0.9, 0.95), budgets=(0.4, 0.45, 0.5, 0.6, 0.75), threshold_budgets=(0.5, 0.6),
        fbc_thresholds=(0.05, 0.1, 0.2, 0.4), calib_images=60, calib_buckets=5, timing_repeats=5, timing_warmup=1,
        extra_batch_sizes=(1, 16), flops_images=4, threshold_fractions=(0.4, 0.5, 0.6, 0.7, 0.85), combined=((15, 0.8), (18, 0.7), (12, 0.9)),
    ),
}


@dataclass
class Method:
    """One row of the report: an exit config or a FirstBlockCache threshold, a step count and a noise seed."""

    name: str
    family: str
    exit_config: EarlyExitConfig | None = None
    steps: int | None = None  # None: the preset's steps
    fbc_threshold: float | None = None
    seed: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def describe(self, preset_steps: int) -> dict[str, Any]:
        config = self.exit_config or EarlyExitConfig()
        return {"name": self.name, "family": self.family, "exit_config": config.to_dict(),
                "num_inference_steps": self.steps or preset_steps, "fbc_threshold": self.fbc_threshold,
                "seed": self.seed, **({"notes": self.notes} if self.notes else {})}


def _ase_schedules(n: int) -> dict[str, TimestepSchedule]:
    """The released DiT-XL/2 ASE schedule scaled to n blocks, and a more aggressive one."""
    released = [max(1, min(n, round(d * n / 28))) for d in (28, 24, 20, 16, 12)]
    aggressive = [n, max(1, round(0.75 * n)), max(1, round(0.5 * n)), max(1, round(0.375 * n)), max(1, round(0.25 * n))]
    bounds = [200, 400, 600, 800]
    return {"ase_released": TimestepSchedule(bounds, released), "ase_aggressive": TimestepSchedule(bounds, aggressive)}


class _Progress:
    """Progress lines with the seconds since the run started, through `logging` (the CLI shows INFO)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            logger.info("[%7.1fs] %s", time.perf_counter() - self.start, message)


def run_setting(setting: str, preset: Preset, model_path: str | None = None, log: _Progress | None = None) -> dict:
    """Measure every method on one setting; returns the setting's entry of the report (rows, floor, seed spread,
    recommendation, targets, overheads)."""
    log = log or _Progress(False)
    pipe = load_setting_pipeline(setting, model_path)
    n = len(pipe.transformer.transformer_blocks)
    num_classes = pipe.num_classes
    S = preset.steps
    guidance = dict(preset.guidance).get(setting, 1.0)
    net = load_feature_net(setting)
    real, _ = real_images(setting, "reference")
    floor_images, floor_labels = real_images(setting, "floor")
    evaluator = QualityEvaluator(net, real)
    floor_x, floor_y = balanced_subset(floor_images, floor_labels, preset.num_images, num_classes)
    floor = evaluator.score(floor_x, floor_y)
    log(f"{setting}: {n} blocks, {num_classes} classes; floor FID {floor['fid']:.3f} at {preset.num_images} images")

    # ---------------------------------------------------------------------------------------- calibration
    calib = CalibrationSet(num_images=preset.calib_images, num_inference_steps=S, guidance_scale=guidance,
                           num_buckets=preset.calib_buckets, batch_size=preset.sample_batch)
    t0 = time.perf_counter()
    depths = [d for d in preset.calib_depths if d < n] if preset.calib_depths else None
    measurement = measure_depth_deviation(pipe, calib, feature_net=net, depths=depths)
    calibration_s = time.perf_counter() - t0
    log(f"calibration measurement: {calibration_s:.1f}s")

    methods: list[Method] = [Method("full", "full")]
    methods += [Method(f"full_seed{s}", "seed", seed=s) for s in range(1, preset.extra_seeds + 1)]
    methods += [Method(f"steps_{k}", "fewer_steps", steps=k) for k in preset.fewer_steps if k < S]
    for k in sorted({max(1, n // 4), max(1, n // 2), max(1, 3 * n // 4)}):
        methods.append(Method(f"static_{k}", "static_depth", EarlyExitConfig(policy=StaticDepth(k))))
    for name, schedule in _ase_schedules(n).items():
        methods.append(Method(name, "ase", EarlyExitConfig(policy=schedule)))
    sweep = list(preset.thresholds)
    if pipe.exit_heads is not None and preset.threshold_fractions:
        sweep = thresholds_for_fractions(pipe, list(preset.threshold_fractions), calib)
        log(f"DeeDiff thresholds for block fractions {preset.threshold_fractions}: {sweep}")
    if pipe.exit_heads is not None:
        for c in sweep:
            methods.append(Method(f"deediff_{c}", "deediff",
                                  EarlyExitConfig(policy=UncertaintyThreshold(c, patience=2), cfg_pairing="together")))
    for budget in preset.budgets:
        schedule, info = schedule_from_deviation(measurement, budget=budget)
        methods.append(Method(f"calibrated_schedule_{budget}", "calibrated_schedule", EarlyExitConfig(policy=schedule),
                              notes={"budget": budget, **info}))
    for k, budget in preset.combined:
        if k >= S:
            continue
        t0 = time.perf_counter()
        m_k = measure_depth_deviation(pipe, replace(calib, num_inference_steps=k), feature_net=net, depths=depths)
        calibration_s += time.perf_counter() - t0
        schedule, info = schedule_from_deviation(m_k, budget=budget)
        methods.append(Method(f"calibrated_schedule_{budget}_steps{k}", "calibrated_steps",
                              EarlyExitConfig(policy=schedule), steps=k, notes={"budget": budget, **info}))
    if pipe.exit_heads is not None:
        for budget in preset.threshold_budgets:
            t0 = time.perf_counter()
            result = calibrate_thresholds(pipe, budget, calib=calib, feature_net=net, measurement=measurement)
            calibration_s += time.perf_counter() - t0
            methods.append(Method(f"calibrated_thresholds_{budget}", "calibrated_thresholds", result.exit_config,
                                  notes={"budget": budget, "calibration_fraction": result.info["block_fraction"]}))
        # Distil the middle DeeDiff threshold's observed exits (on the calibration set) into a static schedule.
        c = sweep[len(sweep) // 2]
        observed = pipe(class_labels=[i % num_classes for i in range(calib.num_images)], num_inference_steps=S,
                        guidance_scale=guidance, generator=torch.Generator().manual_seed(calib.seed),
                        exit_config=EarlyExitConfig(policy=UncertaintyThreshold(c, patience=2)), output_type="latent")
        distilled = distil_schedule(observed.exit_stats)
        methods.append(Method(f"distilled_deediff_{c}", "distilled", EarlyExitConfig(policy=distilled),
                              notes={"observed_fraction": observed.exit_stats.depth_fraction}))
    log(f"calibration total: {calibration_s:.1f}s; {len(methods)} methods")

    fbc = fbc_pipeline(pipe)
    for threshold in preset.fbc_thresholds:
        methods.append(Method(f"fbc_{threshold}", "first_block_cache", fbc_threshold=threshold))

    def sample(method: Method, indices) -> Any:
        target = fbc if method.fbc_threshold is not None else pipe
        wrapper = (lambda: first_block_cache(fbc.transformer, method.fbc_threshold)) if method.fbc_threshold is not None else None
        return generate(target, indices, exit_config=method.exit_config, num_inference_steps=method.steps or S,
                        guidance_scale=guidance, seed=method.seed, batch_size=preset.sample_batch,
                        call_wrapper=wrapper)

    # ------------------------------------------------------------------------------------------- quality
    rows: dict[str, dict[str, Any]] = {}
    full_evals = None
    for method in methods:
        t0 = time.perf_counter()
        run = sample(method, range(preset.num_images))
        quality = evaluator.score(run.images, run.labels)
        if full_evals is None:
            full_evals = run.block_evals
        rows[method.name] = {**method.describe(S), **quality, "block_fraction": run.block_evals / full_evals,
                             "block_evals_per_image": run.block_evals / preset.num_images, "sample_s": time.perf_counter() - t0}
        log(f"{method.name:32s} FID {quality['fid']:8.3f} acc {quality.get('accuracy', float('nan')):.3f} "
            f"blocks {rows[method.name]['block_fraction']:.3f}")

    # Fewer steps matched to each method's compute.
    if preset.matched_fewer_steps:
        have = {m.steps or S: m.name for m in methods if m.family in ("full", "fewer_steps")}
        for method in list(methods):
            if method.family in ("full", "seed", "fewer_steps"):
                continue
            k = max(1, round(rows[method.name]["block_fraction"] * S))
            if k not in have:
                extra = Method(f"steps_{k}", "fewer_steps", steps=k)
                run = sample(extra, range(preset.num_images))
                rows[extra.name] = {**extra.describe(S), **evaluator.score(run.images, run.labels),
                                    "block_fraction": run.block_evals / full_evals,
                                    "block_evals_per_image": run.block_evals / preset.num_images}
                methods.append(extra)
                have[k] = extra.name
                log(f"{extra.name:32s} FID {rows[extra.name]['fid']:8.3f} (matched)")
            rows[method.name]["matched_fewer_steps"] = have[k]

    steps_curve = [(r["block_fraction"], r["fid"]) for r in rows.values() if r["family"] in ("full", "fewer_steps")]
    for row in rows.values():
        row["fewer_steps_fid_at_same_blocks"] = _interp(steps_curve, row["block_fraction"])

    # ------------------------------------------------------------------------------------------- FLOPs
    for method in methods:
        flops = count_flops(lambda: sample(method, range(preset.flops_images)))
        rows[method.name]["gflops_per_image"] = flops["total"] / preset.flops_images / 1e9
        rows[method.name]["heads_gflops_per_image"] = flops["heads"] / preset.flops_images / 1e9

    # ------------------------------------------------------------------------------------------ wall-clock
    timed = [m for m in methods if m.family != "seed"]
    batch = list(range(preset.timing_batch))
    fns = {m.name: (lambda m=m: sample(m, batch)) for m in timed}
    times = interleaved_timings(fns, repeats=preset.timing_repeats, warmup=preset.timing_warmup)
    for name, values in times.items():
        ratios = [r / v for v, r in zip(values, times["full"])]  # speedup per round
        rows[name]["time_s"] = float(np.median(values))
        rows[name]["speedup"] = float(np.median(ratios))
        rows[name]["time_ratio"] = 1.0 / rows[name]["speedup"]
        rows[name]["images_per_s"] = preset.timing_batch / rows[name]["time_s"]
    log("timing done")

    # -------------------------------------------------------------------------------- summary, recommendation
    full = rows["full"]
    seed_fids = [full["fid"]] + [rows[m.name]["fid"] for m in methods if m.family == "seed"]
    spread = max(seed_fids) - min(seed_fids)
    recommended = _recommend(rows, S, spread)
    extra_batches = {}
    if preset.extra_batch_sizes and recommended is not None:
        rec = next(m for m in methods if m.name == recommended["name"])
        for b in preset.extra_batch_sizes:
            fns_b = {"full": lambda: sample(methods[0], range(b)), rec.name: lambda: sample(rec, range(b))}
            tb = interleaved_timings(fns_b, repeats=preset.timing_repeats, warmup=1)
            extra_batches[str(b)] = {k: {"median_s": float(np.median(v)), "images_per_s": b / float(np.median(v))}
                                     for k, v in tb.items()}
    memory = {"full": peak_memory(lambda: sample(methods[0], batch))}
    if recommended is not None:
        rec = next(m for m in methods if m.name == recommended["name"])
        memory[rec.name] = peak_memory(lambda: sample(rec, batch))
    overhead = overhead_breakdown(pipe, preset.timing_batch, repeats=preset.overhead_repeats, warmup=min(1, preset.overhead_repeats),
                                  guided=guidance > 1)
    targets = _targets(setting, rows, spread)
    return {
        "setting": setting, "num_blocks": n, "num_classes": num_classes, "num_images": preset.num_images,
        "steps": S, "guidance_scale": guidance, "cfg_pairing": ("together: a conditional row and its unconditional partner exit at the same block"
                        if guidance > 1 else "none: guidance 1 runs no unconditional rows"),
        "feature_net": {"name": setting, **{k: v for k, v in getattr(net, "meta", {}).items() if k != "class_names"}},
        "floor_fid": floor["fid"], "floor_kid": floor.get("kid_mean"), "floor_accuracy": floor.get("accuracy"),
        "full_fid_seeds": seed_fids, "seed_spread": spread, "calibration_s": calibration_s,
        "calibration_measurement": measurement, "methods": rows, "recommended": recommended["name"] if recommended else None,
        "batch_sizes": extra_batches, "peak_memory": memory, "overhead": overhead, "targets": targets,
        "timing": {"batch": preset.timing_batch, "repeats": preset.timing_repeats, "warmup": preset.timing_warmup,
                   "what": "one pipeline call (all steps) per method per round, methods interleaved; speedup = median "
                           "of per-round full/method ratios"},
    }


def run(preset: str | Preset = "ci", out: str | Path = "bench_out", settings: tuple[str, ...] | None = None,
        model_paths: dict[str, str] | None = None, progress: bool = True, command: str = "") -> dict:
    """Run the benchmark of `preset` (a name in `PRESETS` or a `Preset`) on its settings (or `settings`) and
    write OUT/report.json, report.md and pareto.png. `model_paths` maps a setting to a pipeline folder that
    replaces its shipped model; `command` is recorded in the report. Returns the report."""
    preset_name = preset if isinstance(preset, str) else "custom"
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        preset = PRESETS[preset]
    if settings:
        preset = replace(preset, settings=tuple(settings))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = _Progress(progress)
    start = time.perf_counter()
    results = []
    with torch.no_grad():
        for setting in preset.settings:
            results.append(run_setting(setting, preset, (model_paths or {}).get(setting), log))
    report = {
        "preset": preset_name, "preset_values": asdict(preset), "command": command,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                        "python": platform.python_version()},
        "elapsed_s": time.perf_counter() - start, "settings": results,
    }
    write_report(report, out)
    log(f"wrote {out / 'report.json'}, report.md, pareto.png")
    return report
