"""Property-based tests over exit configs and policies: valid ones round-trip and plan depths in range; any
other value raises ValueError/TypeError only."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ee_diffusion import EarlyExitConfig, apply_early_exit, get_exit_stats, remove_early_exit
from ee_diffusion.schedules import StaticDepth, TimestepSchedule, UncertaintyThreshold
from ee_diffusion.testing import tiny_dit

FAST = settings(max_examples=60, deadline=None)
N = 4
MODEL = tiny_dit(num_layers=N)

boundaries = st.lists(st.integers(0, 999), max_size=5, unique=True).map(sorted)
schedules = boundaries.flatmap(
    lambda b: st.lists(st.integers(1, N), min_size=len(b) + 1, max_size=len(b) + 1).map(
        lambda d: TimestepSchedule(boundaries=b, depths=d)))
thresholds = st.floats(0.001, 0.999)
policies = st.one_of(st.none(), st.integers(1, N).map(StaticDepth), schedules,
                     st.builds(UncertaintyThreshold, thresholds, st.integers(1, 4)))
configs = st.builds(EarlyExitConfig, policy=policies, cfg_pairing=st.sampled_from(["together", "independent"]),
                    on_nonfinite=st.sampled_from(["fallback", "raise"]))
anything = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=5), st.lists(st.integers(-5, 5), max_size=3),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


pytestmark = pytest.mark.usefixtures("one_thread")


@FAST
@given(configs)
def test_valid_configs_round_trip_through_json(config):
    again = EarlyExitConfig.from_json(config.to_json())
    assert again == config and again.to_dict() == config.to_dict()


@FAST
@given(schedules, st.lists(st.floats(0, 999), min_size=1, max_size=8))
def test_schedules_plan_depths_in_range_and_match_a_loop(schedule, ts):
    timesteps = torch.tensor(ts)  # float32, as the engine holds timesteps: compare buckets at that precision
    depths = schedule.plan_depths(timesteps, N).tolist()
    for t, d in zip(timesteps.tolist(), depths):
        assert 1 <= d <= N
        assert d == schedule.depths[sum(b <= t for b in schedule.boundaries)]


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.integers(1, N).map(StaticDepth), schedules),
       st.lists(st.integers(0, 999), min_size=1, max_size=5))
def test_engine_runs_every_row_to_its_planned_depth(policy, ts):
    apply_early_exit(MODEL, EarlyExitConfig(policy=policy))
    try:
        t = torch.tensor(ts, dtype=torch.float32)
        with torch.no_grad():
            out = MODEL(torch.randn(len(ts), 1, 8, 8), timestep=t, class_labels=torch.zeros(len(ts), dtype=torch.long))
        stats = get_exit_stats(MODEL)
        assert stats.blocks_run[0].tolist() == policy.plan_depths(t, N).tolist()
        assert torch.isfinite(out.sample).all() and stats.num_nonfinite == 0
    finally:
        remove_early_exit(MODEL)


@FAST
@given(st.sampled_from(["depth", "boundaries", "depths", "threshold", "patience", "cfg_pairing", "on_nonfinite",
                        "policy"]), anything)
def test_any_wrong_value_raises_value_or_type_error(field, value):
    make = {
        "depth": lambda v: StaticDepth(v),
        "boundaries": lambda v: TimestepSchedule(v, [1, 1]),
        "depths": lambda v: TimestepSchedule([500], v),
        "threshold": lambda v: UncertaintyThreshold(v),
        "patience": lambda v: UncertaintyThreshold(0.5, patience=v),
        "cfg_pairing": lambda v: EarlyExitConfig(cfg_pairing=v),
        "on_nonfinite": lambda v: EarlyExitConfig(on_nonfinite=v),
        "policy": lambda v: EarlyExitConfig(policy=v),
    }[field]
    try:
        made = make(value)
    except (ValueError, TypeError):
        return
    # Accepted values must be valid ones, and kept as given.
    def count(v, low):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    if field == "depth":
        assert count(value, 1) and made.depth == value
    elif field == "boundaries":  # one boundary for two depths: a finite number
        assert isinstance(value, list) and len(value) == 1 and not isinstance(value[0], bool)
        assert math.isfinite(value[0]) and list(made.boundaries) == value
    elif field == "depths":
        assert isinstance(value, list) and len(value) == 2 and all(count(d, 1) for d in value)
        assert list(made.depths) == value
    elif field == "threshold":
        assert 0 < value < 1 and not math.isnan(value) and made.threshold == value
    elif field == "patience":
        assert count(value, 1) and made.patience == value
    elif field in ("cfg_pairing", "on_nonfinite"):
        assert value in ("together", "independent", "fallback", "raise") and getattr(made, field) == value
    else:
        assert value is None and made.policy is None


POLICY_TYPES = ("StaticDepth", "TimestepSchedule", "UncertaintyThreshold")
FIELDS = ("depth", "boundaries", "depths", "threshold", "patience", "x")
# Mostly a known type with random fields (so that some dicts are accepted), sometimes a random type.
policy_dicts = st.one_of(
    st.builds(lambda kind, fields: {"type": kind, **fields}, st.sampled_from(POLICY_TYPES),
              st.dictionaries(st.sampled_from(FIELDS), st.one_of(anything, st.integers(1, N), thresholds), max_size=3)),
    st.dictionaries(st.sampled_from(("type",) + FIELDS), anything, max_size=4),
    policies.filter(lambda p: p is not None).map(lambda p: p.to_dict()),
)


@FAST
@given(policy_dicts)
def test_policy_dicts_from_json_raise_or_load_exactly_what_they_say(data):
    try:
        config = EarlyExitConfig.from_dict({"policy": data})
    except (ValueError, TypeError):
        return
    # Accepted: the type named, every given field kept as given, and the policy saves back to the same dict.
    assert type(config.policy).__name__ == data["type"]
    saved = config.policy.to_dict()
    assert set(data) <= set(saved) and all(saved[key] == value for key, value in data.items())
    assert EarlyExitConfig.from_dict(config.to_dict()) == config
