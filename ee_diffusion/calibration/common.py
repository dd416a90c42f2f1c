"""What every calibration shares: the calibration set, the result and its JSON file, sampling, bisection."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write_text, read_json_file
from .._validation import check_int
from ..config import EarlyExitConfig
from ..eval.sampling import SampleRun, generate


@dataclass
class CalibrationSet:
    """The images calibration samples: `num_images` class-balanced images with noise seeds `seed`."""

    num_images: int = 40
    seed: int = 9001
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    batch_size: int = 64
    num_buckets: int = 4

    def __post_init__(self) -> None:
        for name in ("num_images", "num_inference_steps", "batch_size", "num_buckets"):
            check_int(getattr(self, name), name, 1)


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


def load_policy(path: str | Path) -> EarlyExitConfig:
    """Read a calibration JSON (or a bare `EarlyExitConfig` JSON) back as an `EarlyExitConfig`."""
    data = read_json_file(path, "calibration JSON")
    try:
        return EarlyExitConfig.from_dict(data["exit_config"] if isinstance(data, dict) and "exit_config" in data else data)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{str(path)!r}: {error}") from None


def sample_calibration_set(pipe: Any, calib: CalibrationSet, exit_config: EarlyExitConfig | None) -> SampleRun:
    """The calibration images under `exit_config` (None: the full model), with their exit statistics."""
    return generate(
        pipe, range(calib.num_images), exit_config=exit_config, num_inference_steps=calib.num_inference_steps,
        guidance_scale=calib.guidance_scale, seed=calib.seed, batch_size=calib.batch_size,
    )


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
