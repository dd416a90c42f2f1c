"""The bench's methods: solvers, the composed (solver, steps) x exit-family grid, and diffusers' caches.

A `Method` is one row of the report: a solver and step count, plus an exit config (early exit composed with
fewer steps) or a diffusers cache (a baseline), or neither (the frontier: fewer steps at full depth). Exit
families that need calibration are calibrated at their grid point, on the calibration seeds (never the
evaluation images).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ee_diffusion.calibration import (
    CalibrationSet,
    calibrate_thresholds,
    distil_schedule,
    measure_depth_deviation,
    schedule_from_deviation,
    thresholds_for_fractions,
)
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.eval.baselines import TAYLORSEER_DIT_MODULES, CacheBaseline
from ee_diffusion.eval.method import Method
from ee_diffusion.eval.solvers import ase_schedules, make_schedulers
from ee_diffusion.schedules import CachedTailResidual, StaticDepth, UncertaintyThreshold

from .mag_cache import calibrate_mag_ratios

if TYPE_CHECKING:
    from .presets import Preset

#: (solver, steps): a point of the composed grid.
GridPoint = tuple[str, int]


def exit_methods(pipe: Any, point: GridPoint, preset: Preset, feature_net: Any, guidance: float,
                 sampler: Any) -> tuple[list[Method], dict[str, Any]]:
    """Every exit family at `point` (the pipeline's scheduler is already the point's solver)."""
    solver, k = point
    at = f"@{solver}{k}"
    n = len(pipe.transformer.transformer_blocks)
    methods = []
    conventional = solver == "ddim" and k == preset.reference_steps and preset.conventional_families is not None
    wanted = set(preset.conventional_families) if conventional else None

    def want(family: str) -> bool:
        return wanted is None or family in wanted
    for d in sorted({max(1, min(n - 1, round(f * n))) for f in preset.static_fractions} if want("static_depth") else ()):
        methods.append(Method(f"static{d}{at}", "static_depth", solver, k, EarlyExitConfig(StaticDepth(d))))
    schedules = ase_schedules(n)
    for kind in preset.ase if want("ase") else ():
        methods.append(Method(f"ase_{kind}{at}", "ase", solver, k, EarlyExitConfig(schedules[kind])))
    for tau in preset.tail_thresholds if want("tail_cache") else ():
        for order in preset.tail_forecast_orders:  # order 0 keeps the name of the runs before forecasts
            methods.append(Method(f"tail{tau}{f'_o{order}' if order else ''}{at}", "tail_cache", solver, k,
                                  EarlyExitConfig(CachedTailResidual(threshold=tau, forecast_order=order)),
                                  notes={"forecast_order": order} if order else {}))
    calib = CalibrationSet(num_images=preset.calib_images, num_inference_steps=k, guidance_scale=guidance,
                           num_buckets=preset.calib_buckets, batch_size=preset.sample_batch)
    depths = sorted({min(n - 1, max(1, round(f * n))) for f in preset.calib_fractions}) if preset.calib_fractions \
        else None
    info: dict[str, Any] = {}
    measurement = None
    budgets = preset.budgets if want("calibrated_schedule") else ()
    threshold_budgets = preset.threshold_budgets if want("calibrated_thresholds") else ()
    if budgets or threshold_budgets:
        measurement = measure_depth_deviation(pipe, calib, feature_net=feature_net, depths=depths)
    for budget in budgets:
        schedule, details = schedule_from_deviation(measurement, budget=budget)
        methods.append(Method(f"calsched{budget}{at}", "calibrated_schedule", solver, k, EarlyExitConfig(schedule),
                              notes={"budget": budget, **details}))
    if pipe.exit_heads is not None and want("deediff"):
        sweep = thresholds_for_fractions(pipe, list(preset.threshold_fractions), calib) if preset.threshold_fractions else []
        info["deediff_thresholds"] = dict(zip(map(str, preset.threshold_fractions), sweep))
        for fraction, c in zip(preset.threshold_fractions, sweep):
            methods.append(Method(f"deediff{fraction}{at}", "deediff", solver, k,
                                  EarlyExitConfig(UncertaintyThreshold(c, patience=2), cfg_pairing="together"),
                                  notes={"threshold": c, "calibration_fraction": fraction}))
        for budget in threshold_budgets:
            result = calibrate_thresholds(pipe, budget, calib=calib, feature_net=feature_net, measurement=measurement)
            methods.append(Method(f"calthr{budget}{at}", "calibrated_thresholds", solver, k, result.exit_config,
                                  notes={"budget": budget, "calibration_fraction": result.info["block_fraction"]}))
        if preset.distil and sweep and want("distilled"):
            c = sweep[len(sweep) // 2]
            observed = sampler(Method("observe", "deediff", solver, k, EarlyExitConfig(UncertaintyThreshold(c, patience=2))),
                               range(calib.seed, calib.seed + calib.num_images))
            schedule = distil_schedule(observed.extra["exit_stats"])
            methods.append(Method(f"distilled{at}", "distilled", solver, k, EarlyExitConfig(schedule),
                                  notes={"threshold": c}))
    return methods, info


def cache_methods(pipe: Any, point: GridPoint, preset: Preset, guidance: float,
                  sampler: Any) -> tuple[list[Method], list[float] | None, dict[str, str]]:
    """diffusers' caches at `point`: (methods, MagCache's calibrated ratios, {kind: why it cannot attach})."""
    solver, k = point
    at = f"@{solver}{k}"
    candidates = [Method(f"fbc{t}{at}", "first_block_cache", solver, k, cache=CacheBaseline("first_block_cache", {"threshold": t}))
                  for t in preset.fbc_thresholds]
    windows = preset.taylorseer_windows or ((max(1, k // 8), False),)
    for i in preset.taylorseer_intervals:
        for order in preset.taylorseer_orders:
            for warmup, last in windows:  # the first names stay those of the runs before orders and windows
                plain = order == 1 and not preset.taylorseer_windows
                name = f"taylorseer{i}{at}" if plain else f"taylorseer{i}_o{order}_w{warmup}{'_l' if last else ''}{at}"
                options = {"cache_interval": i, "disable_cache_before_step": warmup, "max_order": order,
                           "disable_cache_after_step": k - 1 if last else None,
                           "cache_identifiers": TAYLORSEER_DIT_MODULES}
                candidates.append(Method(name, "taylorseer_cache", solver, k, cache=CacheBaseline("taylorseer_cache", options),
                                         notes={"interval": i, "order": order, "warmup_steps": warmup, "last_step": last}))
    candidates += [Method(f"sea{t}{at}", "sea_cache", solver, k, cache=CacheBaseline("sea_cache", {"threshold": t}))
                   for t in preset.sea_thresholds]
    ratios = None
    refused: dict[str, str] = {}
    if preset.mag_thresholds:
        full = Method("calibrate", "reference", solver, k)
        try:
            ratios = calibrate_mag_ratios(lambda: sampler(full, range(10_000, 10_000 + preset.calib_images)),
                                          pipe.transformer, pipe.scheduler, k)
            candidates += [Method(f"mag{t}{at}", "mag_cache", solver, k, cache=CacheBaseline(
                "mag_cache", {"threshold": t, "mag_ratios": ratios})) for t in preset.mag_thresholds]
        except (ValueError, RuntimeError, TypeError) as error:
            refused["mag_cache"] = f"calibration failed: {error}"
    methods = []
    for method in candidates:
        try:  # a two-image trial: a cache that cannot attach is reported, not fatal
            sampler(method, range(2), batch_size=2)
            methods.append(method)
        except (ValueError, RuntimeError, TypeError, KeyError) as error:
            refused[method.family] = f"{type(error).__name__}: {error}"
    return methods, ratios, refused
