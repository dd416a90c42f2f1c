"""EarlyExitConfig: validation and JSON-friendly round trips."""

from __future__ import annotations

import json

import pytest
import torch

from ee_diffusion.config import CFG_PAIRING_MODES, EarlyExitConfig
from ee_diffusion.schedules import StaticDepth, TimestepSchedule, UncertaintyThreshold


class CustomPolicy:
    needs_certainty = False

    def exit_mask(self, ctx):
        return torch.zeros_like(ctx.rows, dtype=torch.bool)


POLICIES = [
    None,
    StaticDepth(4),
    TimestepSchedule(boundaries=[200, 400, 600, 800], depths=[28, 24, 20, 16, 12]),
    TimestepSchedule(boundaries=[499.5], depths=[2, 1]),
    UncertaintyThreshold(0.92),
    UncertaintyThreshold(0.8, patience=1, per_timestep={"boundaries": [500], "thresholds": [0.95, 0.85]}),
]


def test_defaults():
    config = EarlyExitConfig()
    assert config.policy is None
    assert config.cfg_pairing == "together"
    assert config.exits is False
    assert EarlyExitConfig(policy=StaticDepth(2)).exits is True
    assert CFG_PAIRING_MODES == ("together", "independent")


@pytest.mark.parametrize("mode", ["x", "", "Together", "both", None, 1, True])
def test_bad_cfg_pairing(mode):
    with pytest.raises(ValueError, match=r"cfg_pairing must be one of \('together', 'independent'\), got"):
        EarlyExitConfig(cfg_pairing=mode)


@pytest.mark.parametrize("policy", ["abc", 3, 0.9, [StaticDepth(2)], StaticDepth, object()])
def test_bad_policy_type(policy):
    with pytest.raises(TypeError, match="policy must be an ExitPolicy"):
        EarlyExitConfig(policy=policy)


def test_policy_missing_protocol_parts():
    class NoFlag:
        def exit_mask(self, ctx):
            return ctx.rows > 0

    class NotCallable:
        needs_certainty = False
        exit_mask = True

    for policy in (NoFlag(), NotCallable()):
        with pytest.raises(TypeError, match="needs_certainty"):
            EarlyExitConfig(policy=policy)


def test_custom_policy_is_accepted_but_not_serialisable():
    config = EarlyExitConfig(policy=CustomPolicy(), cfg_pairing="independent")
    assert config.exits
    with pytest.raises(ValueError, match="CustomPolicy cannot be serialised"):
        config.to_dict()
    with pytest.raises(ValueError, match="CustomPolicy cannot be serialised"):
        config.to_json()


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
@pytest.mark.parametrize("mode", CFG_PAIRING_MODES)
def test_round_trips(policy, mode):
    config = EarlyExitConfig(policy=policy, cfg_pairing=mode)
    data = config.to_dict()
    assert set(data) == {"policy", "cfg_pairing"}
    assert data["cfg_pairing"] == mode
    again = EarlyExitConfig.from_dict(data)
    assert again == config
    assert type(again.policy) is type(policy)
    assert again.to_dict() == data
    text = config.to_json()
    assert json.loads(text) == data
    from_text = EarlyExitConfig.from_json(text)
    assert from_text == config
    assert from_text.to_json() == text
    # from_dict does not consume or alter its input
    assert data == config.to_dict()


def test_policy_given_as_dict():
    config = EarlyExitConfig(policy={"type": "StaticDepth", "depth": 3})
    assert config.policy == StaticDepth(3)
    with pytest.raises(ValueError, match="depth must be an integer"):
        EarlyExitConfig(policy={"type": "StaticDepth", "depth": 0})


def test_from_dict_errors():
    with pytest.raises(ValueError, match=r"unknown exit config keys \['polcy'\]; allowed: \['cfg_pairing', 'on_nonfinite', 'policy'\]"):
        EarlyExitConfig.from_dict({"polcy": None})
    with pytest.raises(ValueError, match=r"unknown exit config keys \['a', 'b'\]"):
        EarlyExitConfig.from_dict({"policy": None, "a": 1, "b": 2})
    with pytest.raises(ValueError, match="must be a dict, got list"):
        EarlyExitConfig.from_dict([("policy", None)])
    with pytest.raises(ValueError, match="known types: BlockForecast, CachedTailResidual, StaticDepth, TimestepSchedule, UncertaintyThreshold"):
        EarlyExitConfig.from_dict({"policy": {"type": "Magic", "depth": 3}})
    with pytest.raises(ValueError, match="needs a 'type' key"):
        EarlyExitConfig.from_dict({"policy": {"depth": 3}})
    with pytest.raises(ValueError, match="unknown TimestepSchedule fields"):
        EarlyExitConfig.from_dict({"policy": {"type": "TimestepSchedule", "boundaries": [1], "depths": [2, 1],
                                              "threshold": 0.5}})
    with pytest.raises(ValueError, match="cfg_pairing must be one of"):
        EarlyExitConfig.from_dict({"policy": None, "cfg_pairing": "x"})
    with pytest.raises(ValueError, match="threshold must be a certainty"):
        EarlyExitConfig.from_json('{"policy": {"type": "UncertaintyThreshold", "threshold": 1.5}}')
    assert EarlyExitConfig.from_dict({}) == EarlyExitConfig()
