"""What `search_operating_point` refuses before it samples anything: the goal, the seeds, the target, the feature
networks and the solvers. Every refusal is a `ValueError` naming what was received and what is allowed."""

from __future__ import annotations

import math
from typing import Any

from .._validation import check_int, check_number
from ..adapters import get_adapter
from ..eval.frontier import QUALITY_TOLERANCE
from ..eval.pipeline_sampling import _SEED_STRIDE
from ..eval.solvers import FLOW_SOLVERS, noise_schedule, solver_spec, solvers_for
from ..pipelines.stock import kind_of
from .search_space import SearchSpace

#: Noise seeds of the benchmark's evaluation sets: a search never samples their noise.
BENCH_SEEDS = (0, 1)
#: The solver name of the pipeline's own scheduler (`SearchSpace(solvers=None)`).
OWN_SCHEDULER = "own"
#: PSNR of an image identical to its reference (`psnr_db` caps there): a higher goal can never hold.
MAX_PSNR_DB = 100.0


def check_goal(tolerance: Any, budget: Any, min_psnr: Any) -> tuple[float | None, float | None, float | None]:
    """Exactly one goal, each in its range."""
    if sum(g is not None for g in (tolerance, budget, min_psnr)) != 1:
        raise ValueError(f"give exactly one goal: tolerance= (relative FID, e.g. {QUALITY_TOLERANCE}, unchanged "
                         f"quality), budget= (block fraction in (0, 1]) or min_psnr= (dB against the reference image "
                         f"from the same noise); got tolerance={tolerance!r}, budget={budget!r}, min_psnr={min_psnr!r}")
    if tolerance is not None:
        tolerance = check_number(tolerance, "tolerance", 0.0)
        if math.isinf(tolerance):
            raise ValueError(f"tolerance must be finite, got {tolerance!r}")
    if budget is not None:
        budget = check_number(budget, "budget", 0.0, 1.0, low_open=True)
    if min_psnr is not None:
        min_psnr = check_number(min_psnr, f"min_psnr (dB; identical images count as {MAX_PSNR_DB:g})", 0.0,
                                MAX_PSNR_DB, low_open=True)
    return tolerance, budget, min_psnr


def check_seeds(calib_seed: int, calib_images: int, holdout_seed: int, holdout_images: int) -> None:
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


def check_target(target: Any, space: SearchSpace) -> None:
    """Refuse exit configs this pipeline cannot run."""
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


def solver_specs(scheduler: Any, named: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """(class, options) of every named solver on the pipeline's scheduler; the ones its noise schedule cannot
    run are refused together (DDIM on flow matching: its update needs alphas_cumprod)."""
    kind, own = noise_schedule(scheduler), type(scheduler).__name__
    offered = solvers_for(scheduler)
    bad = [s for s in named if s not in offered]
    if bad and kind == "flow":
        raise ValueError(f"{bad} need a DDPM-type noise schedule, which {own} (flow matching) does not have; on it "
                         f"the search offers {sorted(FLOW_SOLVERS)} (their flow-matching versions) or "
                         f"{OWN_SCHEDULER!r} (solvers=None, reference_solver={OWN_SCHEDULER!r}: its own scheduler)")
    if bad:
        raise ValueError(f"{bad} need a DDPM-type noise schedule or flow matching, which {own} has neither: search "
                         f"with solvers=None and reference_solver={OWN_SCHEDULER!r} (the pipeline's own scheduler)")
    return {s: solver_spec(s, scheduler) for s in named}  # refuses flow settings a solver cannot follow


def default_reference_solver(scheduler: Any, solvers: tuple[str, ...] | None) -> str:
    """The reference when none is named: DDIM where it runs and the search names solvers; else the pipeline's own
    scheduler (on flow matching, the scheduler the model was made with)."""
    return "ddim" if solvers and noise_schedule(scheduler) == "ddpm" else OWN_SCHEDULER


def feature_nets(feature_net: Any, real_features: Any, features: Any, min_psnr: float | None) -> dict[str, Any]:
    """The search's feature networks, name -> (net, real features), from either argument form; none for a PSNR
    goal, which compares images with the reference's from the same noise."""
    given = [n for n, v in (("feature_net", feature_net), ("real_features", real_features), ("features", features))
             if v is not None]
    if min_psnr is not None:
        if given:
            raise ValueError(f"min_psnr compares each image with the reference's image from the same noise: it takes "
                             f"no feature networks or real images, got {given}")
        return {}
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
