"""Wall-clock of operating points: the reference, a searched point and the pipeline's current default, one call each.

`time_operating_points` times one pipeline call on `batch` images per point, interleaved in shuffled order after a
warm-up, with hooks put on outside the timed region (`MethodSampler.timed`, as the bench does); the speedup of a
point is the median over rounds of reference time / its time. The operating-point search ranks candidates by block
evaluations, which are exact; this says what they buy in wall-clock on the machine at hand.
"""

from __future__ import annotations

from typing import Any

import torch

from ..operating_point import OperatingPoint
from ..pipelines.conditioning import Conditioning
from .method import Method
from .runner import MethodSampler
from .solvers import SEARCH_SOLVERS, make_schedulers, scheduler_of_point, solver_of
from .timing import load_average, speedups


def time_operating_points(pipe: Any, points: dict[str, OperatingPoint], reference_steps: int = 25, batch: int = 64,
                          repeats: int = 5, warmup: int = 1, reference_solver: str = "ddim",
                          conditioning: Conditioning | None = None, heads: Any = None) -> dict[str, Any]:
    """Speedups of `points` (name -> `OperatingPoint`, at its default steps, guidance and exit config, its scheduler
    rebuilt from the pipeline's own config and the point's `scheduler_options`) against the stock model at
    `reference_steps` steps of `reference_solver` (a `SEARCH_SOLVERS` name built from the pipeline's scheduler, or
    "own": the pipeline's scheduler), at `batch` images per call. `conditioning`: what image i is conditioned on
    (None: every class of a pipeline of ours); `heads`: a stock pipeline's `UncertaintyHeads`, if a point needs
    them."""
    if reference_solver != "own" and reference_solver not in SEARCH_SOLVERS:
        raise ValueError(f"reference_solver must be 'own' or one of {sorted(SEARCH_SOLVERS)}, got "
                         f"{reference_solver!r}")
    if not points:
        raise ValueError("give at least one operating point to time")
    guidance = {point.guidance_scale for point in points.values()}
    if len(guidance) != 1:
        raise ValueError(f"the points must share their guidance scale to be timed together, got {sorted(guidance)}")
    schedulers = {"own": pipe.scheduler} if reference_solver == "own" else \
        make_schedulers(pipe.scheduler, [reference_solver])
    schedulers.update({f"point:{name}": scheduler_of_point(point, pipe.scheduler) for name, point in points.items()})
    methods = [Method("reference", "reference", reference_solver, reference_steps)]
    methods += [Method(name, "point", f"point:{name}", point.num_inference_steps, point.exit_config)
                for name, point in points.items()]
    if conditioning is None:
        if not hasattr(pipe, "num_classes"):
            raise ValueError(f"{type(pipe).__name__} is not a pipeline of ours: give the conditioning its images are "
                             f"timed with")
        conditioning = Conditioning("classes", class_ids=list(range(pipe.num_classes)))
    load_before = load_average()
    sampler = MethodSampler(pipe, conditioning, guidance.pop(), schedulers, batch, heads=heads)
    times = sampler.timed(methods, batch, repeats, warmup)
    out: dict[str, Any] = {"batch": batch, "repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(),
                           "load_average_before": load_before,
                           "load_average_after": load_average(), "points": {}}
    summary = speedups(times, "reference")
    for method in methods:
        point = points.get(method.name)  # the reference is not a point
        solver = method.solver if point is None else solver_of(point.scheduler, SEARCH_SOLVERS) or point.scheduler
        out["points"][method.name] = {"solver": solver, "steps": method.steps,
                                      "exit_config": None if method.exit_config is None else method.exit_config.to_dict(),
                                      "median_s": summary[method.name]["median_s"],
                                      "speedup": summary[method.name]["speedup"], "seconds": times[method.name]}
    return out
