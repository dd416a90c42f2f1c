"""Calibration (a tool: it samples pipelines): choose an exit policy for a compute budget or a quality tolerance.

- `calibrate_schedule(pipe, budget=0.5)` or `tolerance=`: a static `TimestepSchedule` (`schedule.py`);
- `calibrate_thresholds(pipe, budget=0.5)`: per-timestep DeeDiff thresholds, simulated through the policy
  itself on recorded certainties, then checked by a real run (`thresholds.py`);
- `distil_schedule(exit_stats)`: the exits of a dynamic policy as a static schedule (`distil.py`);
- `calibrate_tail_cache(pipe, min_psnr=30)`: the training-free residual-change threshold (and forecast order) of
  `CachedTailResidual` for a fidelity goal or a budget, measured trial by trial (`tail_threshold.py`);
- `calibrate_block_forecast(pipe, min_psnr=30)`: the training-free `BlockForecast` (interval, order, windows) for a
  fidelity goal or a budget at the pipeline's scheduler and step count, every grid point sampled (`forecast_grid.py`);
- `search_operating_point(pipe, SearchSpace(...), tolerance=0.1 or budget=0.5 or min_psnr=30, ...)`: solver, steps,
  exit policy, thresholds, forecast order and `BlockForecast` settings (placed per step count) together, by the
  benchmark's paired dFID protocol (or, without real images, PSNR against the reference image from the same noise)
  on calibration seeds, confirmed on held-out seeds; the result's `operating_point` is what a pipeline folder stores
  (`store_operating_point`) (`operating_point_search.py`; what it refuses before sampling: `search_checks.py`; its
  candidates: `search_space.py`; its image sets and scoring: `search_phases.py`, and for the PSNR goal
  `search_psnr.py`; result: `operating_point_result.py`; the `ee-diffusion calibrate --kind operating-point`
  command: `search_command.py`).

Every calibration takes a pipeline of ours or a `CalibrationTarget`: any supported stock pipeline with the
class ids or prompts its calibration images use (`as_target(pipe, conditioning, heads=...)`). Goals in PSNR
are mean per-image PSNR against the full model's image from the same noise.

`save_calibration(result, path)` writes JSON (`{"exit_config": ..., "calibration": ...}`);
`EarlyExitConfig.from_file(path)` reads its exit config back, and `ee_diffusion.enable(pipe, path)` runs it with the
scheduler, steps and guidance it was found at. All measurements use a calibration set whose seeds are disjoint from
any evaluation's.
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
