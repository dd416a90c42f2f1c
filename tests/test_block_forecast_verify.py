"""BlockForecast's per-row change criterion (`verify_threshold`): block 0's attention runs on every row, and a row
whose forecast of it misses computes that call; the others keep forecasting."""

import pytest
import torch
from test_block_forecast import CALLS, KINDS, _call, _count_rows, _setup, _take

from ee_diffusion import EarlyExitConfig, apply_early_exit, exit_state_nbytes, remove_early_exit
from ee_diffusion.schedules import BlockForecast, BlockForecastState, policy_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", KINDS)
def test_a_check_that_always_fails_is_the_stock_model(kind):
    model, x, cond = _setup(kind)
    stock = [_call(kind, model, x, t, cond) for t in CALLS]
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=6, verify_threshold=1e-12)))
    assert all(torch.equal(_call(kind, model, x, t, cond), want) for t, want in zip(CALLS, stock))
    remove_early_exit(model)


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_rows_whose_check_fails_compute(kind):
    """Call 2 repeats call 1's timestep: rows 0 and 1 keep their input (their forecast is exact, miss 0), rows 2 and
    3 get a new one (a large miss). Block 0 runs on all 4 rows (its attention is the check), every other block on
    rows 2 and 3 only."""
    model, x, cond = _setup(kind)
    t = torch.full((4,), 500.0)
    changed = x.clone()
    changed[2:] = torch.randn(2, *x.shape[1:], generator=torch.Generator().manual_seed(9))
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=10, verify_threshold=0.01)))
    first = _call(kind, model, x, t, cond)
    seen = _count_rows(model, kind)
    out = _call(kind, model, changed, t, cond)
    assert [n for _, _, n in seen] == [4, 4] + [2, 2] * 2  # (block, attention / feed-forward) in call order
    assert torch.equal(out[:2], first[:2])  # the forecast rows: their last computed outputs, bit for bit
    remove_early_exit(model)
    torch.testing.assert_close(out[2:], _call(kind, model, changed[2:], t[2:], _take(cond, slice(2, 4))),
                               atol=1e-5, rtol=0)


def test_rows_decide_alone_as_in_a_batch_and_the_state_adds_the_misses():
    model, x, labels = _setup("dit")
    policy = BlockForecast(interval=6, forecast_order=1, verify_threshold=0.3)
    apply_early_exit(model, EarlyExitConfig(policy=policy))
    batch = [_call("dit", model, x, t, labels) for t in CALLS]
    assert exit_state_nbytes(model) == BlockForecastState.bound(4, 2 * 3 * 16 * 32, 1, 4) + 4 * 4  # + (B,) misses
    remove_early_exit(model)
    for row in range(4):
        apply_early_exit(model, EarlyExitConfig(policy=policy))
        alone = [_call("dit", model, x[row:row + 1], t[row:row + 1], labels[row:row + 1]) for t in CALLS]
        remove_early_exit(model)
        for a, b in zip(alone, batch):
            torch.testing.assert_close(a[0], b[row], atol=1e-5, rtol=0)
    assert policy_from_dict(policy.to_dict()) == policy and policy.to_dict()["verify_threshold"] == 0.3


@pytest.mark.parametrize("kind", KINDS)
def test_exit_stats_count_the_rows_that_computed_each_call(kind):
    """`ExitStats.computed`: a row the check let forecast ran every block on forecast outputs (0 computed), a row that
    computed has every block it ran; the totals are the state's own count."""
    from ee_diffusion import record_exit_stats
    from ee_diffusion.hooks import _engine_of

    model, x, cond = _setup(kind)
    t = torch.full((4,), 500.0)
    changed = x.clone()
    changed[2:] = torch.randn(2, *x.shape[1:], generator=torch.Generator().manual_seed(9))
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=10, verify_threshold=0.01)))
    with record_exit_stats(model) as stats:
        _call(kind, model, x, t, cond)
        _call(kind, model, changed, t, cond)
    n = stats.num_blocks
    assert [c.tolist() for c in stats.computed] == [[n] * 4, [0, 0, n, n]]
    assert [b.tolist() for b in stats.blocks_run] == [[n] * 4] * 2 and stats.compute_fraction == 6 / 8
    assert stats.total_computed == _engine_of(model).policy_state.get(None).rows_computed * n
    remove_early_exit(model)
