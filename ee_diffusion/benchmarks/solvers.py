"""The solvers the benchmark and the operating-point search compare, and the ASE schedules scaled to a model.

Kept apart from `grid.py` (which imports the calibrations) so that a calibration can use them without an import
cycle.
"""

from __future__ import annotations

from typing import Any

from ..schedules import TimestepSchedule

#: Solver name -> (diffusers scheduler class, options over the model's own scheduler config).
SOLVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpmpp": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}


def solver_of(scheduler_class: str) -> str | None:
    """The solver name of a diffusers scheduler class name (None: not one of `SOLVERS`).

    ```py
    >>> solver_of("DPMSolverMultistepScheduler"), solver_of("HeunDiscreteScheduler")
    ('dpmpp', None)

    ```
    """
    return next((name for name, (class_name, _) in SOLVERS.items() if class_name == scheduler_class), None)


def make_schedulers(scheduler: Any) -> dict[str, Any]:
    """One scheduler per solver, from the model's own scheduler config (betas, prediction type, spacing)."""
    import diffusers

    out = {}
    for name, (class_name, options) in SOLVERS.items():
        out[name] = getattr(diffusers, class_name).from_config(scheduler.config, **options)
    return out


def ase_schedules(n: int) -> dict[str, TimestepSchedule]:
    """The released DiT-XL/2 ASE schedule (28, 24, 20, 16, 12 blocks over five timestep buckets) scaled to n
    blocks, and a more aggressive one."""
    released = [max(1, min(n, round(d * n / 28))) for d in (28, 24, 20, 16, 12)]
    aggressive = [n, max(1, round(0.75 * n)), max(1, round(0.5 * n)), max(1, round(0.375 * n)), max(1, round(0.25 * n))]
    bounds = [200, 400, 600, 800]
    return {"released": TimestepSchedule(bounds, released), "aggressive": TimestepSchedule(bounds, aggressive)}
