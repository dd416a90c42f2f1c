"""`ee-diffusion bench`: quality, speed and compute of every method on the same weights and noise, in one run.

For each setting (the shipped digits model; the harder 8x8 upper-case glyphs model) the benchmark samples the same
class-balanced, seeded images with every method and reports FID/KID (shipped feature network), class accuracy,
block evaluations, FLOPs (heads and decode included), wall-clock (batch sampling calls, warm-up, interleaved,
medians, ratios to the full model) and peak memory, next to the real-vs-real floor and the spread between noise
seeds of the full model. Methods: full model; fewer steps (a sweep, and matched to every method's compute);
static depth N/4, N/2, 3N/4; ASE schedules; DeeDiff thresholds (per sample, CFG pairs exit together);
calibrated schedules and thresholds (ours, calibrated on separate seeds); a DeeDiff policy distilled into a
static schedule; diffusers' FirstBlockCache.

Writes OUT/report.json, OUT/report.md and OUT/pareto.png. Presets: `ci` (digits, small counts, < 5 minutes on 2
cores) and `full`.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import EarlyExitConfig
from ..schedules import StaticDepth, TimestepSchedule, UncertaintyThreshold
from ..schedules.calibrate import (
    CalibrationSet,
    calibrate_thresholds,
    distil_schedule,
    measure_depth_deviation,
    thresholds_for_fractions,
    schedule_from_deviation,
)
from .baselines import fbc_pipeline, first_block_cache
from .compute import count_flops, overhead_breakdown, peak_memory
from .features import load_feature_net
from .quality import QualityEvaluator, balanced_subset, real_images
from .sampling import generate
from .timing import interleaved_timings

GLYPHS_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "glyphs-dit"


@dataclass
class Preset:
    settings: tuple[str, ...] = ("digits",)
    num_images: int = 200
    steps: int = 20
    # Per setting. Both small pixel-space models sample best without guidance (digits, its TRAINING.md: accuracy
    # 0.965 at guidance 1, 0.505 at 4; glyphs: FID 17 at guidance 1, 121 at 2, 208 images).
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


def load_setting_pipeline(setting: str, model_path: str | None = None) -> Any:
    from ..pipelines import EarlyExitDiTPipeline

    if model_path is not None:
        pipe = EarlyExitDiTPipeline.from_pretrained(model_path)
    elif setting == "digits":
        from ..default_model import load_default_pipeline

        pipe = load_default_pipeline()
    elif setting == "glyphs":
        if not (GLYPHS_MODEL_DIR / "model_index.json").is_file():
            raise FileNotFoundError(f"no glyphs model at {GLYPHS_MODEL_DIR}; train it with the configs in "
                                    f"scripts/glyphs/ (see docs/evaluation.md) or pass --glyphs-model PATH")
        pipe = EarlyExitDiTPipeline.from_pretrained(str(GLYPHS_MODEL_DIR))
    else:
        raise ValueError(f"unknown setting {setting!r}; known: digits, glyphs")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ase_schedules(n: int) -> dict[str, TimestepSchedule]:
    """The released DiT-XL/2 ASE schedule scaled to n blocks, and a more aggressive one."""
    released = [max(1, min(n, round(d * n / 28))) for d in (28, 24, 20, 16, 12)]
    aggressive = [n, max(1, round(0.75 * n)), max(1, round(0.5 * n)), max(1, round(0.375 * n)), max(1, round(0.25 * n))]
    bounds = [200, 400, 600, 800]
    return {"ase_released": TimestepSchedule(bounds, released), "ase_aggressive": TimestepSchedule(bounds, aggressive)}


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", flush=True)


def run_setting(setting: str, preset: Preset, model_path: str | None = None, log: _Progress | None = None) -> dict:
    log = log or _Progress(False)
    pipe = load_setting_pipeline(setting, model_path)
    n = len(pipe.transformer.transformer_blocks)
    num_classes = int(pipe.transformer.config.num_embeds_ada_norm)
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
    targets = _targets(setting, rows, spread, recommended)
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


def _recommend(rows: dict, steps: int, spread: float) -> dict | None:
    """The fastest early-exit method within the full model's seed spread, at the reference number of steps.

    The recommendation becomes a pipeline's default exit config, which cannot carry a step count, so early exit
    composed with fewer steps is reported apart (see the targets)."""
    full = rows["full"]
    for row in rows.values():
        row["within_seed_spread"] = row["fid"] <= full["fid"] + spread
    candidates = [r for r in rows.values() if r["family"] in ("calibrated_schedule", "calibrated_thresholds", "distilled",
                                                              "deediff", "ase", "static_depth")
                  and r["within_seed_spread"] and r["num_inference_steps"] == steps]
    return max(candidates, key=lambda r: r["speedup"]) if candidates else None


def rerender(out: str | Path) -> dict:
    """Recompute the recommendation and targets of OUT/report.json from its measurements; rewrite the files."""
    out = Path(out)
    report = json.loads((out / "report.json").read_text())
    for entry in report["settings"]:
        rec = _recommend(entry["methods"], entry["steps"], entry["seed_spread"])
        entry["recommended"] = rec["name"] if rec else None
        entry["targets"] = _targets(entry["setting"], entry["methods"], entry["seed_spread"], rec)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "pareto.png")
    return report


def _interp(curve: list[tuple[float, float]], x: float) -> float:
    curve = sorted(curve)
    xs = [p[0] for p in curve]
    ys = [p[1] for p in curve]
    return float(np.interp(x, xs, ys))


def _targets(setting: str, rows: dict, spread: float, recommended: dict | None) -> dict:
    full = rows["full"]
    out: dict[str, Any] = {}
    if setting == "digits":
        def fastest_within(families_out: tuple[str, ...], families_in: tuple[str, ...] | None = None):
            pool = [r for r in rows.values() if r["within_seed_spread"] and r["family"] not in families_out
                    and (families_in is None or r["family"] in families_in)]
            return max(pool, key=lambda r: r["speedup"]) if pool else None

        best = fastest_within(("full", "seed", "fewer_steps", "first_block_cache"))
        steps = fastest_within((), ("fewer_steps",))
        out["speedup_2x_within_spread"] = {
            "goal": "an early-exit method with speedup >= 2.0 at FID <= full FID + seed spread (batch timing here)",
            "best_within_spread": best["name"] if best else None,
            "speedup": best["speedup"] if best else None,
            "fid": best["fid"] if best else None,
            "fid_limit": full["fid"] + spread,
            "fewer_steps_best_within_spread": {"name": steps["name"], "speedup": steps["speedup"]} if steps else None,
            "met": bool(best and best["speedup"] >= 2.0),
        }
        fastest = [r for r in rows.values() if r["family"] not in ("full", "seed", "fewer_steps") and r["speedup"] >= 2.0]
        if fastest:
            at2x = min(fastest, key=lambda r: r["fid"])
            out["speedup_2x_within_spread"]["best_at_2x"] = {"name": at2x["name"], "fid": at2x["fid"],
                                                            "fid_gap_over_spread": at2x["fid"] - full["fid"] - spread}
    # Early exit against fewer steps and static depth at equal block evaluations.
    steps_curve = [(r["block_fraction"], r["fid"]) for r in rows.values() if r["family"] in ("full", "fewer_steps")]
    static_curve = [(r["block_fraction"], r["fid"]) for r in rows.values() if r["family"] == "static_depth"] + [(1.0, full["fid"])]
    wins = []
    for r in rows.values():
        if r["family"] in ("full", "seed", "fewer_steps", "static_depth", "first_block_cache"):
            continue
        x = r["block_fraction"]
        steps_fid, static_fid = _interp(steps_curve, x), _interp(static_curve, x)
        if r["fid"] < steps_fid and r["fid"] < static_fid:
            wins.append({"name": r["name"], "block_fraction": x, "fid": r["fid"], "fewer_steps_fid": steps_fid,
                         "static_depth_fid": static_fid})
    half = [r for r in rows.values() if r["family"] == "static_depth" and abs(r["block_fraction"] - 0.5) < 1e-6]
    if half:
        gap = half[0]["fid"] - full["fid"]
        out["full_depth_clearly_better_than_half"] = {
            "goal": "static depth N/2 worse than the full model by more than the seed spread",
            "full_fid": full["fid"], "half_depth_fid": half[0]["fid"], "gap": gap, "seed_spread": spread,
            "met": bool(gap > spread),
        }
    out["beats_fewer_steps_and_static"] = {
        "goal": "an early-exit method below both the fewer-steps and the static-depth curves at equal block evaluations",
        "met": bool(wins), "wins": wins,
    }
    return out


# -------------------------------------------------------------------------------------------------- reports
def markdown(report: dict) -> str:
    lines = [f"# ee-diffusion bench (preset {report['preset']})", "",
             f"Command: `{report['command']}`", "",
             f"torch {report['environment']['torch']}, {report['environment']['threads']} threads, "
             f"{report['environment']['machine']}; total {report['elapsed_s']:.0f} s.", ""]
    for s in report["settings"]:
        lines += [f"## {s['setting']} ({s['num_blocks']} blocks, {s['num_classes']} classes, {s['num_images']} images, "
                  f"{s['steps']} DDIM steps, guidance {s['guidance_scale']})", "",
                  f"Floor (real vs real, {s['num_images']} images): FID {s['floor_fid']:.3f}. Full model over seeds: "
                  f"{', '.join(f'{v:.3f}' for v in s['full_fid_seeds'])} (spread {s['seed_spread']:.3f}). "
                  f"CFG pairing: {s['cfg_pairing']}.", "",
                  "| method | family | FID | KID | acc | blocks | GFLOP/img | speedup @%d | matched steps FID |" % s["timing"]["batch"],
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in s["methods"].values():
            matched = r.get("matched_fewer_steps")
            if matched:
                mfid = f"{s['methods'][matched]['fid']:.3f} ({matched})"
            elif r["family"] in ("full", "seed", "fewer_steps"):
                mfid = ""
            else:
                mfid = f"{r['fewer_steps_fid_at_same_blocks']:.3f} (interp.)"
            lines.append(
                f"| {r['name']} | {r['family']} | {r['fid']:.3f} | {r.get('kid_mean', float('nan')):.1f} | "
                f"{r.get('accuracy', float('nan')):.3f} | {r['block_fraction']:.3f} | {r.get('gflops_per_image', float('nan')):.3f} | "
                f"{r.get('speedup', float('nan')):.2f}x | {mfid} |")
        o = s["overhead"]
        lines += ["", f"Recommended (fastest early exit within the seed spread): **{s['recommended']}**.", "",
                  f"Overheads at {o['rows_per_call']} rows per model call: hooks {o['hook_overhead_fraction']:+.1%}, "
                  f"heads {o.get('heads_overhead_fraction', float('nan')):+.1%}, gather/scatter "
                  f"{o['gather_scatter_overhead_fraction']:+.1%} of a full call.", ""]
        mem = ", ".join(f"{k} {v['peak_above_start_mib']:.0f} MiB" for k, v in s["peak_memory"].items())
        lines += [f"Peak memory above start ({next(iter(s['peak_memory'].values()))['kind']}): {mem}.", ""]
        for b, res in s["batch_sizes"].items():
            lines.append(f"Batch {b}: " + ", ".join(f"{k} {v['images_per_s']:.1f} img/s" for k, v in res.items()) + ".")
        lines.append("")
        for key, t in s["targets"].items():
            lines.append(f"- Target `{key}`: {'MET' if t['met'] else 'NOT MET'} - {t['goal']}. "
                         + json.dumps({k: v for k, v in t.items() if k not in ('goal', 'met')}, default=str)[:600])
        lines.append("")
    return "\n".join(lines) + "\n"


FAMILY_STYLE = {
    "full": ("black", "*"), "fewer_steps": ("tab:gray", "o"), "static_depth": ("tab:blue", "s"),
    "ase": ("tab:cyan", "^"), "deediff": ("tab:orange", "v"), "calibrated_schedule": ("tab:red", "D"),
    "calibrated_thresholds": ("tab:purple", "P"), "distilled": ("tab:brown", "X"), "first_block_cache": ("tab:green", "h"),
    "calibrated_steps": ("magenta", "d"),
}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = report["settings"]
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 4.5 * len(settings)), squeeze=False)
    for row, s in zip(axes, settings):
        for ax, key, label in ((row[0], "block_fraction", "block evaluations (fraction of full)"),
                               (row[1], "time_ratio", f"wall-clock at batch {s['timing']['batch']} (fraction of full)")):
            ax.axhspan(0, s["floor_fid"], color="tab:green", alpha=0.12, label="real-vs-real floor")
            full = s["methods"]["full"]["fid"]
            ax.axhspan(full, full + s["seed_spread"], color="black", alpha=0.08, label="full model seed spread")
            for family, (color, marker) in FAMILY_STYLE.items():
                pts = sorted((r[key], r["fid"]) for r in s["methods"].values() if r["family"] == family and key in r)
                if family == "fewer_steps":
                    pts = sorted(pts + [(s["methods"]["full"][key], full)])
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=family)
            ax.set_xlabel(label)
            ax.set_ylabel("FID (shipped %s feature net)" % s["setting"])
            ax.set_yscale("log")
            ax.set_title(s["setting"])
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(preset: str | Preset = "ci", out: str | Path = "bench_out", settings: tuple[str, ...] | None = None,
        model_paths: dict[str, str] | None = None, progress: bool = True, command: str = "") -> dict:
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
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "pareto.png")
    log(f"wrote {out / 'report.json'}, report.md, pareto.png")
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def set_recommended_exit_config(report_path: str | Path, model_dir: str | Path, setting: str = "digits") -> dict:
    """Write the report's recommended exit config for `setting` into `model_dir/model_index.json` as the
    pipeline's default exit config (what calls without `exit_config` use). Returns the config dict."""
    report = json.loads(Path(report_path).read_text())
    entry = next(s for s in report["settings"] if s["setting"] == setting)
    if entry["recommended"] is None:
        raise ValueError(f"the report recommends no early-exit method for {setting!r}")
    method = entry["methods"][entry["recommended"]]
    config = EarlyExitConfig.from_dict(method["exit_config"]).to_dict()  # validates
    index_path = Path(model_dir) / "model_index.json"
    index = json.loads(index_path.read_text())
    index["exit_config"] = config
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return {"method": entry["recommended"], "exit_config": config,
            "num_inference_steps": method["num_inference_steps"], "guidance_scale": entry["guidance_scale"]}
