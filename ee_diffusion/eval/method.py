"""A row of a benchmark report: one method (solver, steps, exit config or diffusers cache, seed, guidance).

Its own module so that the engine (`runner.py`), the operating-point search and the benches on our own models
(the repository's `bench/grid.py`) name methods the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import EarlyExitConfig

if TYPE_CHECKING:
    from .baselines import CacheBaseline


@dataclass
class Method:
    """One row of a benchmark report: `describe()` is what the report and the sample cache key record."""

    name: str
    family: str
    solver: str
    steps: int
    exit_config: EarlyExitConfig | None = None
    cache: CacheBaseline | None = None
    seed: int = 0
    guidance_scale: float | None = None  # None: the setting's guidance
    notes: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "solver": self.solver, "steps": self.steps,
                "exit_config": None if self.exit_config is None else self.exit_config.to_dict(),
                "cache": None if self.cache is None else self.cache.describe(), "seed": self.seed,
                **({"guidance_scale": self.guidance_scale} if self.guidance_scale is not None else {}),
                **({"notes": self.notes} if self.notes else {})}
