"""Joint operating-point search: solver, steps, exit policy, thresholds and forecast order, calibrated together.

Early exit competes with running fewer steps (docs/evaluation.md), so what a pipeline should run is an operating
point, not an exit config alone. `search_operating_point` samples, on calibration seeds, the reference (the model at
`reference_steps`, full depth) and every candidate of a `SearchSpace` - each solver x steps at full depth, and
composed with each exit config of the space - and scores each by its block fraction (block evaluations relative to
the reference's) and its paired bootstrap dFID interval against the reference under every feature network of the
search (`features=`; one `PairedFID` per network, `search_phases.Phase`). Then, for the goal:

- `tolerance=`: the cheapest candidate (among those running at most the reference's blocks) that holds quality
  under every network (`holds_quality`: the interval includes 0 or lies below it, or lies wholly below
  +tolerance x the reference FID; `QUALITY_TOLERANCE` = 0.1 is the benchmark's "unchanged quality"). It is
  re-measured against the reference on held-out seeds by a stricter bar (`confirms_quality`, see
  `search_operating_point`); a pick that fails there gives way to the next cheapest, up to `max_confirmations` tries;
- `budget=`: the lowest-FID candidate whose block fraction is at most the budget, confirmed when its held-out
  block fraction stays within it (its held-out dFID interval is reported).

Full-depth candidates take part, so "steps alone" is a legitimate answer; the held-out seeds also measure the
chosen point against the best full-depth point that costs no more. Image i of a set with noise seed s starts from
noise seeded by s * 1_000_003 + i (`image_generators`): seeds 20_000 (calibration) and 30_000 (held-out) share no
noise with each other or with the benchmark's seeds 0 and 1.

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

```
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .._validation import check_int, check_number
from ..backbones.registry import get_adapter
from ..benchmarks.frontier import QUALITY_TOLERANCE, confirms_quality, holds_quality, holds_under_every_net
from ..benchmarks.solvers import SOLVERS, make_schedulers, solver_of, solver_timesteps
from ..config import EarlyExitConfig
from ..eval.paired import FrechetReference
from ..eval.sampling import _SEED_STRIDE, SampleRun
from ..operating_point import OperatingPoint
from ..pipelines.conditioning import Conditioning
from ..pipelines.stock import default_guidance_scale, kind_of
from ..schedules import UncertaintyThreshold
from .common import CalibrationSet, as_target
from .operating_point_result import Candidate, Confirmation, OperatingPointSearch
from .search_phases import Phase, Sampler
from .search_space import SearchSpace
from .thresholds import thresholds_for_fractions

__all__ = ["BENCH_SEEDS", "OWN_SCHEDULER", "Candidate", "Confirmation", "OperatingPointSearch", "SearchSpace",
           "search_operating_point", "store_operating_point"]

#: Noise seeds of the benchmark's evaluation sets: a search never samples their noise.
BENCH_SEEDS = (0, 1)
#: The solver name of the pipeline's own scheduler (`SearchSpace(solvers=None)`: flow-matching pipelines).
OWN_SCHEDULER = "own"
def _check_seeds(calib_seed: int, calib_images: int, holdout_seed: int, holdout_images: int) -> None:
    """The noise of image i of a set is seeded by seed * stride + i: the two sets and the benchmark's share none."""
    check_int(calib_seed, "calib_seed", 0, "noise seed of the calibration images")
    check_int(holdout_seed, "holdout_seed", 0, "noise seed of the held-out images")
    bench = range(min(BENCH_SEEDS) * _SEED_STRIDE, (max(BENCH_SEEDS) + 1) * _SEED_STRIDE)
    sets = {"calibration": range(calib_seed * _SEED_STRIDE, calib_seed * _SEED_STRIDE + calib_images),
            "held-out": range(holdout_seed * _SEED_STRIDE, holdout_seed * _SEED_STRIDE + holdout_images)}
    for what, seeds in sets.items():
        if seeds.start < bench.stop and bench.start < seeds.stop:
            raise ValueError(f"the {what} images (seed {seeds.start // _SEED_STRIDE}) would reuse the noise of the "
                             f"benchmark's evaluation seeds {BENCH_SEEDS}; use seeds >= {max(BENCH_SEEDS) + 1} "
                             f"(e.g. calib_seed=20000, holdout_seed=30000)")
    a, b = sets["calibration"], sets["held-out"]
    if a.start < b.stop and b.start < a.stop:
        raise ValueError(f"calib_seed={calib_seed} ({calib_images} images) and holdout_seed={holdout_seed} "
                         f"({holdout_images} images) share noise: held-out seeds must differ from the calibration "
                         f"seeds (noise seed = seed * {_SEED_STRIDE} + image index)")


def _check_target(target: Any, space: SearchSpace) -> None:
    """Refuse, before any sampling, exit configs this pipeline cannot run."""
    adapter = get_adapter(target.denoiser)
    exits = space.static_fractions or space.ase or space.needs_transformer or space.threshold_fractions
    if exits and not adapter.sequential and target.bridges is None and not kind_of(target.pipe).ours:
        raise ValueError(f"{type(target.denoiser).__name__} exits by depth truncation and needs UNetExitBridges; "
                         f"give them (as_target(pipe, conditioning, bridges=...)) or search steps alone (empty "
                         f"static_fractions, ase, tail_thresholds, block_forecast_intervals, threshold_fractions)")
    if space.needs_transformer and not adapter.sequential:
        raise ValueError(f"tail_thresholds and block_forecast_intervals need a transformer denoiser; "
                         f"{type(target.denoiser).__name__} is not one")
    if space.threshold_fractions and target.exit_heads is None:
        raise ValueError("threshold_fractions need exit heads (UncertaintyHeads): a pipeline of ours with exit_heads, "
                         "or a CalibrationTarget with heads; got none")
    if target.conditioning.kind == "prompts" and any(p.seed is not None for p in target.conditioning.prompts):
        raise ValueError("prompts with their own seed fix their images' noise whatever the set's seed, so calibration "
                         "and held-out images would share it; give prompts without seeds")


def search_operating_point(
    pipe: Any, space: SearchSpace, *, tolerance: float | None = None, budget: float | None = None,
    feature_net: Callable[[torch.Tensor], torch.Tensor] | None = None,
    real_features: torch.Tensor | FrechetReference | None = None,
    features: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor | FrechetReference]] | None = None,
    reference_steps: int = 25, reference_solver: str | None = None, guidance_scale: float | None = None,
    conditioning: Conditioning | None = None, calib_images: int = 200, calib_seed: int = 20_000,
    holdout_images: int = 200, holdout_seed: int = 30_000, confidence: float = 0.9, bootstrap: int = 200,
    max_confirmations: int = 3, batch_size: int = 64, progress: bool = False,
    on_sample: Callable[[str, str, SampleRun], None] | None = None,
    baselines: dict[str, OperatingPoint] | None = None,
) -> OperatingPointSearch:
    """The operating point of `space` that meets the goal on calibration seeds, confirmed on held-out seeds.

    Args:
        pipe: a pipeline of ours, a supported stock pipeline (with `conditioning`), or a `CalibrationTarget`.
        space: the candidates (`SearchSpace`).
        tolerance: relative FID tolerance of "holds quality" (see the module doc); exactly one of it and `budget`.
        budget: block fraction of the reference, in (0, 1].
        feature_net: images (N, C, H, W) in [0, 1] -> (N, F) features; `real_features`: (M, F) real features or
            their `FrechetReference`.
        features: instead of those two, several feature networks: name -> (feature_net, real_features), the
            primary one first. Quality must hold under every one of them (`holds_under_every_net`).
        reference_steps, reference_solver: the reference; solver None: "ddim", or the pipeline's own scheduler
            when `space.solvers` is None.
        guidance_scale: None: the pipeline's default (an operating point's, for ours).
        calib_images, calib_seed, holdout_images, holdout_seed: the two image sets (disjoint noise, >= 2 images).
        confidence, bootstrap: the paired percentile intervals.
        max_confirmations: candidates tried on the held-out seeds before giving up.
        on_sample: called as `on_sample(phase, name, run)` after each sampling ("calibration" or "held-out").
        baselines: operating points (name -> `OperatingPoint` of a DDIM or DPM-Solver++ scheduler) sampled on the
            held-out seeds beside a confirmed pick, e.g. the pipeline's current default: their dFID against the
            reference and the pick's against them (`OperatingPointSearch.baselines`).

    The held-out confirmation of a tolerance goal is stricter than the screening (`confirms_quality`): the
    cheapest of many screened candidates that passes is biased towards the metric's blind spots, so under every
    network its whole held-out interval must lie at or below +tolerance x the reference FID, at the confidence
    1 - (1 - confidence) / max_confirmations (the tries share the held-out images). `decision` in the result
    records the networks, the number screened and both bars; each try reports its per-image fidelity
    (PSNR/SSIM against the reference image from the same noise).

    Nothing meeting the goal is not an error: the result says why (`confirmed=False`), and its operating point is
    the reference. Bad arguments raise `ValueError` (received and allowed values) before any sampling.
    """
    if not isinstance(space, SearchSpace):
        raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
    if (tolerance is None) == (budget is None):
        raise ValueError(f"give exactly one goal: tolerance= (relative FID, e.g. {QUALITY_TOLERANCE}, unchanged "
                         f"quality) or budget= (block fraction in (0, 1]); got tolerance={tolerance!r}, "
                         f"budget={budget!r}")
    if tolerance is not None:
        tolerance = check_number(tolerance, "tolerance", 0.0)
        if math.isinf(tolerance):
            raise ValueError(f"tolerance must be finite, got {tolerance!r}")
    if budget is not None:
        budget = check_number(budget, "budget", 0.0, 1.0, low_open=True)
    check_int(reference_steps, "reference_steps", 1, "steps of the reference")
    check_int(calib_images, "calib_images", 2, "calibration images: a paired interval needs at least 2")
    check_int(holdout_images, "holdout_images", 2, "held-out images: a paired interval needs at least 2")
    check_int(bootstrap, "bootstrap", 1, "bootstrap resamples")
    check_int(max_confirmations, "max_confirmations", 1, "candidates tried on the held-out seeds")
    check_int(batch_size, "batch_size", 1, "images per pipeline call")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    allowed = sorted(SOLVERS) + [OWN_SCHEDULER]
    if reference_solver is not None and reference_solver not in allowed:
        raise ValueError(f"reference_solver must be one of {allowed} or None, got {reference_solver!r}")
    _check_seeds(calib_seed, calib_images, holdout_seed, holdout_images)
    nets = _feature_nets(feature_net, real_features, features)
    baselines = dict(baselines or {})
    bad = {k: getattr(p, "scheduler", p) for k, p in baselines.items()
           if not isinstance(p, OperatingPoint) or solver_of(p.scheduler) is None}
    if bad:
        raise ValueError(f"baselines must be OperatingPoints of {sorted(c for c, _ in SOLVERS.values())}, got {bad}")
    target = as_target(pipe, conditioning)
    _check_target(target, space)
    named = sorted({*(space.solvers or ()), reference_solver or ("ddim" if space.solvers else OWN_SCHEDULER)}
                   - {OWN_SCHEDULER})
    if named and not hasattr(target.pipe.scheduler, "alphas_cumprod"):
        raise ValueError(f"{named} need a DDPM-type noise schedule, which {type(target.pipe.scheduler).__name__} "
                         f"(flow matching) does not have: search with solvers=None and reference_solver="
                         f"{OWN_SCHEDULER!r} (the pipeline's own scheduler)")
    if guidance_scale is not None:
        check_number(guidance_scale, "guidance_scale", 0.0)

    solvers = space.solvers or (OWN_SCHEDULER,)
    ref_solver = reference_solver or ("ddim" if space.solvers else OWN_SCHEDULER)
    original = target.pipe.scheduler
    schedulers = {OWN_SCHEDULER: original}
    if any(s != OWN_SCHEDULER for s in (*solvers, ref_solver)):
        schedulers.update(make_schedulers(original))
    classes = {s: SOLVERS[s][0] if s in SOLVERS else type(original).__name__ for s in schedulers}
    default = default_guidance_scale(target.pipe)
    guidance = float(guidance_scale if guidance_scale is not None else (1.0 if default is None else default))
    call_guidance = None if target.conditioning.kind == "none" else guidance
    tol = QUALITY_TOLERANCE if tolerance is None else tolerance
    fixed = space.exit_configs(target.num_blocks)
    # BlockForecast windows are placed among each (solver, steps)'s timesteps: a scheduler that cannot give them
    # (flow matching with dynamic shifting) is refused here, before any sampling.
    timesteps = {(s, k): solver_timesteps(schedulers[s], k) for s in solvers for k in space.steps} \
        if space.block_forecast_intervals else {}

    # The real statistics once for both phases (and a bad shape refused before any sampling).
    reals = {net: real if isinstance(real, FrechetReference) else FrechetReference(real)
             for net, (_, real) in nets.items()}
    confirm_confidence = 1 - (1 - confidence) / max_confirmations
    calib = Phase("calibration", calib_seed, calib_images, reals, bootstrap, confidence)
    holdout = Phase("held-out", holdout_seed, holdout_images, reals, bootstrap, confirm_confidence,
                    keep_reference=True)

    from tqdm.auto import tqdm

    recording = 1 + len(space.threshold_fractions) if space.threshold_fractions else 0  # + the certainty record
    forecasts = (len(space.block_forecast_intervals) * len(space.block_forecast_orders)
                 * len(space.block_forecast_windows) * len(space.block_forecast_verify))
    planned = 1 + len(solvers) * len(space.steps) * (1 + len(fixed) + forecasts + recording)
    bar = tqdm(total=planned, disable=not progress, desc="operating-point search", unit="run")
    sampler = Sampler(target, schedulers, call_guidance, batch_size, {n: f for n, (f, _) in nets.items()}, bar,
                      on_sample)
    try:
        # 1. Calibration seeds: the reference, then every solver x steps at full depth and with every exit config.
        sampler(calib, "reference", ref_solver, reference_steps, None)
        ref_fid, ref_fids = calib.fid("reference"), calib.fids("reference")
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
                    d = calib.difference(name, "reference")
                    full = None if config is None else calib.difference(name, at)
                    by_net = {net: {"fid": calib.paired[net].point[name], "dfid": d[net],
                                    "holds": holds_quality(d[net], ref_fids[net], tol)} for net in nets}
                    if full is not None:
                        for net in nets:
                            by_net[net]["dfid_full_depth"] = full[net]
                    candidates.append(Candidate(
                        name, family, solver, classes[solver], k, config, calib.fraction(name), calib.fid(name),
                        d[calib.primary], holds_under_every_net(d, ref_fids, tol),
                        None if full is None else full[calib.primary],
                        None if full is None else holds_under_every_net(full, calib.fids(at), tol), by_net))

        # 2. The goal's pool, in the order the held-out seeds try it.
        if tolerance is not None:
            pool = sorted((c for c in candidates if c.holds and c.block_fraction <= 1 + 1e-9),
                          key=lambda c: (c.block_fraction, c.fid))
            none_why = (f"no candidate that runs at most the reference's blocks holds quality (tolerance {tolerance}) "
                        f"on the {calib_images} calibration images")
        else:
            pool = sorted((c for c in candidates if c.block_fraction <= budget + 1e-9),
                          key=lambda c: (c.fid, c.block_fraction))
            none_why = f"no candidate runs within the budget {budget} of the reference's blocks"
        tries: list[Confirmation] = []
        compared: dict[str, Any] = {}
        chosen, vs_frontier, why = None, None, none_why if not pool else ""
        if pool:
            # 3. Held-out seeds: the reference, then the pool's candidates in order until one is confirmed.
            bar.total += 1 + min(len(pool), max_confirmations) + 1
            sampler(holdout, "reference", ref_solver, reference_steps, None)
            hold_refs = holdout.fids("reference")
            for c in pool[:max_confirmations]:
                sampler(holdout, c.name, c.solver, c.steps, c.exit_config)
                d = holdout.difference(c.name, "reference")
                fraction = holdout.fraction(c.name)
                holds = confirms_quality(d, hold_refs, tol)
                within = None if budget is None else fraction <= budget + 1e-9
                by_net = {net: {"fid": holdout.paired[net].point[c.name], "dfid": d[net],
                                "holds": confirms_quality({net: d[net]}, {net: hold_refs[net]}, tol)} for net in nets}
                tries.append(Confirmation(c.name, fraction, holdout.fid(c.name), d[holdout.primary], holds, within,
                                          holds if budget is None else bool(within), by_net,
                                          holdout.fidelity.get(c.name)))
                if tries[-1].confirmed:
                    chosen = c
                    break
            if chosen is None:
                why = (f"the {len(tries)} best calibration candidates failed on the {holdout_images} held-out images "
                       f"({'quality' if budget is None else 'budget'}): {', '.join(t.name for t in tries)}")
            else:
                vs_frontier = _versus_frontier(chosen, candidates, holdout, sampler)
                for name, point in baselines.items():  # measured on the same held-out images
                    row = f"baseline:{name}"
                    sampler(holdout, row, solver_of(point.scheduler), point.num_inference_steps, point.exit_config)
                    d, vs = holdout.difference(row, "reference"), holdout.difference(chosen.name, row)
                    compared[name] = {"operating_point": point.to_dict(), "block_fraction": holdout.fraction(row),
                                      "dfid": d[holdout.primary], "dfid_chosen_minus_baseline": vs[holdout.primary],
                                      "by_net": {net: {"dfid": d[net], "dfid_chosen_minus_baseline": vs[net]}
                                                 for net in nets},
                                      "fidelity": holdout.fidelity.get(row)}
                why = (f"{chosen.name}: the cheapest candidate holding quality (tolerance {tolerance})"
                       if budget is None else f"{chosen.name}: the lowest calibration FID within the budget {budget}")
                why += f", confirmed on {holdout_images} held-out images"
        bar.total = bar.n
        bar.refresh()
    finally:
        target.pipe.scheduler = original
        bar.close()
    return OperatingPointSearch(
        goal={"tolerance": tolerance} if budget is None else {"budget": budget},
        reference={"solver": ref_solver, "scheduler": classes[ref_solver], "steps": reference_steps,
                   "fid": ref_fid, "holdout_fid": holdout.paired[holdout.primary].point.get("reference"),
                   "fids": ref_fids, "holdout_fids": holdout.fids("reference") if "reference" in holdout.block_evals else None},
        candidates=candidates, tries=tries, chosen=None if chosen is None else chosen.name,
        confirmed=chosen is not None, why=why, vs_frontier=vs_frontier, baselines=compared, guidance_scale=guidance,
        quality_tolerance=tol,
        decision={"feature_nets": list(nets), "primary": calib.primary, "screened": len(candidates),
                  "screening": {"confidence": confidence, "rule": "holds_quality under every feature network"},
                  "confirmation": {"confidence": confirm_confidence, "tries_allowed": max_confirmations,
                                   "rule": "interval high <= tolerance x reference FID under every feature network"
                                   if budget is None else "held-out block fraction within the budget"}},
        settings={"calib_images": calib_images, "calib_seed": calib_seed, "holdout_images": holdout_images,
                  "holdout_seed": holdout_seed, "confidence": confidence, "bootstrap": bootstrap,
                  "max_confirmations": max_confirmations, "conditioning": target.conditioning.to_dict()})


def _feature_nets(feature_net: Any, real_features: Any, features: Any) -> dict[str, tuple[Any, Any]]:
    """The search's feature networks, name -> (net, real features), from either argument form."""
    if features is None:
        if feature_net is None or real_features is None:
            raise ValueError("give feature_net= and real_features= (one feature network), or features= (name -> "
                             "(feature_net, real_features), several); got neither")
        return {"features": (feature_net, real_features)}
    if feature_net is not None or real_features is not None:
        raise ValueError("give either features= or feature_net= with real_features=, not both")
    if not isinstance(features, dict) or not features:
        raise ValueError(f"features must be a non-empty dict name -> (feature_net, real_features), got {features!r}")
    for name, value in features.items():
        if not isinstance(name, str) or not isinstance(value, tuple) or len(value) != 2 or not callable(value[0]):
            raise ValueError(f"features must map names to (feature_net, real_features) pairs; got {name!r}: "
                             f"{type(value).__name__}")
    return dict(features)


def _versus_frontier(chosen: Candidate, candidates: list[Candidate], holdout: Phase,
                     sampler: Sampler) -> dict[str, Any]:
    """The chosen point against the best (lowest calibration FID) full-depth point that costs no more, on the
    held-out seeds: does the exit config beat fewer steps there (under every feature network)?"""
    pool = [c for c in candidates if c.exit_config is None and c.name != chosen.name
            and c.block_fraction <= chosen.block_fraction + 1e-9]
    if not pool:
        return {"frontier": None, "why": "no other full-depth candidate costs as little as the chosen point"}
    frontier = min(pool, key=lambda c: c.fid)
    sampler(holdout, frontier.name, frontier.solver, frontier.steps, None)
    d = holdout.difference(chosen.name, frontier.name)
    return {"frontier": frontier.name, "frontier_block_fraction": frontier.block_fraction,
            "holdout_frontier_fid": holdout.fid(frontier.name), "dfid_chosen_minus_frontier": d[holdout.primary],
            "by_net": {net: {"dfid_chosen_minus_frontier": x} for net, x in d.items()},
            "chosen_beats_frontier": all(x["high"] < 0 for x in d.values())}


def store_operating_point(pipe: Any, search: OperatingPointSearch) -> None:
    """Make the search's operating point the default of `pipe` (a pipeline of ours): its scheduler becomes the
    point's solver (built from the pipeline's own scheduler config) and `save_pretrained` writes both."""
    if not kind_of(pipe).ours:
        raise ValueError(f"only pipelines of ours store an operating point; got {type(pipe).__name__}")
    point = search.operating_point
    solver = search.point_solver
    if solver != OWN_SCHEDULER:
        pipe.scheduler = make_schedulers(pipe.scheduler)[solver]  # the pipeline's config follows (diffusers)
    pipe.set_operating_point(point)

