"""`EarlyExitConfig`: what the engine does, as a validated, JSON-serialisable dataclass."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from .schedules.base import ExitPolicy, SerializablePolicy, policy_from_dict

CFG_PAIRING_MODES = ("together", "independent")


@dataclass
class EarlyExitConfig:
    """How a model exits early.

    Args:
        policy: decides which rows stop after which block (see `ee_diffusion.schedules`). `None` never
            exits: the model then computes exactly what the stock model computes.
        cfg_pairing: when the batch holds classifier-free-guidance pairs (the second half repeats the first
            half's latents and timesteps with the null class), `"together"` makes a conditional row and its
            unconditional partner exit together, at the first block where the policy lets both stop, so the
            guided prediction mixes two outputs of equal depth (timestep policies give both halves the same
            depth anyway); `"independent"` lets each half decide alone (DeeDiff authors'
            behaviour). Pairs are recognised from the inputs, so this also works on a stock `DiTPipeline`.

    ```py
    >>> from ee_diffusion import EarlyExitConfig
    >>> from ee_diffusion.schedules import TimestepSchedule
    >>> config = EarlyExitConfig(policy=TimestepSchedule(boundaries=[500], depths=[8, 4]))
    >>> EarlyExitConfig.from_dict(config.to_dict()) == config
    True

    ```
    """

    policy: ExitPolicy | None = None
    cfg_pairing: Literal["together", "independent"] = "together"

    def __post_init__(self) -> None:
        if isinstance(self.policy, dict):
            self.policy = policy_from_dict(self.policy)
        if isinstance(self.policy, type):
            raise TypeError(
                f"policy must be an ExitPolicy protocol instance, got the class {self.policy.__name__}; "
                f"instantiate it, e.g. {self.policy.__name__}(...)"
            )
        if self.policy is not None and not (
            callable(getattr(self.policy, "exit_mask", None)) and hasattr(self.policy, "needs_certainty")
        ):
            raise TypeError(
                f"policy must implement the ExitPolicy protocol (an `exit_mask(ctx)` method and a "
                f"`needs_certainty` attribute) or be None, got {type(self.policy).__name__}"
            )
        if self.cfg_pairing not in CFG_PAIRING_MODES:
            raise ValueError(f"cfg_pairing must be one of {CFG_PAIRING_MODES}, got {self.cfg_pairing!r}")

    @property
    def exits(self) -> bool:
        return self.policy is not None

    def to_dict(self) -> dict[str, Any]:
        if self.policy is not None and not isinstance(self.policy, SerializablePolicy):
            raise ValueError(f"custom policy {type(self.policy).__name__} cannot be serialised; give it a to_dict()")
        return {
            "policy": None if self.policy is None else self.policy.to_dict(),
            "cfg_pairing": self.cfg_pairing,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EarlyExitConfig":
        if not isinstance(data, dict):
            raise ValueError(f"an exit config must be a dict, got {type(data).__name__}")
        unknown = set(data) - {"policy", "cfg_pairing"}
        if unknown:
            raise ValueError(f"unknown exit config keys {sorted(unknown)}; allowed: ['cfg_pairing', 'policy']")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "EarlyExitConfig":
        return cls.from_dict(json.loads(text))
