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


def solver_timesteps(scheduler: Any, steps: int) -> list[float]:
    """The timesteps a pipeline calls its model at when `scheduler` runs `steps` steps (a copy is set; the given
    scheduler is untouched). Raises `ValueError` for a scheduler whose timesteps need the pipeline's inputs
    (flow matching with dynamic shifting takes `mu` from the image size)."""
    probe = type(scheduler).from_config(scheduler.config)
    try:
        probe.set_timesteps(steps)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{type(scheduler).__name__} cannot place {steps} steps without the pipeline's inputs "
                         f"({error}); give windows in timesteps (BlockForecast full_above_t / full_below_t)") from None
    return [float(t) for t in probe.timesteps]


def ase_schedules(n: int) -> dict[str, TimestepSchedule]:
    """The released DiT-XL/2 ASE schedule (28, 24, 20, 16, 12 blocks over five timestep buckets) scaled to n
    blocks, and a more aggressive one."""
    released = [max(1, min(n, round(d * n / 28))) for d in (28, 24, 20, 16, 12)]
    aggressive = [n, max(1, round(0.75 * n)), max(1, round(0.5 * n)), max(1, round(0.375 * n)), max(1, round(0.25 * n))]
    bounds = [200, 400, 600, 800]
    return {"released": TimestepSchedule(bounds, released), "aggressive": TimestepSchedule(bounds, aggressive)}
