"""`CachedTailResidual(exit_block=0)`: a skipping row runs no block and returns the decode of h_0 + its forecast
residual of the whole stack; `for_calls` places its full calls."""

from __future__ import annotations

import copy

import pytest
import torch
from _backbone_properties import count_block_computations
from test_family_caches import make, model_timestep, rows

from ee_diffusion import (
    EarlyExitConfig,
    apply_early_exit,
    get_exit_stats,
    record_exit_stats,
    remove_early_exit,
    reset_exit_state,
)
from ee_diffusion.adapters import get_adapter
from ee_diffusion.schedules import CachedTailResidual, policy_from_dict
from ee_diffusion.testing import tiny_auraflow

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = [900.0, 800.0, 700.0, 600.0]
#: Row 1's own timesteps: in the window of RUN's index 2 at call 1 (it runs fully while row 0 forecasts), outside
#: every window at calls 2 and 3.
ROW_1 = [900.0, 720.0, 640.0, 560.0]


def _run(model, inputs, per_call_timesteps):
    """The model's outputs at each call, the rows at their own timesteps ((B,) per call, 0-999)."""
    adapter, out = get_adapter(model), []
    with torch.no_grad():
        for ts in per_call_timesteps:
            timestep = torch.stack([model_timestep(model, t, 1)[0] for t in ts])
            out.append(model(**inputs, **{adapter.timestep_arg: timestep}).sample)
    return out


@pytest.mark.parametrize("family", ["DiT", "PixArt", "SD3"])
def test_running_fully_at_every_call_is_the_stock_model_and_removal_restores_it(family):
    model, inputs = make(family)
    calls = [[t, t] for t in RUN]
    stock = _run(model, inputs, calls)
    apply_early_exit(model, EarlyExitConfig(CachedTailResidual.for_calls(RUN, range(4), exit_block=0,
                                                                         forecast_order=1)))
    for got, expected in zip(_run(model, inputs, calls), stock):
        assert torch.equal(got, expected)
    remove_early_exit(model)
    for got, expected in zip(_run(model, inputs, calls), stock):
        assert torch.equal(got, expected)


def test_a_skipping_row_runs_no_block_and_returns_the_decode_of_h0_plus_its_residual():
    model, inputs = make("DiT")
    stock = copy.deepcopy(model)
    blocks = stock.transformer_blocks
    seen = {}
    handles = [blocks[0].register_forward_pre_hook(lambda m, a, k: seen.update(h0=a[0] if a else k["hidden_states"]),
                                                   with_kwargs=True),
               blocks[-1].register_forward_hook(lambda m, a, k, out: seen.update(hn=out), with_kwargs=True)]
    _run(stock, inputs, [[900.0, 900.0]])
    residual = seen["hn"] - seen["h0"]  # (2, L, D) the whole stack's residual at the full call
    for handle in handles:
        handle.remove()
    # The expected output at the next call: the stock model with block 0 returning its input + the residual and
    # every other block its input.
    for i, block in enumerate(blocks):
        block.register_forward_hook(
            lambda m, a, k, out, i=i: (a[0] if a else k["hidden_states"]) + (residual if i == 0 else 0),
            with_kwargs=True)
    expected = _run(stock, inputs, [[800.0, 800.0]])[0]

    apply_early_exit(model, EarlyExitConfig(CachedTailResidual(exit_block=0, criterion="timestep", skip_above_t=0.0,
                                                               forecast_order=0)))
    _run(model, inputs, [[900.0, 900.0]])
    with count_block_computations(model) as computed:
        got = _run(model, inputs, [[800.0, 800.0]])[0]
    assert computed == []  # no block's attention ran
    assert get_exit_stats(model).blocks_run[0].tolist() == [0, 0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["DiT", "PixArt", "SD3", "HunyuanDiT"])
def test_rows_that_run_and_rows_that_skip_in_one_batch_get_what_they_get_alone(family):
    """Per-row windows: at call 1 row 1 runs fully and row 0 skips; SD3 carries its text stream with the rows, and
    HunyuanDiT's loop (whole batch) hands the skipping row's value on through every block."""
    model, inputs = make(family)
    apply_early_exit(model, EarlyExitConfig(CachedTailResidual.for_calls(RUN, [0, 2], exit_block=0,
                                                                         forecast_order=1)))
    with record_exit_stats(model) as stats:
        together = _run(model, inputs, list(zip(RUN, ROW_1)))
    n = get_adapter(model).num_blocks
    assert [b.tolist() for b in stats.blocks_run] == [[n, n], [0, n], [n, 0], [0, 0]]
    for index, own in enumerate((RUN, ROW_1)):
        reset_exit_state(model)
        alone = _run(model, rows(inputs, index), [[t] for t in own])
        for call, expected in zip(together, alone):
            torch.testing.assert_close(call[index: index + 1], expected, rtol=0, atol=1e-5)


def test_for_calls_places_the_full_calls_and_round_trips():
    policy = CachedTailResidual.for_calls(RUN, [2, 0], exit_block=0, forecast_order=1)
    assert policy.full_windows == ((650.0, 750.0),)
    assert (policy.criterion, policy.skip_above_t, policy.max_cached_calls) == ("timestep", 0.0, 4)
    assert policy_from_dict(policy.to_dict()) == policy
    model, inputs = make("DiT")
    apply_early_exit(model, EarlyExitConfig(policy))
    blocks = []
    for t in RUN:
        _run(model, inputs, [[t, t]])
        blocks.append(get_exit_stats(model).blocks_run[0].tolist())
    assert blocks == [[3, 3], [0, 0], [3, 3], [0, 0]]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"exit_block": 0}, "exit_block=0 decides before any block has run, so it needs criterion='timestep'"),
    ({"exit_block": 0, "criterion": "uncertainty"}, "got criterion='uncertainty'"),
    ({"exit_block": -1, "criterion": "timestep"}, "exit_block"),
    ({"full_windows": [(700.0, 600.0)]}, "low <= high"),
    ({"full_windows": "700"}, "full_windows must be a list"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CachedTailResidual(**kwargs)


def test_bad_calls_are_refused():
    with pytest.raises(ValueError, match=r"calls must be indices of the run's 4 distinct timesteps \(0..3\), "
                                         r"got \[4\]"):
        CachedTailResidual.for_calls(RUN, [4])


def test_a_joint_stack_needs_its_decision_among_its_blocks():
    """AuraFlow's later blocks run on one [text; image] sequence: h_N and h_0 are not on one stream."""
    model = tiny_auraflow()
    with pytest.raises(ValueError, match="exit_block must be at least"):
        apply_early_exit(model, EarlyExitConfig(CachedTailResidual(exit_block=0, criterion="timestep")))
