"""`EarlyExitConfig`: what the engine does, as a validated, JSON-serialisable dataclass."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .caches import TrainingFreeCache  # registers the caches' `type` names for saved configs
from .policies.base import ExitPolicy, SerializablePolicy, as_exit_policy, policy_from_dict

CFG_PAIRING_MODES = ("together", "independent")
ON_NONFINITE_MODES = ("fallback", "raise")


@dataclass
class EarlyExitConfig:
    """How a model exits early.

    Args:
        policy: what decides, per row, how much of the model runs: an exit policy (`StaticDepth`,
            `TimestepSchedule`, `UncertaintyThreshold`; the `ExitPolicy` contract) or a training-free cache
            (`CachedTailResidual`, `BlockForecast`; the `TrainingFreeCache` contract), all in
            `ee_diffusion.schedules`. `None` never exits: the model then computes exactly what the stock model
            computes.
        cfg_pairing: when the batch holds classifier-free-guidance pairs (the second half repeats the first
            half's latents and timesteps with the null class), `"together"` makes a conditional row and its
            unconditional partner exit together, at the first block where the policy lets both stop, so the
            guided prediction mixes two outputs of equal depth (timestep policies give both halves the same
            depth anyway); `"independent"` lets each half decide alone (DeeDiff authors'
            behaviour). Our pipelines declare their batch layout (`BatchLayout`); stock pipelines that open
            diffusers' `cache_context` say it by its name ("cond_uncond": pairs; "cond", "uncond": none); for the
            others, such as `DiTPipeline`, the engine recognises pairs from the inputs.
        on_nonfinite: what happens when a block, a head or the output produces NaN/inf (exits on only):

            - dynamic policies (per-block decisions, e.g. `UncertaintyThreshold`): a row whose certainty or exit
              hidden state is not finite does not exit at that block - it keeps running towards full depth -
              and `ExitStats.fallbacks` marks it. This check rides on the host sync the decision needs anyway.
            - every policy: at the end of each model call the output is checked once per row (one host sync per
              call, none per block; planned policies re-run nothing). Rows whose output is still not finite are
              marked in `ExitStats.nonfinite` with `"fallback"` (the default), or the call raises `ValueError`
              naming the rows, their timesteps and exit depths with `"raise"`.

            `EarlyExitDiTPipeline` raises `ValueError` rather than return non-finite images in either mode.
            `to_dict` writes this key only when it is not the default, so older saved configs stay unchanged.

    ```py
    >>> from ee_diffusion import EarlyExitConfig
    >>> from ee_diffusion.schedules import TimestepSchedule
    >>> config = EarlyExitConfig(policy=TimestepSchedule(boundaries=[500], depths=[8, 4]))
    >>> EarlyExitConfig.from_dict(config.to_dict()) == config
    True

    ```
    """

    policy: ExitPolicy | TrainingFreeCache | None = None
    cfg_pairing: Literal["together", "independent"] = "together"
    on_nonfinite: Literal["fallback", "raise"] = "fallback"

    def __post_init__(self) -> None:
        if isinstance(self.policy, dict):
            self.policy = policy_from_dict(self.policy)
        if self.policy is not None:
            as_exit_policy(self.policy)  # raises TypeError, saying how to subclass, for what cannot run
        if self.cfg_pairing not in CFG_PAIRING_MODES:
            raise ValueError(f"cfg_pairing must be one of {CFG_PAIRING_MODES}, got {self.cfg_pairing!r}")
        if not isinstance(self.on_nonfinite, str) or self.on_nonfinite not in ON_NONFINITE_MODES:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE_MODES}, got {self.on_nonfinite!r}")

    @property
    def exits(self) -> bool:
        return self.policy is not None

    def to_dict(self) -> dict[str, Any]:
        if self.policy is not None and not isinstance(self.policy, SerializablePolicy):
            raise ValueError(f"custom policy {type(self.policy).__name__} cannot be serialised; give it a to_dict()")
        data: dict[str, Any] = {
            "policy": None if self.policy is None else self.policy.to_dict(),
            "cfg_pairing": self.cfg_pairing,
        }
        if self.on_nonfinite != "fallback":
            data["on_nonfinite"] = self.on_nonfinite
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EarlyExitConfig":
        if not isinstance(data, dict):
            raise ValueError(f"an exit config must be a dict, got {type(data).__name__}")
        unknown = set(data) - {"policy", "cfg_pairing", "on_nonfinite"}
        if unknown:
            raise ValueError(
                f"unknown exit config keys {sorted(map(str, unknown))}; "
                f"allowed: ['cfg_pairing', 'on_nonfinite', 'policy']"
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, source: str | bytes | os.PathLike) -> "EarlyExitConfig":
        """Parse `to_json()` output, or read it from a file: a path, or a str that is not JSON text (JSON text of an
        exit config starts with "{"), goes to `from_file`; `ValueError` for anything else."""
        if isinstance(source, os.PathLike) or (isinstance(source, str) and not source.lstrip().startswith("{")):
            if not Path(source).is_file():
                raise ValueError(f"an exit config is JSON text (starting with '{{') or the path of a JSON file; got "
                                 f"{str(source)[:80]!r}, which is neither")
            return cls.from_file(source)
        if not isinstance(source, (str, bytes, bytearray)):
            raise TypeError(f"from_json takes JSON text or a path, got {type(source).__name__}")
        return cls._parse(source)

    @classmethod
    def _parse(cls, text: str | bytes | bytearray) -> "EarlyExitConfig":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"an exit config must be JSON text, got unparsable input ({error})") from None
        if isinstance(data, dict) and set(data) == {"exit_config", "calibration"}:
            data = data["exit_config"]  # a calibration JSON (`ee-diffusion calibrate --out`): its exit config
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "EarlyExitConfig":
        """Load an exit config JSON file (or the exit config of a calibration JSON); errors name the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"exit config file {str(path)!r} does not exist") from None
        except (UnicodeDecodeError, IsADirectoryError, PermissionError) as error:
            raise ValueError(f"cannot read exit config file {str(path)!r}: {error}") from None
        try:
            return cls._parse(text)
        except (ValueError, TypeError) as error:
            raise type(error)(f"{str(path)!r}: {error}") from None
