"""Exit policies on their own: validation, bucket lookup, masks and the patience rule (no model needed)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ee_diffusion.adapters import get_adapter
from ee_diffusion.schedules import (
    CachedTailResidual,
    ExitContext,
    ExitPolicy,
    StaticDepth,
    TimestepSchedule,
    UncertaintyThreshold,
    policy_from_dict,
)
from ee_diffusion.testing import tiny_dit


def ctx(block, timesteps, certainty=None, rows=None, num_blocks=6, batch_size=None, call_state=None):
    timesteps = torch.as_tensor(timesteps, dtype=torch.float32)
    rows = torch.arange(timesteps.shape[0]) if rows is None else torch.as_tensor(rows)
    return ExitContext(
        block_index=block,
        num_blocks=num_blocks,
        timesteps=timesteps,
        certainty=None if certainty is None else torch.as_tensor(certainty, dtype=torch.float32),
        rows=rows,
        batch_size=timesteps.shape[0] if batch_size is None else batch_size,
        call_state=call_state,
    )


def adapter(num_blocks):
    """The backbone adapter of a tiny DiT with `num_blocks` blocks (what `validate_for` checks against)."""
    return get_adapter(tiny_dit(num_layers=num_blocks))


def bucket(boundaries, t):
    """The documented lookup as a plain loop: the number of boundaries <= t."""
    j = 0
    for b in boundaries:
        if b <= t:
            j += 1
    return j


# ------------------------------------------------------------------------------------------------ StaticDepth
@pytest.mark.parametrize("depth", [0, -1, 1.5, 2.0, "3", None, True, False])
def test_static_depth_validation(depth):
    with pytest.raises(ValueError, match=r"depth must be an integer >= 1.*got"):
        StaticDepth(depth)


def test_static_depth_plan_and_mask():
    policy = StaticDepth(3)
    assert isinstance(policy, ExitPolicy)
    assert policy.needs_certainty is False
    t = torch.tensor([0.0, 500.0, 999.0])
    assert policy.plan_depths(t, 6).tolist() == [3, 3, 3]
    assert policy.plan_depths(t, 6).dtype == torch.long
    assert policy.plan_depths(t, 2).tolist() == [2, 2, 2]  # never deeper than the model
    for block in range(6):
        assert policy.exit_mask(ctx(block, t)).tolist() == [block == 2] * 3
    policy.validate_for(adapter(3))
    with pytest.raises(ValueError, match="depth 3 but the model has 2 blocks"):
        policy.validate_for(adapter(2))


# ------------------------------------------------------------------------------------------------ TimestepSchedule
@pytest.mark.parametrize(
    "boundaries, depths, match",
    [
        ([400, 200], [3, 2, 1], "strictly increasing"),
        ([200, 200], [3, 2, 1], "strictly increasing"),
        ([200, 400], [3, 2], "one entry more than boundaries"),
        ([200], [3, 2, 1], "one entry more than boundaries"),
        ([], [], "one entry more than boundaries"),
        ([200], [3, 0], "every entry of depths must be an integer >= 1"),
        ([200], [3, -2], "every entry of depths"),
        ([200], [3, 1.5], "every entry of depths"),
        ([200], [3, "2"], "every entry of depths"),
        ("200,400", [3, 2, 1], "boundaries must be a list"),
        (["200"], [3, 2], "boundaries must be numbers"),
        ([True], [3, 2], "boundaries must be numbers"),
        ([math.nan], [3, 2], "boundaries must be numbers"),
        ([None], [3, 2], "boundaries must be numbers"),
        (200, [3, 2], "boundaries must be a list"),
        ([200], "32", "depths must be a list"),
        ([200], 3, "depths must be a list"),
    ],
)
def test_timestep_schedule_validation(boundaries, depths, match):
    with pytest.raises(ValueError, match=match):
        TimestepSchedule(boundaries=boundaries, depths=depths)


def test_timestep_schedule_examples():
    ase = TimestepSchedule(boundaries=[200, 400, 600, 800], depths=[28, 24, 20, 16, 12])
    t = torch.tensor([0, 199, 200, 399.5, 400, 600, 799, 800, 999, 5000])
    assert ase.plan_depths(t, 28).tolist() == [28, 28, 24, 24, 20, 16, 16, 12, 12, 12]
    assert ase.plan_depths(t, 20).tolist() == [20, 20, 20, 20, 20, 16, 16, 12, 12, 12]  # clamped
    ase.validate_for(adapter(28))
    with pytest.raises(ValueError, match="depth 28 but the model has 27 blocks"):
        ase.validate_for(adapter(27))
    single = TimestepSchedule(boundaries=[], depths=[5])  # one interval: a static depth
    assert single.plan_depths(t, 6).tolist() == [5] * 10
    tuples = TimestepSchedule(boundaries=(100.5,), depths=(2, 1))
    assert tuples.boundaries == [100.5] and tuples.depths == [2, 1]


def test_timestep_schedule_exit_mask_follows_plan():
    policy = TimestepSchedule(boundaries=[300, 700], depths=[5, 3, 1])
    t = torch.tensor([10.0, 300.0, 699.0, 700.0, 999.0])
    plan = policy.plan_depths(t, 6)
    assert plan.tolist() == [5, 3, 3, 1, 1]
    for block in range(6):
        assert torch.equal(policy.exit_mask(ctx(block, t)), plan == block + 1)


sorted_boundaries = st.lists(
    st.one_of(st.integers(-5, 1100), st.floats(-5, 1100, allow_nan=False, width=32)), max_size=8, unique=True
).map(sorted).filter(lambda b: all(x < y for x, y in zip(b, b[1:])))


@settings(max_examples=150, deadline=None, database=None)
@given(
    boundaries=sorted_boundaries,
    data=st.data(),
)
def test_timestep_schedule_bucket_matches_loop(boundaries, data):
    depths = data.draw(st.lists(st.integers(1, 30), min_size=len(boundaries) + 1, max_size=len(boundaries) + 1))
    policy = TimestepSchedule(boundaries=boundaries, depths=depths)
    free = data.draw(st.lists(st.floats(-10, 1200, allow_nan=False, width=32), max_size=12))
    # every boundary itself, and its float32 neighbours, must land in the right bucket
    edges = [v for b in boundaries for v in (b, math.nextafter(b, -math.inf), math.nextafter(b, math.inf))]
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor(free + edges, dtype=dtype)
        got = policy.plan_depths(t, 30).tolist()
        assert got == [depths[bucket(boundaries, float(v))] for v in t.tolist()]
        got_clamped = policy.plan_depths(t, 7).tolist()
        assert got_clamped == [min(7, depths[bucket(boundaries, float(v))]) for v in t.tolist()]
    ints = torch.tensor([int(v) for v in range(-5, 1100, 37)] + [int(b) for b in boundaries], dtype=torch.long)
    assert policy.plan_depths(ints, 30).tolist() == [depths[bucket(boundaries, int(v))] for v in ints.tolist()]


# ------------------------------------------------------------------------------------------------ UncertaintyThreshold
@pytest.mark.parametrize("threshold", [0, 1, 0.0, 1.0, -0.1, 1.5, "0.9", None, True, math.nan, math.inf])
def test_threshold_validation(threshold):
    with pytest.raises(ValueError, match="threshold must be a certainty strictly between 0 and 1"):
        UncertaintyThreshold(threshold)


@pytest.mark.parametrize("patience", [0, -1, 1.5, "2", None, True])
def test_patience_validation(patience):
    with pytest.raises(ValueError, match="patience must be an integer >= 1"):
        UncertaintyThreshold(0.9, patience=patience)


@pytest.mark.parametrize(
    "per_timestep, match",
    [
        ({"boundaries": [500]}, "exactly the keys"),
        ({"thresholds": [0.9]}, "exactly the keys"),
        ({"boundaries": [500], "thresholds": [0.9, 0.8], "extra": 1}, "exactly the keys"),
        ({"bounds": [500], "thresholds": [0.9, 0.8]}, "exactly the keys"),
        ([[500], [0.9, 0.8]], "must be a dict"),
        ({"boundaries": [500], "thresholds": [0.9]}, "one threshold more than boundaries"),
        ({"boundaries": [500], "thresholds": [0.9, 0.8, 0.7]}, "one threshold more than boundaries"),
        ({"boundaries": [], "thresholds": []}, "one threshold more than boundaries"),
        ({"boundaries": [600, 500], "thresholds": [0.9, 0.8, 0.7]}, "strictly increasing"),
        ({"boundaries": [500, 500], "thresholds": [0.9, 0.8, 0.7]}, "strictly increasing"),
        ({"boundaries": ["500"], "thresholds": [0.9, 0.8]}, "boundaries must be numbers"),
        ({"boundaries": [math.nan], "thresholds": [0.9, 0.8]}, "boundaries must be numbers"),
        ({"boundaries": "500", "thresholds": [0.9, 0.8]}, "per_timestep boundaries must be a list"),
        ({"boundaries": 500, "thresholds": [0.9, 0.8]}, "per_timestep boundaries must be a list"),
        ({"boundaries": [500], "thresholds": 0.9}, "'thresholds' must be a list"),
        ({"boundaries": [500], "thresholds": [0.9, 1.0]}, "every per_timestep threshold"),
        ({"boundaries": [500], "thresholds": [0.0, 0.5]}, "every per_timestep threshold"),
        ({"boundaries": [500], "thresholds": [0.9, "0.8"]}, "every per_timestep threshold"),
    ],
)
def test_per_timestep_validation(per_timestep, match):
    with pytest.raises(ValueError, match=match):
        UncertaintyThreshold(0.9, per_timestep=per_timestep)


def test_threshold_defaults():
    policy = UncertaintyThreshold()
    assert policy.threshold == 0.92 and policy.patience == 2 and policy.per_timestep is None
    assert policy.needs_certainty is True
    assert isinstance(policy, ExitPolicy)
    assert isinstance(UncertaintyThreshold(1 / 2).threshold, float)


@settings(max_examples=100, deadline=None, database=None)
@given(boundaries=sorted_boundaries, data=st.data())
def test_thresholds_for_matches_loop(boundaries, data):
    thresholds = data.draw(
        st.lists(st.floats(0.01, 0.99), min_size=len(boundaries) + 1, max_size=len(boundaries) + 1)
    )
    policy = UncertaintyThreshold(0.5, per_timestep={"boundaries": boundaries, "thresholds": thresholds})
    free = data.draw(st.lists(st.floats(-10, 1200, allow_nan=False, width=32), max_size=12))
    t = torch.tensor(free + [float(b) for b in boundaries], dtype=torch.float32)
    got = policy.thresholds_for(t)
    assert got.dtype == torch.float32
    expected = torch.tensor([thresholds[bucket(boundaries, float(v))] for v in t.tolist()], dtype=torch.float32)
    assert torch.equal(got, expected)
    assert torch.equal(UncertaintyThreshold(0.25).thresholds_for(t), torch.full(t.shape, 0.25))


def test_threshold_mask_is_strict():
    policy = UncertaintyThreshold(0.5, patience=1)
    mask = policy.exit_mask(ctx(4, [10, 20, 30], certainty=[0.5, 0.5001, 0.4999]))
    assert mask.tolist() == [False, True, False]
    assert mask.dtype == torch.bool


def test_threshold_mask_needs_certainty():
    with pytest.raises(ValueError, match="needs certainties"):
        UncertaintyThreshold(0.5).exit_mask(ctx(0, [10]))


def test_patience_rule_with_rows_leaving():
    """Streaks are kept per batch row across blocks, while the set of active rows shrinks."""
    policy = UncertaintyThreshold(0.5, patience=2)
    call = policy.create_call_state(4, torch.device("cpu"))
    t = [0.0] * 4

    def step(block, rows, certainty):
        rows_t = torch.tensor(rows)
        c = ctx(block, [t[r] for r in rows], certainty=certainty, rows=rows_t, batch_size=4, call_state=call)
        return policy.exit_mask(c).tolist()

    # block 0 (first half of 6): nobody exits on a single pass
    assert step(0, [0, 1, 2, 3], [0.9, 0.9, 0.1, 0.9]) == [False, False, False, False]
    # block 1: rows 0 and 3 pass twice in a row -> exit; row 1 misses (streak reset); row 2 passes once
    assert step(1, [0, 1, 2, 3], [0.9, 0.1, 0.9, 0.6]) == [True, False, False, True]
    # block 2: only rows 1 and 2 are left; row 2 passes again -> exit; row 1 passes once
    assert step(2, [1, 2], [0.9, 0.9]) == [False, True]
    # block 3 (second half): one pass is enough
    assert step(3, [1], [0.51]) == [True]
    # a fresh call (fresh call state) starts from zero
    call = policy.create_call_state(4, torch.device("cpu"))
    assert step(0, [0, 1, 2, 3], [0.9] * 4) == [False] * 4


def test_patience_one_and_first_half_boundary():
    assert UncertaintyThreshold(0.5, patience=1).exit_mask(ctx(0, [0.0], certainty=[0.9])).tolist() == [True]
    # odd depth: the first half of 5 blocks is blocks 0 and 1
    policy = UncertaintyThreshold(0.5, patience=3)
    call = policy.create_call_state(1, torch.device("cpu"))
    assert policy.exit_mask(ctx(1, [0.0], certainty=[0.9], num_blocks=5, call_state=call)).tolist() == [False]
    assert policy.exit_mask(ctx(2, [0.0], certainty=[0.9], num_blocks=5)).tolist() == [True]


def test_per_timestep_thresholds_in_mask():
    policy = UncertaintyThreshold(0.99, patience=1, per_timestep={"boundaries": [500], "thresholds": [0.9, 0.3]})
    mask = policy.exit_mask(ctx(3, [100.0, 499.0, 500.0, 900.0], certainty=[0.5, 0.95, 0.5, 0.2]))
    assert mask.tolist() == [False, True, True, False]


# ------------------------------------------------------------------------------------------------ dict round trips
BUILT_IN = [
    StaticDepth(1),
    StaticDepth(28),
    TimestepSchedule(boundaries=[200, 400, 600, 800], depths=[28, 24, 20, 16, 12]),
    TimestepSchedule(boundaries=[], depths=[3]),
    TimestepSchedule(boundaries=[0.5, 250.25], depths=[1, 2, 3]),
    UncertaintyThreshold(),
    UncertaintyThreshold(0.87, patience=1),
    UncertaintyThreshold(0.9, patience=3, per_timestep={"boundaries": [300, 700], "thresholds": [0.95, 0.9, 0.8]}),
    CachedTailResidual(),
    CachedTailResidual(0.2, criterion="timestep", forecast_order=2, state_dtype="bfloat16", max_cached_calls=5),
]


@pytest.mark.parametrize("policy", BUILT_IN, ids=repr)
def test_policy_dict_round_trip(policy):
    data = policy.to_dict()
    assert data["type"] == type(policy).__name__
    again = policy_from_dict(data)
    assert type(again) is type(policy)
    assert again == policy
    assert again.to_dict() == data
    assert data["type"] == type(policy).__name__  # the input dict is not consumed


def test_policy_from_dict_errors():
    with pytest.raises(ValueError, match="unknown policy type 'abc'; known types: BlockForecast, CachedTailResidual, StaticDepth, TimestepSchedule, "
                                         "UncertaintyThreshold"):
        policy_from_dict({"type": "abc"})
    with pytest.raises(ValueError, match="needs a 'type' key"):
        policy_from_dict({"depth": 3})
    with pytest.raises(ValueError, match="needs a 'type' key"):
        policy_from_dict("StaticDepth")
    with pytest.raises(ValueError, match=r"unknown StaticDepth fields \['depht'\]; allowed: \['depth'\]"):
        policy_from_dict({"type": "StaticDepth", "depht": 3})
    with pytest.raises(ValueError, match=r"StaticDepth needs the fields \['depth'\]"):
        policy_from_dict({"type": "StaticDepth"})
    with pytest.raises(ValueError, match="strictly increasing"):
        policy_from_dict({"type": "TimestepSchedule", "boundaries": [5, 1], "depths": [1, 2, 3]})
    with pytest.raises(ValueError, match="threshold"):
        policy_from_dict({"type": "UncertaintyThreshold", "threshold": 2})
