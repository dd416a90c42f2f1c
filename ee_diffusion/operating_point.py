"""Operating points: what a pipeline runs when the caller does not say - steps, guidance and exit config together.

A user's real alternative to early exit is running fewer steps, so an exit config alone is not a recommendation:
what the benchmark measures and a pipeline folder ships is an *operating point*, (scheduler, steps, guidance,
exit config). `OperatingPoint` stores the recommended one and, for every step count the benchmark measured with
that scheduler, the exit config to use when a caller picks the steps (None where no exit config beat the
fewer-steps frontier at that count). `resolve` turns a call's arguments into what runs.

```py
>>> from ee_diffusion import EarlyExitConfig
>>> from ee_diffusion.schedules import StaticDepth
>>> point = OperatingPoint(scheduler="DPMSolverMultistepScheduler", num_inference_steps=8, guidance_scale=1.0,
...                        exit_config=EarlyExitConfig(StaticDepth(7)),
...                        exit_configs_by_steps={8: EarlyExitConfig(StaticDepth(7)), 12: None})
>>> run = point.resolve(None, None, "DPMSolverMultistepScheduler")
>>> run.num_inference_steps, run.exit_config.policy.depth, run.source
(8, 7, 'default operating point')
>>> point.resolve(11, None, "DPMSolverMultistepScheduler").exit_config.policy is None  # nearest measured: 12
True
>>> OperatingPoint.from_dict(point.to_dict()) == point
True

```
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._validation import check_int
from .config import EarlyExitConfig


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class called `name`; `ValueError` for a name diffusers does not have."""
    import diffusers

    cls = getattr(diffusers, name, None) if isinstance(name, str) and name else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"{name!r} is not a diffusers scheduler class (e.g. 'DPMSolverMultistepScheduler', "
                         f"'DDIMScheduler', 'FlowMatchEulerDiscreteScheduler')")
    return cls


def noise_schedule(scheduler: Any) -> str:
    """"flow" (flow matching: a `FlowMatch*` scheduler, or one already in flow mode), "ddpm" (`alphas_cumprod`),
    or "other" (e.g. EDM or consistency schedulers: only their own scheduler is searched)."""
    if type(scheduler).__name__.startswith("FlowMatch") or scheduler.config.get("use_flow_sigmas"):
        return "flow"  # checked first: a flow-mode DPM-Solver++ still carries (unused) alphas_cumprod
    return "ddpm" if hasattr(scheduler, "alphas_cumprod") else "other"


def build_scheduler(class_name: str, options: Mapping[str, Any], scheduler: Any) -> Any:
    """A new `class_name` scheduler from `scheduler`'s config with `options` on top (`scheduler` is untouched).

    A flow-matching config is reduced to the fields the new class takes (its own ones, such as `shift`, would be
    reported as ignored), and options that are not init arguments (the dynamic-shift fields) are registered in the
    new config, where the pipeline reads them."""
    cls = scheduler_class(class_name)
    if noise_schedule(scheduler) != "flow":
        return cls.from_config(scheduler.config, **options)
    params = inspect.signature(cls.__init__).parameters
    config = {k: v for k, v in scheduler.config.items() if k in params}
    out = cls.from_config(config, **{k: v for k, v in options.items() if k in params})
    extra = {k: v for k, v in options.items() if k not in params}
    if extra:
        out.register_to_config(**extra)
    return out


def scheduler_of_point(point: Any, scheduler: Any) -> Any:
    """The scheduler an `OperatingPoint` was measured with, rebuilt from the model's own `scheduler` and the point's
    recorded `scheduler_options` (a stock folder's `operating_point.json`: `pipe.scheduler = scheduler_of_point(
    point, pipe.scheduler)`)."""
    return build_scheduler(point.scheduler, point.scheduler_options, scheduler)


@dataclass
class ResolvedCall:
    """What one pipeline call runs, and why (`source`): the output reports it as `operating_point`."""

    num_inference_steps: int
    guidance_scale: float
    exit_config: EarlyExitConfig
    source: str

    def as_output(self) -> dict[str, Any]:
        """The pipeline output's `operating_point` (the exit config as the object that ran: custom policies
        need not serialise)."""
        return {"num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                "exit_config": self.exit_config, "source": self.source}


@dataclass
class OperatingPoint:
    """A pipeline's recommended (scheduler, steps, guidance, exit config), measured by `ee-diffusion bench`.

    Args:
        scheduler: class name of the scheduler the point was measured with; the point applies only to calls
            with that scheduler (another solver at the same steps is another operating point).
        num_inference_steps: steps of a call that gives none.
        guidance_scale: guidance of a call that gives none.
        exit_config: exit config at `num_inference_steps` (None: full depth).
        exit_configs_by_steps: exit config per measured step count (None: none beat the frontier there); a call
            that gives only its steps uses the nearest measured count's (ties: the larger count).
        reference_steps: the conventional step count, used when the point does not apply (another scheduler).
        measured_in: where the numbers behind the point are (a report path and its command).
        scheduler_options: the options `scheduler` was built with over the model's own scheduler config (e.g. a
            flow-matching DPM-Solver++'s `use_flow_sigmas`, `flow_shift`), so that a folder can rebuild it
            (`ee_diffusion.eval.solvers.scheduler_of_point`); written only when not empty.
    """

    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    exit_config: EarlyExitConfig | None = None
    exit_configs_by_steps: dict[int, EarlyExitConfig | None] = field(default_factory=dict)
    reference_steps: int = 25
    measured_in: str = ""
    scheduler_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        scheduler_class(self.scheduler)  # a point that names no real scheduler would never apply
        check_int(self.num_inference_steps, "num_inference_steps", 1, "steps of the operating point")
        check_int(self.reference_steps, "reference_steps", 1, "the conventional step count")
        if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)) \
                or not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale!r}")
        self.guidance_scale = float(self.guidance_scale)
        for value in [self.exit_config, *self.exit_configs_by_steps.values()]:
            if value is not None and not isinstance(value, EarlyExitConfig):
                raise TypeError(f"exit configs must be EarlyExitConfig or None, got {type(value).__name__}")
        for steps in self.exit_configs_by_steps:
            check_int(steps, "exit_configs_by_steps key", 1, "a measured step count")
        if not isinstance(self.scheduler_options, dict) or not all(isinstance(k, str) for k in self.scheduler_options):
            raise ValueError(f"scheduler_options must be a dict of scheduler config fields, got "
                             f"{self.scheduler_options!r}")
        self.scheduler_options = dict(self.scheduler_options)  # a copy: the caller's dict stays theirs

    def resolve(self, num_inference_steps: int | None, guidance_scale: float | None,
                scheduler: str) -> ResolvedCall:
        """What a call with these arguments (None: not given) runs with the scheduler class `scheduler`.

        An explicit exit config is the caller's business (the pipeline uses it as given); this decides only the
        defaults."""
        guidance = self.guidance_scale if guidance_scale is None else guidance_scale
        if scheduler != self.scheduler:
            steps = self.reference_steps if num_inference_steps is None else num_inference_steps
            return ResolvedCall(steps, guidance, EarlyExitConfig(),
                                f"no operating point: it was measured with {self.scheduler}, this call uses "
                                f"{scheduler} (full depth)")
        if num_inference_steps is None:
            config = self.exit_config or EarlyExitConfig()
            return ResolvedCall(self.num_inference_steps, guidance, config, "default operating point")
        if not self.exit_configs_by_steps:
            return ResolvedCall(num_inference_steps, guidance, EarlyExitConfig(),
                                "no measured exit config for chosen steps (full depth)")
        nearest = min(self.exit_configs_by_steps, key=lambda k: (abs(k - num_inference_steps), -k))
        config = self.exit_configs_by_steps[nearest]
        what = "full depth: no exit config beat fewer steps there" if config is None else "its exit config"
        return ResolvedCall(num_inference_steps, guidance, config or EarlyExitConfig(),
                            f"chosen steps; nearest measured step count {nearest}: {what}")

    def to_dict(self) -> dict[str, Any]:
        out = {
            "scheduler": self.scheduler, "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "exit_config": None if self.exit_config is None else self.exit_config.to_dict(),
            "exit_configs_by_steps": {str(k): (None if v is None else v.to_dict())
                                      for k, v in sorted(self.exit_configs_by_steps.items())},
            "reference_steps": self.reference_steps, "measured_in": self.measured_in,
        }
        if self.scheduler_options:  # left out when empty: points written before it existed stay byte-identical
            out["scheduler_options"] = dict(self.scheduler_options)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        if not isinstance(data, dict):
            raise TypeError(f"an operating point must be a dict, got {type(data).__name__}")
        known = {"scheduler", "num_inference_steps", "guidance_scale", "exit_config", "exit_configs_by_steps",
                 "reference_steps", "measured_in", "scheduler_options"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown operating point fields {unknown}; known: {sorted(known)}")
        by_steps = {}
        for key, value in (data.get("exit_configs_by_steps") or {}).items():
            try:
                steps = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"exit_configs_by_steps keys must be step counts, got {key!r}") from None
            by_steps[steps] = None if value is None else EarlyExitConfig.from_dict(value)
        config = data.get("exit_config")
        return cls(
            scheduler=data.get("scheduler"), num_inference_steps=data.get("num_inference_steps"),
            guidance_scale=data.get("guidance_scale"),
            exit_config=None if config is None else EarlyExitConfig.from_dict(config),
            exit_configs_by_steps=by_steps, reference_steps=data.get("reference_steps", 25),
            measured_in=data.get("measured_in", ""), scheduler_options=data.get("scheduler_options") or {},
        )
