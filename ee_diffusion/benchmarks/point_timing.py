"""Wall-clock of operating points: the reference, a searched point and the pipeline's current default, one call each.

`time_operating_points` times one pipeline call on `batch` images per point, interleaved in rotating order after a
warm-up, with hooks put on outside the timed region (`MethodSampler.timed`, as the bench does); the speedup of a
point is the median over rounds of reference time / its time. The operating-point search ranks candidates by block
evaluations, which are exact; this says what they buy in wall-clock on the machine at hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..operating_point import OperatingPoint
from .bench import MethodSampler, load_average
from .grid import Method
from .solvers import SOLVERS


def _solver_of(point: OperatingPoint) -> str:
    names = {class_name: name for name, (class_name, _) in SOLVERS.items()}
    if point.scheduler not in names:
        raise ValueError(f"only operating points of {sorted(names)} can be timed here, got {point.scheduler!r}")
    return names[point.scheduler]


def time_operating_points(pipe: Any, points: dict[str, OperatingPoint], reference_steps: int = 25, batch: int = 64,
                          repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Speedups of `points` (name -> `OperatingPoint`, at its default steps, guidance and exit config) against the
    stock model at `reference_steps` DDIM steps, at `batch` images per call (a pipeline of ours)."""
    if not points:
        raise ValueError("give at least one operating point to time")
    guidance = {point.guidance_scale for point in points.values()}
    if len(guidance) != 1:
        raise ValueError(f"the points must share their guidance scale to be timed together, got {sorted(guidance)}")
    methods = [Method("reference", "reference", "ddim", reference_steps)]
    methods += [Method(name, "point", _solver_of(point), point.num_inference_steps, point.exit_config)
                for name, point in points.items()]
    load_before = load_average()
    times = MethodSampler(pipe, guidance.pop(), batch, batch).timed(methods, batch, repeats, warmup)
    out: dict[str, Any] = {"batch": batch, "repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(),
                           "load_average_before": load_before,
                           "load_average_after": load_average(), "points": {}}
    for method in methods:
        values = times[method.name]
        ratios = [r / v for v, r in zip(values, times["reference"])]
        out["points"][method.name] = {"solver": method.solver, "steps": method.steps,
                                      "exit_config": None if method.exit_config is None else method.exit_config.to_dict(),
                                      "median_s": float(np.median(values)), "speedup": float(np.median(ratios)),
                                      "seconds": values}
    return out
