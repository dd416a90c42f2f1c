"""`python -m bench bench`: every method against the fewer-steps frontier, paired, on the same weights and noise.

For each setting (`models.SETTINGS`: the shipped digits model, the 8x8 upper-case glyphs model, the 28-block
digits DiTs) every method samples the same images (image i from noise seeded by (seed, i)) and is scored by FID on
the shipped feature network, with paired bootstrap intervals against the reference (the stock model at 25 DDIM
steps) and against the knee:
- the frontier: fewer steps at full depth with DDIM and DPM-Solver++ (multistep), a sweep plus the step counts
  matched to every other method's cost (no interpolation);
- early exit composed with steps: on a grid of (solver, steps), every exit family - static depth, ASE schedules,
  DeeDiff thresholds, calibrated schedules and thresholds (calibrated at that grid point on separate seeds), a
  distilled schedule and the training-free `CachedTailResidual`;
- diffusers' own caches on the same transformer (FirstBlockCache, TaylorSeerCache, MagCache with its
  calibration run, SeaCache), sampled at the batch they are timed at (they decide per batch);
- per-image fidelity to the reference's image from the same noise (PSNR, SSIM, feature distance), class accuracy,
  block evaluations, FLOPs, peak memory, and wall-clock at batch 64 (every method), 8 and 1 (the key ones):
  warm-up, interleaved rounds in shuffled order, hooks put on and taken off outside the timed region, medians of
  per-round ratios to the stock model without hooks.

`frontier.py` decides (knees, frontier wins, the recommendation and its operating point) from the rows alone and
`report.py` writes OUT/report.json, report.md and pareto.png. Presets: `ci` (digits, a few hundred images, under 5
minutes on 2 cores; its intervals are wide and say so) and `full` (both settings, >= 2000 digits images).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ee_diffusion.eval import frontier
from ee_diffusion.eval.bench_prepare import our_feature_net, pipeline_key
from ee_diffusion.eval.features import feature_nets_of
from ee_diffusion.eval.method import Method
from ee_diffusion.eval.paired import FrechetReference
from ee_diffusion.eval.quality import real_images
from ee_diffusion.eval.report import describe_point, rows_table, write_report
from ee_diffusion.eval.runner import MethodSampler, Runner, as_uint8
from ee_diffusion.eval.sample_cache import ShardCache
from ee_diffusion.eval.solvers import SOLVERS, make_schedulers
from ee_diffusion.eval.timing import load_average, store_times
from ee_diffusion.pipelines.conditioning import Conditioning

from .compute import count_flops, overhead_breakdown, peak_memory
from .grid import GridPoint, cache_methods, exit_methods
from .models import SETTINGS, load_setting_pipeline, setting_dataset

logger = logging.getLogger(__name__)


@dataclass
class Preset:
    """What a bench run measures and how much (see `PRESETS`)."""

    settings: tuple[str, ...] = ("digits",)
    num_images: int = 300
    reference_steps: int = 25
    # Per setting. Both small pixel-space models sample best without guidance (their TRAINING.md).
    guidance: tuple[tuple[str, float], ...] = (("digits", 1.0), ("glyphs", 1.0))
    extra_seeds: int = 0  # reference runs at other noise seeds: the unpaired spread, reported beside the CI
    guidance_checks: tuple[float, ...] = ()  # the reference at these guidance scales (why the default is what it is)
    frontier: tuple[tuple[str, tuple[int, ...]], ...] = (("ddim", (8, 12, 16, 20)), ("dpmpp", (4, 6, 8, 10, 12)))
    grid: tuple[GridPoint, ...] = (("ddim", 25), ("dpmpp", 8))  # every exit family at each (solver, steps)
    # At the conventional point (DDIM, reference_steps) only these families (None: all); the others are measured
    # where exits compete with fewer steps, on the DPM-Solver++ points.
    conventional_families: tuple[str, ...] | None = None
    cache_grid: tuple[GridPoint, ...] = (("ddim", 25),)
    static_fractions: tuple[float, ...] = (0.5, 0.75, 0.875)
    ase: tuple[str, ...] = ("released",)
    threshold_fractions: tuple[float, ...] = (0.6, 0.8)
    budgets: tuple[float, ...] = (0.6,)
    threshold_budgets: tuple[float, ...] = ()
    distil: bool = False
    tail_thresholds: tuple[float, ...] = (0.1,)
    # CachedTailResidual's forecast orders at each threshold: 0 reuses the row's last tail residual, 1 and 2
    # extrapolate it in the timestep.
    tail_forecast_orders: tuple[int, ...] = (0,)
    fbc_thresholds: tuple[float, ...] = (0.1,)
    taylorseer_intervals: tuple[int, ...] = (2,)
    taylorseer_orders: tuple[int, ...] = (1,)  # TaylorSeerCache's max_order
    # (warm-up steps, compute the last step too) per TaylorSeer row; () keeps max(1, steps // 8) warm-up steps.
    taylorseer_windows: tuple[tuple[int, bool], ...] = ()
    mag_thresholds: tuple[float, ...] = ()
    sea_thresholds: tuple[float, ...] = (0.1,)
    calib_images: int = 20
    calib_buckets: int = 4
    # Depths the calibration measures, as fractions of the model's blocks (8 blocks: 2, 4, 6, 7); None: all.
    calib_fractions: tuple[float, ...] | None = (0.25, 0.5, 0.75, 0.875)
    timing_batches: tuple[int, ...] = (64, 8, 1)
    timing_repeats: int = 2
    timing_warmup: int = 1
    flops_images: int = 2
    sample_batch: int = 500
    bootstrap: int = 200
    confidence: float = 0.9
    overhead_repeats: int = 2


# The ci preset fits in about 5 minutes on 2 cores: a few hundred images (its intervals are wide, and the report
# prints them), one composed grid point, the two cheapest diffusers caches. The full preset takes >= 2000 images
# per setting; at the conventional DDIM-25 point it measures the training-free and uncalibrated families, at the
# DPM-Solver++ points every family. Static depths and budgets reach down to about a third of the blocks (deep
# models have that much redundancy: docs/bench-full-digits-deep). Its tail caches reuse (order 0) and forecast (order 1) the skipped residual;
# order 2 did no better than order 1 on the pre-trained digits DiT (tests/test_forecast.py), so it is left out.
PRESETS = {
    "ci": Preset(grid=(("dpmpp", 8),), static_fractions=(0.75, 0.875), threshold_fractions=(0.8,),
                 sea_thresholds=(), calib_fractions=(0.5, 0.75, 0.875)),
    "full": Preset(
        settings=("digits", "glyphs"), num_images=2000, extra_seeds=1, guidance_checks=(2.0,),
        frontier=(("ddim", (10, 14, 18, 22)), ("dpmpp", (4, 5, 6, 7, 8, 9, 10, 12, 16))),
        grid=(("ddim", 25), ("dpmpp", 10), ("dpmpp", 8)), cache_grid=(("ddim", 25),),
        conventional_families=("static_depth", "ase", "deediff", "tail_cache"),
        static_fractions=(0.375, 0.5, 0.75, 0.875), ase=("released", "aggressive"), threshold_fractions=(0.6, 0.8),
        budgets=(0.35, 0.5, 0.75), threshold_budgets=(0.6,),
        distil=True, tail_thresholds=(0.1, 0.2), tail_forecast_orders=(0, 1), fbc_thresholds=(0.1,),
        taylorseer_intervals=(2,), mag_thresholds=(0.02,), sea_thresholds=(0.1,), calib_images=40, timing_repeats=5,
        flops_images=1, calib_fractions=(0.25, 0.5, 0.625, 0.75, 0.875), overhead_repeats=4, sample_batch=1000,
    ),
}


class _Progress:
    """Progress lines with the seconds since the run started, through `logging` (the CLI shows INFO)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            logger.info("[%7.1fs] %s", time.perf_counter() - self.start, message)


def run_setting(setting: str, preset: Preset, out: Path, model_path: str | None = None,
                log: _Progress | None = None) -> dict:
    """Measure every method on one setting through the one engine (`runner.Runner`: images cached in shards
    under OUT/samples, so a rerun resumes); returns the setting's entry of the report."""
    log = log or _Progress(False)
    started = time.perf_counter()
    pipe = load_setting_pipeline(setting, model_path)
    n = len(pipe.transformer.transformer_blocks)
    S, N = preset.reference_steps, preset.num_images
    guidance = dict(preset.guidance).get(setting, 1.0)
    data = setting_dataset(setting)  # the deep digits model is scored on the digits data and features
    specs = [our_feature_net(name) for name in feature_nets_of(data)]  # two independent nets, the primary first
    real, _ = real_images(data, "reference")
    floor_images, _ = real_images(data, "floor")
    with torch.no_grad():
        # The real images are scored as the generated ones are: as a saved PNG holds them (uint8).
        reals = {spec.key: FrechetReference(spec.encode(as_uint8(real))) for spec in specs}
        floor = {spec.key: reals[spec.key].fid(spec.encode(as_uint8(floor_images))) for spec in specs}
    conditioning = Conditioning("classes", class_ids=list(range(pipe.num_classes)))
    sampler = MethodSampler(pipe, conditioning, guidance, make_schedulers(pipe.scheduler), preset.sample_batch,
                            preset.timing_batches[0])
    folder = model_path or SETTINGS[setting].folder
    what = {"pipeline": pipeline_key(folder, "float32", "cpu"), "guidance": guidance,
            "conditioning": conditioning.to_dict()}
    runner = Runner(sampler, ShardCache(out / "samples" / setting, preset.sample_batch), specs, reals, N, what,
                    preset.bootstrap, preset.confidence)
    primary = specs[0].key
    log(f"{setting}: {n} blocks, {pipe.num_classes} classes, {N} images; floor FID "
        + ", ".join(f"{k} {v:.3f}" for k, v in floor.items())
        + f" ({floor_images.shape[0]} vs {real.shape[0]} real images)")
    rows, methods = runner.rows, runner.methods

    def measure(method: Method) -> dict:
        row = runner.measure(method)
        log(f"{method.name:34s} FID {row['fid']:8.3f}  blocks {row['block_fraction']:.3f}  "
            f"PSNR {row['fidelity']['psnr_db']:5.1f}  ({row['sample_s']:.1f}s)")
        return row

    # 1. The reference (first: block fractions are relative to it), other seeds, the frontier sweep.
    measure(Method(f"ddim{S}", "reference", "ddim", S))
    for seed in range(1, preset.extra_seeds + 1):
        measure(Method(f"ddim{S}_seed{seed}", "seed", "ddim", S, seed=seed))
    for scale in preset.guidance_checks:
        measure(Method(f"ddim{S}_guidance{scale:g}", "guidance", "ddim", S, guidance_scale=scale))
    for solver, steps_list in preset.frontier:
        for k in steps_list:
            if k <= S and f"{solver}{k}" not in rows:
                measure(Method(f"{solver}{k}", "fewer_steps", solver, k))

    # 2. Early exit composed with steps, calibrated per grid point on separate seeds; diffusers' caches.
    t0 = time.perf_counter()
    calibration: dict[str, Any] = {}
    for point in preset.grid:
        sampler.use_solver(point[0])
        grid_methods, info = exit_methods(pipe, point, preset, specs[0].net, guidance, sampler)
        calibration[f"{point[0]}{point[1]}"] = info
        for method in grid_methods:
            measure(method)
    not_attached: dict[str, str] = {}
    mag_ratios: dict[str, list[float]] = {}
    for point in preset.cache_grid:
        sampler.use_solver(point[0])
        grid_methods, ratios, refused = cache_methods(pipe, point, preset, guidance, sampler)
        not_attached.update(refused)
        if ratios is not None:
            mag_ratios[f"{point[0]}{point[1]}"] = ratios
        for method in grid_methods:
            measure(method)
    log(f"exit and cache methods done ({time.perf_counter() - t0:.0f}s with their calibration)")

    # 3. The frontier at every other method's block cost: the step counts just below and above it, per solver.
    #    Only for rows that still beat every cheaper measured frontier point: a row that does not cannot start
    #    to beat the frontier when more of it is measured.
    reference = next(iter(rows))

    def still_beats(row: dict) -> bool:
        cheaper = [r for r in rows.values() if r["family"] in frontier.FRONTIER_FAMILIES
                   and r["block_fraction"] <= row["block_fraction"] + 1e-9]
        if not cheaper:
            return True
        best = min(cheaper, key=lambda r: r["fid"])
        return runner.difference(row["name"], reference)["high"] < runner.difference(best["name"], reference)["low"]

    for method in runner.matched_frontier(SOLVERS, S, still_beats):
        measure(method)

    # 4. FLOPs (a couple of images, heads and decode included) and batch-64 wall-clock of every method.
    for name, method in methods.items():
        flops = count_flops(lambda m=method: sampler(m, range(preset.flops_images), batch_size=preset.flops_images))
        rows[name]["gflops_per_image"] = flops["total"] / preset.flops_images / 1e9
        rows[name]["heads_gflops_per_image"] = flops["heads"] / preset.flops_images / 1e9
    timed = [m for m in methods.values() if m.family not in ("seed", "guidance")]
    reference_name = timed[0].name
    big = preset.timing_batches[0]
    times = sampler.timed(timed, big, preset.timing_repeats, preset.timing_warmup)
    store_times(rows, times, reference_name, big, primary=True)
    log(f"timing at batch {big} done ({len(timed)} methods x {preset.timing_repeats} rounds)")

    # 5. Decisions; wall-clock of the key rows at the other batch sizes.
    decisions = frontier.decide(rows, preset.confidence)
    key = [reference_name, decisions["knee"], decisions["recommended"]]
    key += [r["name"] for r in _fastest_holding(rows)]
    key = list(dict.fromkeys(key))
    for batch in preset.timing_batches[1:]:
        times = sampler.timed([methods[k] for k in key], batch, preset.timing_repeats, preset.timing_warmup)
        store_times(rows, times, reference_name, batch, primary=False)
    log(f"decisions: {decisions['verdict']}")

    recommended = methods[decisions["recommended"]]
    memory = {reference_name: peak_memory(lambda: sampler(methods[reference_name], range(big), batch_size=big))}
    memory[recommended.name] = peak_memory(lambda: sampler(recommended, range(big), batch_size=big))
    sampler.use_solver("ddim")
    overhead = overhead_breakdown(pipe, big, repeats=preset.overhead_repeats, warmup=1, guided=guidance > 1)
    classes = {s: type(x).__name__ for s, x in sampler.schedulers.items()}
    point = frontier.operating_point(rows, decisions["recommended"], classes, guidance, S, preset.confidence, "")
    return {
        "setting": setting, "num_blocks": n, "num_classes": pipe.num_classes, "num_images": N, "reference_steps": S,
        "reference": reference_name, "guidance_scale": guidance,
        "solvers": {s: {"class": classes[s], "config": dict(x.config)} for s, x in sampler.schedulers.items()},
        "feature_net": {**specs[0].describe(), "name": feature_nets_of(data)[0]},
        "feature_nets": [{**spec.describe(), "key": spec.key} for spec in specs],
        "real_images": int(real.shape[0]),
        "floor": {"fid": floor[primary], "fid_by_net": floor, "num_images": int(floor_images.shape[0]),
                  "what": "FID of the disjoint real floor set against the real reference set"},
        "seed_spread": max((abs(r["fid"] - rows[reference_name]["fid"]) for r in rows.values() if r["family"] == "seed"),
                           default=None),
        "bootstrap": {"resamples": preset.bootstrap, "confidence": preset.confidence, "seed": 0,
                      "what": "percentile intervals over resamples of image indices shared by every method; the "
                              "real statistics stay fixed"},
        "calibration": calibration, "mag_ratios": mag_ratios, "not_attached": {**not_attached, **runner.not_attached},
        "rows": rows, "decisions": decisions, "operating_point": point,
        "timing": {"batches": list(preset.timing_batches), "repeats": preset.timing_repeats,
                   "warmup": preset.timing_warmup, "key_rows": key,
                   "what": "one pipeline call on `batch` images per method per round; rounds interleave the methods in "
                           "shuffled order; hooks and caches are put on and taken off outside the timed region; "
                           "speedup = median over rounds of (stock model time / method time)"},
        "peak_memory": memory, "overhead": overhead, "elapsed_s": time.perf_counter() - started,
    }


def _fastest_holding(rows: dict) -> list[dict]:
    """The fastest quality-holding exit row and frontier row (timed at every batch size)."""
    out = []
    for families in (frontier.FRONTIER_FAMILIES, None):
        pool = [r for r in rows.values() if r.get("holds_quality") and "speedup" in r
                and (r["family"] in frontier.FRONTIER_FAMILIES) == (families is not None)
                and r["family"] not in frontier.NOT_STORABLE]
        if pool:
            out.append(max(pool, key=lambda r: r["speedup"]))
    return out


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
    load_before = load_average()
    results = []
    with torch.no_grad():
        for setting in preset.settings:
            results.append(run_setting(setting, preset, out, (model_paths or {}).get(setting), log))
    report = {
        "preset": preset_name, "preset_values": asdict(preset), "command": command,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                        "python": platform.python_version(), "cpu_count": os.cpu_count(),
                        "load_average_before": load_before, "load_average_after": load_average()},
        "elapsed_s": time.perf_counter() - start, "settings": results,
    }
    for entry in results:
        entry["operating_point"]["measured_in"] = f"{out / 'report.json'} ({command or 'python -m bench bench'})"
    write_report(report, out, markdown)
    log(f"wrote {out / 'report.json'}, report.md, pareto.png")
    return report


def markdown(report: dict) -> str:
    """A preset's report as Markdown: per setting the verdict, the frontier comparison, the table of every method,
    the overheads (`write_report(report, out, markdown)`; a `bench --pipeline` report: `eval.report.markdown`)."""
    env = report["environment"]
    lines = [f"# ee-diffusion bench (preset {report['preset']})", "",
             f"Command: `{report['command']}`", "",
             f"torch {env['torch']}, {env['threads']} threads, {env['machine']} ({env.get('cpu_count')} CPUs); load "
             f"average before {env.get('load_average_before')}, after {env.get('load_average_after')}; total "
             f"{report['elapsed_s']:.0f} s.", ""]
    for s in report["settings"]:
        d = s["decisions"]
        rows = s["rows"]
        ref = rows[s["reference"]]
        b = s["bootstrap"]
        lines += [f"## {s['setting']} ({s['num_blocks']} blocks, {s['num_classes']} classes, {s['num_images']} images, "
                  f"guidance {s['guidance_scale']})", "",
                  f"**Verdict.** {d['verdict']}", "",
                  f"Reference: `{s['reference']}` (stock model, no hooks), FID {ref['fid']:.3f} on the shipped "
                  f"{s['feature_net']['name']} feature net ({s['feature_net']['features']} features, "
                  f"{s['real_images']} real images). Floor: {s['floor']['fid']:.3f} ({s['floor']['num_images']} real "
                  f"images against the reference set). Intervals: {b['confidence']:.0%} paired bootstrap, "
                  f"{b['resamples']} resamples of image indices."
                  + (f" Unpaired spread between two noise seeds of the reference: {s['seed_spread']:.3f}."
                     if s.get("seed_spread") is not None else ""), "",
                  "Knee (fewest steps whose interval against the reference includes 0 or lies below it): "
                  + ", ".join(f"{k}: `{v}`" for k, v in d["knees"].items()) + f"; the knee used: `{d['knee']}`.", "",
                  f"Recommended operating point: `{d['recommended']}` - "
                  f"{describe_point(s['operating_point'])}.", ""]
        if d["exit_rows_beating_frontier"]:
            lines += ["Early-exit points whose whole interval lies below the frontier's at equal wall-clock and "
                      "equal block evaluations:", ""]
            lines += rows_table(s, d["exit_rows_beating_frontier"])
        else:
            lines += ["No early-exit point beats the fewer-steps frontier at its cost on this model."]
        lines += ["", "### Every method", ""] + rows_table(s) + [""]
        if s.get("not_attached"):
            lines += ["Diffusers caches that could not attach: " + "; ".join(f"{k}: {v}" for k, v in s["not_attached"].items()), ""]
        o = s["overhead"]
        lines += [f"Overheads at {o['rows_per_call']} rows per model call: hooks {o['hook_overhead_fraction']:+.1%}, "
                  f"heads {o.get('heads_overhead_fraction', float('nan')):+.1%}, gather/scatter "
                  f"{o['gather_scatter_overhead_fraction']:+.1%} of a full call.",
                  "Peak memory above start: " + ", ".join(f"{k} {v['peak_above_start_mib']:.0f} MiB"
                                                        for k, v in s["peak_memory"].items()) + ".",
                  f"Timing: {s['timing']['what']}; {s['timing']['repeats']} rounds after {s['timing']['warmup']} "
                  f"warm-up; batches {s['timing']['batches']} (batches after the first: the key rows only).", ""]
    return "\n".join(lines) + "\n"
