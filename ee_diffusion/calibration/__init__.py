"""Calibration (a tool: it samples pipelines): choose an exit policy for a compute budget or a quality tolerance.

- `calibrate_schedule(pipe, budget=0.5)` or `tolerance=` / `min_psnr=`: a static `TimestepSchedule`;
- `calibrate_thresholds(pipe, budget=0.5)`: per-timestep DeeDiff thresholds, simulated through the policy itself on
  recorded certainties, then checked by a real run;
- `distil_schedule(exit_stats)`: the exits of a dynamic policy as a static schedule;
- `calibrate_tail_cache(pipe, min_psnr=30)`: the residual-change threshold (and forecast order) of the training-free
  `CachedTailResidual`, for a fidelity goal or a budget, measured trial by trial;
- `calibrate_block_forecast(pipe, min_psnr=30)`: the training-free `BlockForecast` (interval, order, windows or a
  searched placement) at the pipeline's scheduler and step count, every grid point sampled;
- `search_operating_point(pipe, SearchSpace(...), tolerance=0.1 or budget=0.5 or min_psnr=30, ...)`: solver, steps
  and exit config together, by the benchmark's paired dFID protocol (or PSNR against the reference image from the
  same noise) on calibration seeds, confirmed on held-out seeds; `store_operating_point` makes the result a
  pipeline's default.

Every calibration takes a pipeline of ours or a `CalibrationTarget`: any supported stock pipeline with the class ids
or prompts its calibration images use (`as_target(pipe, conditioning, heads=...)`). Goals in PSNR are mean
per-image PSNR against the full model's image from the same noise. `save_calibration(result, path)` writes JSON
(`{"exit_config": ..., "calibration": ...}`); `EarlyExitConfig.from_file(path)` reads the exit config back, and
`ee_diffusion.enable(pipe, path)` runs it with the scheduler, steps and guidance it was found at. The calibration
seeds are disjoint from any evaluation's.
"""

from .forecast_grid import calibrate_block_forecast
from .common import (
    CalibrationResult,
    CalibrationSet,
    CalibrationTarget,
    as_target,
    bisect_increasing,
    save_calibration,
)
from .distil import distil_schedule
from .operating_point_result import Candidate, Confirmation, OperatingPointSearch
from .operating_point_search import search_operating_point, store_operating_point
from .run import run_calibration
from .schedule import (
    allocate_depths,
    calibrate_schedule,
    measure_depth_deviation,
    schedule_from_deviation,
    step_buckets,
)
from .search_space import SearchSpace
from .tail_threshold import calibrate_tail_cache
from .thresholds import calibrate_thresholds, record_certainties, simulate_depths, thresholds_for_fractions

__all__ = [
    "CalibrationResult",
    "CalibrationSet",
    "CalibrationTarget",
    "Candidate",
    "Confirmation",
    "OperatingPointSearch",
    "SearchSpace",
    "allocate_depths",
    "as_target",
    "bisect_increasing",
    "calibrate_block_forecast",
    "calibrate_schedule",
    "calibrate_tail_cache",
    "calibrate_thresholds",
    "distil_schedule",
    "measure_depth_deviation",
    "record_certainties",
    "run_calibration",
    "save_calibration",
    "schedule_from_deviation",
    "search_operating_point",
    "simulate_depths",
    "step_buckets",
    "store_operating_point",
    "thresholds_for_fractions",
]
