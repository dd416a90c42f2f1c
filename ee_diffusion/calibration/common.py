"""What every calibration shares: the calibration set, the result and its JSON file, sampling, PSNR, bisection."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write_text
from .._validation import check_call_options, check_int
from ..adapters import get_adapter
from ..config import EarlyExitConfig
from ..eval.pipeline_sampling import SampleRun, sample_pipeline
from ..pipelines.conditioning import Conditioning
from ..pipelines.stock import default_guidance_scale, denoiser_of, kind_of


@dataclass
class CalibrationSet:
    """The images calibration samples: `num_images` images with noise seeds `seed`, cycling through the
    target's conditions (class-balanced for class-conditional pipelines). `guidance_scale=None` keeps the
    pipeline's own default. `call_options` (height, width, num_frames) go to every pipeline call: the size a video
    pipeline is calibrated at."""

    num_images: int = 40
    seed: int = 9001
    num_inference_steps: int = 20
    guidance_scale: float | None = 4.0
    batch_size: int = 64
    num_buckets: int = 4
    call_options: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("num_images", "num_inference_steps", "batch_size", "num_buckets"):
            check_int(getattr(self, name), name, 1)
        self.call_options = check_call_options(self.call_options)


@dataclass
class CalibrationTarget:
    """What calibration samples: a pipeline (stock or ours), its conditions, and the exit modules policies use.

    `heads` (`UncertaintyHeads`) and `bridges` (`UNetExitBridges`) are for stock pipelines; ours carry their own.
    Build it with `as_target`, which also accepts a bare pipeline of ours (its classes, its heads).
    """

    pipe: Any
    conditioning: Conditioning
    heads: nn.Module | None = None
    bridges: nn.Module | None = None

    @property
    def denoiser(self) -> nn.Module:
        return denoiser_of(self.pipe)

    @property
    def num_blocks(self) -> int:
        return get_adapter(self.denoiser).num_blocks

    @property
    def exit_heads(self) -> nn.Module | None:
        """The heads certainty policies use: the pipeline's own (ours) or the ones given."""
        return getattr(self.pipe, "exit_heads", None) if kind_of(self.pipe).ours else self.heads

    def guidance(self, calib: CalibrationSet) -> float:
        """The guidance scale the calibration set runs at (the pipeline's default when `calib` leaves it open)."""
        if calib.guidance_scale is not None:
            return float(calib.guidance_scale)
        default = default_guidance_scale(self.pipe)
        return 1.0 if default is None else default


def as_target(pipe: Any, conditioning: Conditioning | None = None, heads: nn.Module | None = None,
              bridges: nn.Module | None = None) -> CalibrationTarget:
    """A `CalibrationTarget` for `pipe` (returned as is if it already is one).

    Without `conditioning`, class-conditional pipelines of ours cycle through all their classes, unconditional
    ones need none, and any other pipeline raises a `ValueError` asking for class ids or prompts.
    """
    if isinstance(pipe, CalibrationTarget):
        return pipe
    kind = kind_of(pipe)
    if conditioning is None:
        if kind.ours:
            conditioning = Conditioning("classes", class_ids=list(range(pipe.num_classes)))
        elif kind.conditioning == "none":
            conditioning = Conditioning("none")
        else:
            raise ValueError(f"{type(pipe).__name__} is conditioned on {kind.conditioning}: give the calibration "
                             f"{'class ids' if kind.conditioning == 'classes' else 'a prompt file'}")
    if kind.ours and (heads is not None or bridges is not None):
        raise ValueError(f"{type(pipe).__name__} carries its own exit heads and bridges; got extra ones")
    return CalibrationTarget(pipe, conditioning, heads, bridges)


@dataclass
class CalibrationResult:
    """The chosen exit config and what calibration measured (budget, fractions, per-bucket numbers)."""

    exit_config: EarlyExitConfig
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"exit_config": self.exit_config.to_dict(), "calibration": self.info}


def save_calibration(result: CalibrationResult, path: str | Path) -> None:
    """Write `{"exit_config": ..., "calibration": ...}` as JSON (atomically: never a half-written file)."""
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2) + "\n")


def sample_calibration_set(pipe: Any, calib: CalibrationSet, exit_config: EarlyExitConfig | None) -> SampleRun:
    """The calibration images under `exit_config` (None: the full model, hooked without a policy, so that its
    exit statistics are recorded too); `pipe` is a pipeline of ours or a `CalibrationTarget`."""
    target = as_target(pipe)
    return sample_pipeline(
        target.pipe, range(calib.num_images), target.conditioning,
        exit_config=exit_config if exit_config is not None else EarlyExitConfig(), heads=target.heads,
        bridges=target.bridges, num_inference_steps=calib.num_inference_steps,
        guidance_scale=target.guidance(calib), seed=calib.seed, batch_size=calib.batch_size,
        call_options=calib.call_options,
    )


def psnr_db(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB of (N, C, H, W) images in [0, 1] against their reference images (capped at 100 dB)."""
    mse = ((images.double() - reference.double()) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).clamp(max=100.0)


def psnr_trial(target: CalibrationTarget, calib: CalibrationSet, exit_config: EarlyExitConfig,
               reference: torch.Tensor) -> dict[str, float]:
    """The calibration set sampled under `exit_config`: its per-image PSNR against `reference` (N, C, H, W), the
    full model's images from the same noise (mean, 10th percentile, min), and its block fraction."""
    run = sample_calibration_set(target, calib, exit_config)
    psnr = psnr_db(run.images, reference)
    return {"psnr_db_mean": float(psnr.mean()), "psnr_db_p10": float(psnr.quantile(0.1)),
            "psnr_db_min": float(psnr.min()), "block_fraction": run.block_evals / (run.model_rows * target.num_blocks)}


def check_goal(min_psnr: float | None, budget: float | None, what: str = "block evaluations") -> None:
    """Exactly one goal: `min_psnr` (a number of dB) or `budget` (a fraction of `what` in (0, 1])."""
    if (min_psnr is None) == (budget is None):
        raise ValueError(f"give exactly one of min_psnr and budget, got min_psnr={min_psnr!r}, budget={budget!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1):
        raise ValueError(f"budget must be a fraction of {what} in (0, 1], got {budget!r}")
    if min_psnr is not None and (isinstance(min_psnr, bool) or not isinstance(min_psnr, (int, float))):
        raise ValueError(f"min_psnr must be a number of dB, got {min_psnr!r}")


def bisect_increasing(fn: Callable[[float], float], goal: float, low: float = 1e-4, high: float = 1 - 1e-6,
                      iterations: int = 30) -> float:
    """The smallest x in [low, high] (to bisection precision) with fn(x) >= goal, for a non-decreasing fn.

    ```py
    >>> round(bisect_increasing(lambda x: x * x, 0.25), 4)
    0.5

    ```
    """
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (mid, high) if fn(mid) < goal else (low, mid)
    return high
