"""The solvers the benchmark and the operating-point search compare, and the ASE schedules scaled to a model.

A solver is a diffusers scheduler class and the options it takes over the model's own scheduler config
(`solver_spec`): on a DDPM-type noise schedule DDIM and DPM-Solver++ (`SOLVERS`), and UniPC for the search
(`SEARCH_SOLVERS`); on a flow-matching one DPM-Solver++ and UniPC in their flow modes (`FLOW_SOLVERS`).

```py
>>> from diffusers import FlowMatchEulerDiscreteScheduler
>>> flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
>>> name, options = solver_spec("unipc", flow)
>>> name, options["use_flow_sigmas"], options["flow_shift"]
('UniPCMultistepScheduler', True, 3.0)
>>> type(build_scheduler(name, options, flow)).__name__
'UniPCMultistepScheduler'
>>> solver_spec("ddim", flow)
Traceback (most recent call last):
...
ValueError: solver 'ddim' needs a DDPM-type noise schedule (alphas_cumprod), which FlowMatchEulerDiscreteScheduler (flow matching) does not have; on it: ['dpmpp', 'unipc'] (their flow-matching versions)

```
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..operating_point import build_scheduler, noise_schedule, scheduler_of_point
from ..schedules import TimestepSchedule

#: Solver name -> (diffusers scheduler class, options over the model's own scheduler config): the benchmark's
#: solvers on a DDPM-type noise schedule (`alphas_cumprod`); its fewer-steps frontier runs each of them.
SOLVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpmpp": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}
#: What the operating-point search offers on a DDPM-type schedule: the benchmark's solvers and UniPC (multistep,
#: order 2, diffusers' data-prediction "bh2" variant, built for eps- and v-prediction models). The benchmark's
#: frontier stays DDIM and DPM-Solver++: adding a solver there would change every report.
SEARCH_SOLVERS: dict[str, tuple[str, dict[str, Any]]] = {
    **SOLVERS, "unipc": ("UniPCMultistepScheduler", {"solver_order": 2}),
}
#: Their flow-matching versions (velocity prediction x0 = x - sigma v on the model's shifted sigmas in [0, 1]);
#: `solver_spec` adds the model's `flow_shift` and dynamic-shift settings. DDIM has no flow mode.
FLOW_SOLVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpmpp": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                              "use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "use_flow_sigmas": True,
                                          "prediction_type": "flow_prediction"}),
}
#: The config fields an SD3-class pipeline reads from its scheduler to compute `mu` (dynamic shifting). They are
#: not init arguments of DPM-Solver++ or UniPC, so they are carried into the new scheduler's config by hand:
#: without them the pipeline falls back to its own defaults (max_shift 1.16, not the scheduler's 1.15).
DYNAMIC_SHIFT_KEYS = ("base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift")


def solvers_for(scheduler: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """The named solvers that can run on `scheduler`'s noise schedule (without the flow options `solver_spec` adds)."""
    return {"flow": FLOW_SOLVERS, "ddpm": SEARCH_SOLVERS}.get(noise_schedule(scheduler), {})


def solver_spec(name: str, scheduler: Any) -> tuple[str, dict[str, Any]]:
    """(scheduler class name, options) of solver `name` on `scheduler`'s noise schedule; a `ValueError` (with why)
    for a solver that cannot run there, before anything is sampled."""
    kind, own = noise_schedule(scheduler), type(scheduler).__name__
    offered = solvers_for(scheduler)
    if name not in offered:
        if kind == "flow" and name in SEARCH_SOLVERS:
            raise ValueError(f"solver {name!r} needs a DDPM-type noise schedule (alphas_cumprod), which {own} (flow "
                             f"matching) does not have; on it: {sorted(FLOW_SOLVERS)} (their flow-matching versions)")
        if kind == "other":
            raise ValueError(f"{own} has neither a DDPM-type noise schedule (alphas_cumprod) nor flow-matching sigmas: "
                             f"solver {name!r} cannot be built from it; use the pipeline's own scheduler")
        raise ValueError(f"unknown solver {name!r}; on {own}: {sorted(offered)}")
    class_name, options = offered[name]
    if kind == "ddpm":
        return class_name, dict(options)
    config = scheduler.config
    # Sigma placements DPM-Solver++ / UniPC would compute from DDPM betas, not from the flow schedule.
    placed = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas")
              if config.get(k)]
    if placed:
        raise ValueError(f"{own} sets {placed}; {class_name} would place those sigmas on DDPM betas, not on the flow "
                         f"schedule: search the pipeline's own scheduler")
    dynamic = bool(config.get("use_dynamic_shifting"))
    if name == "dpmpp" and config.get("shift_terminal"):
        raise ValueError(f"{own} stretches its sigmas to shift_terminal={config['shift_terminal']!r}, which "
                         f"DPMSolverMultistepScheduler cannot: use 'unipc' or the pipeline's own scheduler")
    if name == "dpmpp" and dynamic and config.get("time_shift_type", "exponential") != "exponential":
        raise ValueError(f"{own} shifts its sigmas dynamically with time_shift_type="
                         f"{config.get('time_shift_type')!r}; DPMSolverMultistepScheduler only takes 'exponential' "
                         f"(it sets flow_shift = exp(mu)): use 'unipc' or the pipeline's own scheduler")
    # The static shift: a FlowMatch scheduler's `shift` (which `set_shift` may have changed), else a flow-mode
    # scheduler's `flow_shift`.
    shift = getattr(scheduler, "shift", None) if own.startswith("FlowMatch") else config.get("flow_shift")
    options = {**options, "flow_shift": float(1.0 if shift is None else shift)}
    if dynamic:
        options.update({k: config[k] for k in DYNAMIC_SHIFT_KEYS if config.get(k) is not None})
    return class_name, options


def solver_of(scheduler_class: str, solvers: Mapping[str, tuple[str, dict[str, Any]]] = SOLVERS) -> str | None:
    """The solver name of a diffusers scheduler class name among `solvers` (default: the benchmark's; None: not one
    of them). The flow-matching versions share their class names.

    ```py
    >>> solver_of("DPMSolverMultistepScheduler"), solver_of("HeunDiscreteScheduler")
    ('dpmpp', None)
    >>> solver_of("UniPCMultistepScheduler"), solver_of("UniPCMultistepScheduler", SEARCH_SOLVERS)
    (None, 'unipc')

    ```
    """
    return next((name for name, (class_name, _) in solvers.items() if class_name == scheduler_class), None)


def make_schedulers(scheduler: Any, names: Iterable[str] | None = None) -> dict[str, Any]:
    """One scheduler per solver, from the model's own scheduler config (betas, prediction type, spacing, shift).

    `names` None: the benchmark's `SOLVERS` (on a flow-matching scheduler, those with a flow version: "dpmpp");
    else those solvers (`solver_spec` refuses one that cannot run on this schedule)."""
    if names is None:
        if noise_schedule(scheduler) != "flow":
            return {name: build_scheduler(cls, options, scheduler) for name, (cls, options) in SOLVERS.items()}
        names = [name for name in SOLVERS if name in FLOW_SOLVERS]
    return {name: build_scheduler(*solver_spec(name, scheduler), scheduler) for name in names}


def solver_timesteps(scheduler: Any, steps: int) -> list[float]:
    """The timesteps a pipeline calls its model at when `scheduler` runs `steps` steps (a copy is set; the given
    scheduler is untouched). Raises `ValueError` for a scheduler whose timesteps need the pipeline's inputs
    (flow matching with dynamic shifting takes `mu` from the image size)."""
    probe = type(scheduler).from_config(scheduler.config)
    try:
        if scheduler.config.get("use_dynamic_shifting"):
            # DPM-Solver++ would place them at its static flow_shift without complaint; the pipeline passes mu.
            raise ValueError("dynamic shifting takes mu from the image size")
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
