"""Joint operating-point search: solver, steps, exit policy, thresholds and forecast order, calibrated together.

Early exit competes with running fewer steps (docs/evaluation.md), so what a pipeline should run is an operating
point, not an exit config alone. `search_operating_point` samples, on calibration seeds, the reference (full depth
at `reference_steps`) and every candidate of a `SearchSpace` (each solver x steps at full depth, and with each exit
config), scores each by its block fraction (relative to the reference's) and its paired interval against the
reference (dFID under every feature network, or for `min_psnr` the per-image PSNR: `search_phases`), and picks by
the goal: `tolerance=` the cheapest candidate holding quality under every network (`holds_quality`;
`QUALITY_TOLERANCE` = 0.1 is the benchmark's "unchanged quality"), `budget=` the lowest-FID one within the budget,
`min_psnr=` the cheapest whose mean PSNR reaches the goal. The pick is re-measured on held-out seeds by a stricter
bar, and one that fails gives way to the next, up to `max_confirmations` tries.

Full-depth candidates take part, so "steps alone" is a legitimate answer. Image i of a set with noise seed s starts
from noise seeded by s * 1_000_003 + i: seeds 20_000 (calibration) and 30_000 (held-out) share no noise with each
other or with the benchmark's seeds 0 and 1. Every image goes through the benchmark engine (`eval.runner`), kept as
uint8 shards in `cache_dir` (a rerun reads back what exists; the processes of an `accelerate launch` split the
sampling and take the same decisions); DeeDiff thresholds are calibrated in memory (`thresholds_for_fractions`).
The solvers are built from the pipeline's own scheduler config (`eval.solvers`; on flow matching, the flow versions
of DPM-Solver++ and UniPC), and the operating point records their options (`scheduler_options`).

```py
>>> import torch
>>> from diffusers import DDIMScheduler
>>> from ee_diffusion.pipelines import EarlyExitDiTPipeline
>>> from ee_diffusion.testing import tiny_dit
>>> pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=4), scheduler=DDIMScheduler())
>>> pipe.set_progress_bar_config(disable=True)
>>> real = torch.rand(100, 64, generator=torch.Generator().manual_seed(0))  # features: the 64 pixels
>>> space = SearchSpace(solvers=("ddim",), steps=(2, 4), static_fractions=(0.5,), ase=())
>>> search = search_operating_point(pipe, space, budget=0.6, feature_net=torch.nn.Flatten(), real_features=real,
...                                 reference_steps=4, calib_images=8, holdout_images=8, bootstrap=50)
>>> [(c.name, round(c.block_fraction, 2)) for c in search.candidates]
[('ddim2', 0.5), ('static2@ddim2', 0.25), ('ddim4', 1.0), ('static2@ddim4', 0.5)]
>>> search.confirmed, search.operating_point.scheduler, search.operating_point.num_inference_steps <= 4
(True, 'DDIMScheduler', True)
>>> psnr = search_operating_point(pipe, space, min_psnr=20.0, reference_steps=4, calib_images=8, holdout_images=8,
...                               bootstrap=50)
>>> psnr.goal, psnr.decision["feature_nets"], psnr.candidate("ddim4").psnr["mean"]  # ddim4 is the reference
({'min_psnr': 20.0}, [], 100.0)

```
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._validation import check_int, check_number
from ..config import EarlyExitConfig
from ..eval.frontier import QUALITY_TOLERANCE
from ..eval.paired import FrechetReference
from ..eval.pipeline_sampling import SampleRun
from ..eval.solvers import SEARCH_SOLVERS, SOLVERS, solver_of, solver_timesteps
from ..operating_point import OperatingPoint, build_scheduler, scheduler_of_point
from ..pipelines.conditioning import Conditioning
from ..pipelines.stock import default_guidance_scale, kind_of
from ..adapters import get_adapter
from ..schedules import CachedTailResidual, UncertaintyThreshold
from .common import CalibrationSet, as_target
from .operating_point_result import Candidate, Confirmation, OperatingPointSearch
from .search_space import (
    BENCH_SEEDS,
    OWN_SCHEDULER,
    SearchSpace,
    check_goal,
    check_seeds,
    check_target,
    default_reference_solver,
    feature_nets,
    solver_specs,
)
from .search_phases import Sampler, open_phases
from .thresholds import thresholds_for_fractions

__all__ = ["BENCH_SEEDS", "OWN_SCHEDULER", "Candidate", "Confirmation", "OperatingPointSearch", "SearchSpace",
           "search_operating_point", "store_operating_point"]


def search_operating_point(
    pipe: Any, space: SearchSpace, *, tolerance: float | None = None, budget: float | None = None,
    min_psnr: float | None = None, feature_net: Callable[[torch.Tensor], torch.Tensor] | None = None,
    real_features: torch.Tensor | FrechetReference | None = None,
    features: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor | FrechetReference]] | None = None,
    reference_steps: int = 25, reference_solver: str | None = None, guidance_scale: float | None = None,
    conditioning: Conditioning | None = None, calib_images: int = 200, calib_seed: int = 20_000,
    holdout_images: int = 200, holdout_seed: int = 30_000, confidence: float = 0.9, bootstrap: int = 200,
    max_confirmations: int = 3, batch_size: int = 64, progress: bool = False,
    on_sample: Callable[[str, str, SampleRun], None] | None = None,
    baselines: dict[str, OperatingPoint] | None = None, cache_dir: str | Path | None = None, shard_size: int = 64,
) -> OperatingPointSearch:
    """The operating point of `space` that meets the goal on calibration seeds, confirmed on held-out seeds.

    Args:
        pipe: a pipeline of ours, a supported stock pipeline (with `conditioning`), or a `CalibrationTarget`.
        space: the candidates (`SearchSpace`).
        tolerance, budget, min_psnr: the goal, exactly one: relative FID tolerance of "holds quality"; block fraction
            of the reference in (0, 1]; or mean per-image PSNR (dB, in (0, 100]) against the reference image from
            the same noise, which takes no feature networks or real images.
        feature_net: images (N, C, H, W) in [0, 1] -> (N, F) features; `real_features`: (M, F) real features or
            their `FrechetReference`. `features`: instead, several networks, name -> (feature_net, real_features),
            the primary first; quality must hold under every one.
        reference_steps, reference_solver: the reference; the solver is a name of `SEARCH_SOLVERS` or "own" (the
            pipeline's scheduler); None: "ddim" on a DDPM-type noise schedule when `space.solvers` names solvers,
            else "own".
        guidance_scale: None: the pipeline's default (an operating point's, for ours).
        calib_images, calib_seed, holdout_images, holdout_seed: the two image sets (disjoint noise, >= 2 images).
        confidence, bootstrap: the paired percentile intervals.
        max_confirmations: candidates tried on the held-out seeds before giving up.
        on_sample: called as `on_sample(phase, name, run)` after each sampling ("calibration" or "held-out").
        cache_dir, shard_size: where the engine keeps every run's images (`eval.sample_cache.ShardCache`; under
            `accelerate launch`, a folder all processes share). None: a temporary folder, removed afterwards.
        baselines: operating points (name -> `OperatingPoint` of a scheduler class of `eval.solvers.SOLVERS`)
            sampled on the held-out seeds beside a confirmed pick: their dFID (dPSNR) against the reference and the
            pick's against them.

    The held-out bar is stricter than the screening (the cheapest of many screened candidates that passes is
    biased towards the metric's blind spots): under every network the whole held-out dFID interval at or below
    +tolerance x the reference FID (`confirms_quality`), or the low end of the held-out PSNR interval at or above
    `min_psnr`, both at the confidence 1 - (1 - confidence) / max_confirmations (the tries share the held-out
    images); a budget pick is confirmed when its held-out block fraction stays within the budget. The result's
    `decision` records the networks, the number screened and both bars.

    Nothing meeting the goal is not an error: the result says why (`confirmed=False`), and its operating point is
    the reference. Bad arguments raise `ValueError` (received and allowed values) before any sampling.
    """
    if not isinstance(space, SearchSpace):
        raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
    tolerance, budget, min_psnr = check_goal(tolerance, budget, min_psnr)
    check_int(reference_steps, "reference_steps", 1, "steps of the reference")
    check_int(calib_images, "calib_images", 2, "calibration images: a paired interval needs at least 2")
    check_int(holdout_images, "holdout_images", 2, "held-out images: a paired interval needs at least 2")
    check_int(bootstrap, "bootstrap", 1, "bootstrap resamples")
    check_int(max_confirmations, "max_confirmations", 1, "candidates tried on the held-out seeds")
    check_int(batch_size, "batch_size", 1, "images per pipeline call")
    check_int(shard_size, "shard_size", 1, "images per cached shard")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    allowed = sorted(SEARCH_SOLVERS) + [OWN_SCHEDULER]
    if reference_solver is not None and reference_solver not in allowed:
        raise ValueError(f"reference_solver must be one of {allowed} or None, got {reference_solver!r}")
    check_seeds(calib_seed, calib_images, holdout_seed, holdout_images)
    nets = feature_nets(feature_net, real_features, features, min_psnr)
    baselines = dict(baselines or {})
    bad = {k: getattr(p, "scheduler", p) for k, p in baselines.items()
           if not isinstance(p, OperatingPoint) or solver_of(p.scheduler) is None}
    if bad:
        raise ValueError(f"baselines must be OperatingPoints of {sorted(c for c, _ in SOLVERS.values())}, got {bad}")
    target = as_target(pipe, conditioning)
    check_target(target, space)
    if guidance_scale is not None:
        check_number(guidance_scale, "guidance_scale", 0.0)

    original = target.pipe.scheduler
    solvers = space.solvers or (OWN_SCHEDULER,)
    ref_solver = reference_solver or default_reference_solver(original, space.solvers)
    baseline_solvers = {name: solver_of(point.scheduler) for name, point in baselines.items()}
    # Every named solver is built from the pipeline's own scheduler; one its noise schedule cannot run is refused
    # here, before any sampling.
    named = [s for s in dict.fromkeys((*solvers, ref_solver, *baseline_solvers.values())) if s != OWN_SCHEDULER]
    specs = {OWN_SCHEDULER: (type(original).__name__, {}), **solver_specs(original, named)}
    schedulers = {s: original if s == OWN_SCHEDULER else build_scheduler(*spec, original) for s, spec in specs.items()}
    classes = {s: class_name for s, (class_name, _) in specs.items()}
    default = default_guidance_scale(target.pipe)
    guidance = float(guidance_scale if guidance_scale is not None else (1.0 if default is None else default))
    # No guidance to pass: an unconditional pipeline, or one whose call leaves it unset (Qwen-Image's default)
    unset = guidance_scale is None and default is None
    call_guidance = None if target.conditioning.kind == "none" or unset else guidance
    tol = None if min_psnr is not None else QUALITY_TOLERANCE if tolerance is None else tolerance
    tail_exit_block = CachedTailResidual.earliest_exit_block(get_adapter(target.denoiser)) \
        if space.tail_thresholds else 1
    fixed = space.exit_configs(target.num_blocks, tail_exit_block)
    # BlockForecast windows are placed among each (solver, steps)'s timesteps: a scheduler that cannot give them
    # (flow matching with dynamic shifting) is refused here, before any sampling.
    timesteps = {(s, k): solver_timesteps(schedulers[s], k) for s in solvers for k in space.steps} \
        if space.block_forecast_intervals else {}
    confirm_confidence = 1 - (1 - confidence) / max_confirmations
    # The real statistics once for both phases (and a bad shape refused before any sampling); none for a PSNR goal.
    reals = {net: real if isinstance(real, FrechetReference) else FrechetReference(real)
             for net, (_, real) in nets.items()}

    from tqdm.auto import tqdm

    recording = 1 + len(space.threshold_fractions) if space.threshold_fractions else 0  # + the certainty record
    forecasts = (len(space.block_forecast_intervals) * len(space.block_forecast_orders)
                 * len(space.block_forecast_windows) * len(space.block_forecast_verify))
    planned = 1 + len(solvers) * len(space.steps) * (1 + len(fixed) + forecasts + recording)
    cache, temporary = _shard_cache(cache_dir, shard_size, target.denoiser)
    bar = tqdm(total=planned, disable=not progress or cache.rank != 0, desc="operating-point search", unit="run")
    # One engine and one loop for every goal; what differs is how a phase scores its images (FID against real
    # features, or PSNR against the reference's images) and the bars a candidate is held to.
    phases = open_phases(target, schedulers, call_guidance, batch_size, {n: f for n, (f, _) in nets.items()}, reals,
                         cache, {"calibration": (calib_seed, calib_images, confidence),
                                 "held-out": (holdout_seed, holdout_images, confirm_confidence)},
                         bootstrap, persistent=temporary is None,
                         goal={"tolerance": tol, "budget": budget, "min_psnr": min_psnr}, progress=progress)
    calib, holdout = phases["calibration"], phases["held-out"]
    sampler = Sampler(bar, on_sample)
    # What a candidate holds: "holding quality (tolerance 0.1)"
    what = f"quality (tolerance {tolerance})" if min_psnr is None else \
        f"a mean PSNR >= {min_psnr:g} dB against the reference"
    try:
        # 1. Calibration seeds: the reference, then every solver x steps at full depth and with every exit config.
        sampler(calib, "reference", ref_solver, reference_steps, None)
        candidates: list[Candidate] = []
        for solver in solvers:
            for k in space.steps:
                at = f"{solver}{k}"
                per_step = space.step_configs(timesteps[(solver, k)]) if space.block_forecast_intervals else []
                configs = [(f"{prefix}@{at}", family, config) for prefix, family, config in [*fixed, *per_step]]
                bar.total -= forecasts - len(per_step)  # windows too long for k steps are left out
                if space.threshold_fractions:
                    target.pipe.scheduler = schedulers[solver]
                    sets = CalibrationSet(num_images=calib_images, seed=calib_seed, num_inference_steps=k,
                                          guidance_scale=guidance, batch_size=batch_size)
                    thresholds = thresholds_for_fractions(target, list(space.threshold_fractions), sets)
                    bar.update(1)
                    configs += [(f"deediff{f:g}@{at}", "deediff",
                                 EarlyExitConfig(UncertaintyThreshold(c, patience=2), cfg_pairing="together"))
                                for f, c in zip(space.threshold_fractions, thresholds)]
                for name, family, config in [(at, "full_depth", None), *configs]:
                    sampler(calib, name, solver, k, config)
                    candidates.append(calib.candidate(name, family, solver, classes[solver], k, config))

        # 2. The goal's pool, in the order the held-out seeds try it (`rank`: FID, or minus the mean PSNR).
        if budget is None:
            pool = sorted((c for c in candidates if c.holds and c.block_fraction <= 1 + 1e-9),
                          key=lambda c: (c.block_fraction, c.rank))
            none_why = (f"no candidate that runs at most the reference's blocks holds {what} on the {calib_images} "
                        f"calibration images")
        else:
            pool = sorted((c for c in candidates if c.block_fraction <= budget + 1e-9),
                          key=lambda c: (c.rank, c.block_fraction))
            none_why = f"no candidate runs within the budget {budget} of the reference's blocks"
        tries: list[Confirmation] = []
        compared: dict[str, Any] = {}
        chosen, vs_frontier, why = None, None, none_why if not pool else ""
        if pool:
            # 3. Held-out seeds: the reference, then the pool's candidates in order until one is confirmed.
            bar.total += 1 + min(len(pool), max_confirmations) + 1
            sampler(holdout, "reference", ref_solver, reference_steps, None)
            for c in pool[:max_confirmations]:
                sampler(holdout, c.name, c.solver, c.steps, c.exit_config)
                tries.append(holdout.confirmation(c))
                if tries[-1].confirmed:
                    chosen = c
                    break
            if chosen is None:
                failed = "budget" if budget is not None else "quality" if min_psnr is None else "PSNR"
                why = (f"the {len(tries)} best calibration candidates failed on the {holdout_images} held-out images "
                       f"({failed}): {', '.join(t.name for t in tries)}")
            else:
                vs_frontier = holdout.versus_frontier(chosen, candidates, sampler)
                for name, point in baselines.items():  # measured on the same held-out images
                    row = f"baseline:{name}"
                    sampler(holdout, row, baseline_solvers[name], point.num_inference_steps, point.exit_config)
                    compared[name] = holdout.baseline(chosen.name, row, point)
                why = (f"{chosen.name}: the cheapest candidate holding {what}" if budget is None
                       else f"{chosen.name}: the lowest calibration FID within the budget {budget}")
                why += f", confirmed on {holdout_images} held-out images"
        bar.total = bar.n
        bar.refresh()
    finally:
        target.pipe.scheduler = original
        bar.close()
        if temporary is not None:
            temporary.cleanup()
    goal = {name: value for name, value in (("tolerance", tolerance), ("budget", budget), ("min_psnr", min_psnr))
            if value is not None}
    screening, confirmation = holdout.rules()
    return OperatingPointSearch(
        goal=goal, reference={"solver": ref_solver, "scheduler": classes[ref_solver], "steps": reference_steps,
                              **holdout.reference_scores(calib)},
        candidates=candidates, tries=tries, chosen=None if chosen is None else chosen.name,
        confirmed=chosen is not None, why=why, vs_frontier=vs_frontier, baselines=compared, guidance_scale=guidance,
        quality_tolerance=tol,
        decision={"feature_nets": list(nets), "primary": next(iter(nets), None), "screened": len(candidates),
                  "screening": {"confidence": confidence, "rule": screening},
                  "confirmation": {"confidence": confirm_confidence, "tries_allowed": max_confirmations,
                                   "rule": confirmation}},
        settings={"calib_images": calib_images, "calib_seed": calib_seed, "holdout_images": holdout_images,
                  "holdout_seed": holdout_seed, "confidence": confidence, "bootstrap": bootstrap,
                  "max_confirmations": max_confirmations, "conditioning": target.conditioning.to_dict()},
        solvers={s: {"class": specs[s][0], "options": specs[s][1]} for s in dict.fromkeys((*solvers, ref_solver))})


def store_operating_point(pipe: Any, search: OperatingPointSearch) -> None:
    """Make the search's operating point the default of `pipe` (a pipeline of ours): its scheduler becomes the
    point's solver, built as the search built it (the point's class and `scheduler_options` over the pipeline's
    own scheduler config), and `save_pretrained` writes both."""
    if not kind_of(pipe).ours:
        raise ValueError(f"only pipelines of ours store an operating point; got {type(pipe).__name__}")
    point = search.operating_point
    if search.point_solver != OWN_SCHEDULER:
        pipe.scheduler = scheduler_of_point(point, pipe.scheduler)  # the pipeline's config follows (diffusers)
    pipe.set_operating_point(point)


def _shard_cache(cache_dir: str | Path | None, shard_size: int, denoiser: Any) -> tuple[Any, Any]:
    """The engine's `ShardCache` (split over the processes of an `accelerate launch`), and the temporary folder
    behind it when `cache_dir` is None (None otherwise)."""
    from accelerate import PartialState

    from ..eval.sample_cache import ShardCache

    # On the CPU the processes meet through gloo (accelerate's `cpu=True`); on GPUs through its default backend.
    state = PartialState(cpu=next(denoiser.parameters()).device.type == "cpu")
    if cache_dir is None:
        if state.num_processes > 1:
            raise ValueError(f"{state.num_processes} processes share a search's images through a folder they all "
                             f"see: give cache_dir= (the CLI: --cache-dir)")
        temporary = tempfile.TemporaryDirectory(prefix="ee-diffusion-search-")
        return ShardCache(temporary.name, shard_size), temporary
    return ShardCache(Path(cache_dir), shard_size, state), None
