"""CachedTailResidual: training-free per-row exits that add each row's cached tail residual."""


import pytest
import torch
from _sampling import sample as _sample
from diffusers import DDIMScheduler, HeunDiscreteScheduler

from ee_diffusion import (
    EarlyExitConfig,
    UncertaintyHeads,
    apply_early_exit,
    exit_state_nbytes,
    get_exit_stats,
    record_exit_stats,
    remove_early_exit,
    reset_exit_state,
    set_exit_config,
)
from ee_diffusion.eval.baselines import CacheBaseline, diffusers_cache
from ee_diffusion.schedules import CachedTailResidual
from ee_diffusion.testing import tiny_dit

pytestmark = pytest.mark.usefixtures("one_thread")


def _with_row_3_changed(x):
    """x (4, 1, 8, 8) with row 3 replaced by a large, unrelated input; rows 0-2 unchanged."""
    x2 = x.clone()
    x2[3] = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(9)) * 3
    return x2


@pytest.fixture
def setup():
    model = tiny_dit(num_layers=6)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([1, 2, 3, 4])
    return model, x, labels


@torch.no_grad()
@pytest.mark.parametrize("order", [0, 1, 2])
def test_threshold_zero_reproduces_the_stock_model_exactly(setup, order):
    model, x, labels = setup
    reference = _sample(model, x, labels, DDIMScheduler())
    apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(threshold=0.0, forecast_order=order)))
    with record_exit_stats(model) as stats:
        out = _sample(model, x, labels, DDIMScheduler())
    assert torch.equal(out, reference)
    assert stats.depth_fraction == 1.0
    assert exit_state_nbytes(model) > 0
    remove_early_exit(model)
    assert torch.equal(_sample(model, x, labels, DDIMScheduler()), reference)


@torch.no_grad()
def test_state_is_reported_and_reset(setup):
    model, x, labels = setup
    apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(threshold=0.5)))
    _sample(model, x, labels, DDIMScheduler(), steps=3)
    # Two (B, L, D) float32 tensors (the tail and the decision block's residual) of 4 rows, 16 tokens, width 32,
    # and per row two float32 timesteps and two int64 counters (`TailCacheState`'s formula at order 0).
    assert exit_state_nbytes(model) == 4 * (2 * 16 * 32 * 4 + 2 * 4 + 2 * 8)
    reset_exit_state(model)
    assert exit_state_nbytes(model) == 0
    remove_early_exit(model)


@torch.no_grad()
def test_unchanged_rows_skip_and_a_changed_row_runs_fully(setup):
    """The batch-global failure, handled per row: three rows repeat their input, one row changes a lot."""
    model, x, labels = setup
    t = torch.full((4,), 500)
    x2 = _with_row_3_changed(x)
    stock_first = model(x, t, labels).sample
    stock_second = model(x2, t, labels).sample

    apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(threshold=0.3)))
    first = model(x, t, labels).sample  # first call: every row runs fully and fills its cache
    assert get_exit_stats(model).blocks_run[0].tolist() == [6, 6, 6, 6]
    second = model(x2, t, labels).sample
    assert get_exit_stats(model).blocks_run[0].tolist() == [1, 1, 1, 6]
    remove_early_exit(model)

    assert torch.equal(first, stock_first)
    # Rows 0-2 skip: h_1 + (h_N - h_1) from the previous call with the same input, i.e. the stock output.
    torch.testing.assert_close(second[:3], stock_second[:3], atol=1e-5, rtol=0)
    # Row 3 changed a lot and ran the whole network itself.
    torch.testing.assert_close(second[3], stock_second[3], atol=1e-5, rtol=0)

    # diffusers' FirstBlockCache decides once for the batch: with the same threshold and inputs, the mean
    # change over the batch is below it, so the whole batch - row 3 included - reuses stale residuals.
    with diffusers_cache(model, CacheBaseline("first_block_cache", {"threshold": 0.3}), DDIMScheduler(), 2):
        model(x, t, labels)
        fbc_second = model(x2, t, labels).sample
    assert (fbc_second[3] - stock_second[3]).abs().max() > 0.1


@torch.no_grad()
@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("options", [
    # Random tiny weights change a lot between steps (relative changes 0.9-2.7): 1.5 splits the rows.
    {"threshold": 1.5, "max_cached_calls": 2},
    # Every row skips every other call above t=300 (the rows share their timesteps here, not their histories).
    {"criterion": "timestep", "skip_above_t": 300, "max_cached_calls": 1},
], ids=["residual", "timestep"])
def test_rows_match_their_own_single_row_runs(setup, order, options):
    model, x, labels = setup
    policy = CachedTailResidual(forecast_order=order, **options)
    apply_early_exit(model, EarlyExitConfig(policy=policy))
    with record_exit_stats(model) as stats:
        batched = _sample(model, x, labels, DDIMScheduler(), steps=8)
    depths = torch.stack(stats.blocks_run)  # (calls, B)
    assert (depths == 1).any() and (depths == 6).any(), "the setting should make some rows skip"
    for row in range(4):
        reset_exit_state(model)
        with record_exit_stats(model) as alone_stats:
            alone = _sample(model, x[row:row + 1], labels[row:row + 1], DDIMScheduler(), steps=8)
        torch.testing.assert_close(alone[0], batched[row], atol=1e-5, rtol=0)
        assert torch.stack(alone_stats.blocks_run)[:, 0].tolist() == depths[:, row].tolist()
    remove_early_exit(model)


@torch.no_grad()
def test_forced_full_calls(setup):
    model, x, labels = setup
    t = torch.full((4,), 400)
    # Identical inputs: every row wants to skip on every call after the first; max_cached_calls=2 forces a
    # full call after two skipped ones.
    apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(threshold=0.5, max_cached_calls=2)))
    runs = []
    for _ in range(6):
        model(x, t, labels)
        runs.append(get_exit_stats(model).blocks_run[0][0].item())
    assert runs == [6, 1, 1, 6, 1, 1]
    # Rows below full_below_t always run fully.
    reset_exit_state(model)
    set_exit_config(model, EarlyExitConfig(policy=CachedTailResidual(threshold=0.5, full_below_t=450)))
    low = torch.tensor([400, 400, 900, 900])
    model(x, low, labels)
    model(x, low, labels)
    assert get_exit_stats(model).blocks_run[0].tolist() == [6, 6, 1, 1]
    # Rows above full_above_t (the first, noisiest steps) always run fully too; the others still skip.
    reset_exit_state(model)
    set_exit_config(model, EarlyExitConfig(policy=CachedTailResidual(threshold=0.5, full_above_t=800)))
    model(x, low, labels)
    model(x, low, labels)
    assert get_exit_stats(model).blocks_run[0].tolist() == [1, 1, 6, 6]
    remove_early_exit(model)


@torch.no_grad()
def test_a_new_sampling_run_starts_with_full_calls(setup):
    model, x, labels = setup
    apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(threshold=0.5)))
    for _ in range(2):
        with record_exit_stats(model) as stats:
            _sample(model, x, labels, DDIMScheduler(), steps=4)
        assert stats.blocks_run[0].tolist() == [6, 6, 6, 6]  # timesteps went up: the cache was dropped
    remove_early_exit(model)


@torch.no_grad()
def test_heun_calls_twice_per_step(setup):
    """Heun calls the model at each timestep twice (11 calls for 6 steps). A row that skips at the timestep of
    its newest full call gets that call's residual at every order; the forecast differs from reuse where a row
    skips at a new timestep. (A second full call at one timestep refreshes that point of the row's history:
    checked value by value in tests/test_forecast.py.)"""
    model, x, labels = setup
    scheduler = HeunDiscreteScheduler()
    scheduler.set_timesteps(6)
    assert len(set(scheduler.timesteps.tolist())) == 6 < len(scheduler.timesteps) == 11
    reference = _sample(model, x, labels, HeunDiscreteScheduler(), steps=6)
    outputs = {}
    for order in (0, 2):
        apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(threshold=0.0, forecast_order=order)))
        assert torch.equal(_sample(model, x, labels, HeunDiscreteScheduler(), steps=6), reference)
        set_exit_config(model, EarlyExitConfig(policy=CachedTailResidual(threshold=1.0, forecast_order=order)))
        with record_exit_stats(model) as stats:
            outputs[order] = _sample(model, x, labels, HeunDiscreteScheduler(), steps=6)
        remove_early_exit(model)
        assert stats.num_calls == 11 and 0 < stats.depth_fraction < 1 and torch.isfinite(outputs[order]).all()
    assert not torch.equal(outputs[2], outputs[0]) and not torch.equal(outputs[2], reference)


@torch.no_grad()
def test_guidance_pairs_skip_together_or_alone():
    model = tiny_dit(num_layers=6)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    batch = torch.cat([x, x])
    labels = torch.tensor([3, 4, 10, 10])  # [cond; uncond], null id 10
    for pairing in ("together", "independent"):
        apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(threshold=0.2), cfg_pairing=pairing))
        with record_exit_stats(model) as stats:
            for t in (900, 850, 800, 750, 700, 650):
                model(batch, torch.full((4,), t), labels)
        depths = torch.stack(stats.blocks_run)
        if pairing == "together":
            assert all(stats.cfg_paired)
            assert torch.equal(depths[:, :2], depths[:, 2:])
        remove_early_exit(model)


@torch.no_grad()
def test_other_criteria():
    model = tiny_dit(num_layers=6)
    x = torch.randn(4, 1, 8, 8)
    labels = torch.tensor([1, 2, 3, 4])
    t = torch.tensor([100, 300, 700, 900])
    apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(criterion="timestep", skip_above_t=500)))
    model(x, t, labels)
    model(x, t, labels)
    assert get_exit_stats(model).blocks_run[0].tolist() == [6, 6, 1, 1]
    remove_early_exit(model)

    heads = UncertaintyHeads.from_model(model)
    with torch.no_grad():
        for head in heads.heads:
            head.weight.zero_()
            head.bias.fill_(3.0)  # certainty sigmoid(3) = 0.95 everywhere
    policy = CachedTailResidual(criterion="uncertainty", certainty_threshold=0.9)
    assert policy.needs_certainty
    apply_early_exit(model, EarlyExitConfig(policy=policy), heads=heads)
    model(x, t, labels)
    model(x, t, labels)
    assert get_exit_stats(model).blocks_run[0].tolist() == [1, 1, 1, 1]
    remove_early_exit(model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": "0.1"}, "threshold"),
        ({"exit_block": 0}, "exit_block"),
        ({"criterion": "batch"}, "criterion"),
        ({"certainty_threshold": 1.5}, "certainty_threshold"),
        ({"max_cached_calls": 0}, "max_cached_calls"),
        ({"full_below_t": -5}, "full_below_t"),
        ({"full_below_t": 300, "full_above_t": 200}, "full_above_t must be a number >= 300"),
        ({"threshold": 0.2, "join_threshold": 0.3}, "join_threshold"),
        ({"join_threshold": 0.05, "criterion": "timestep"}, "join_threshold needs criterion='residual'"),
        ({"forecast_order": 3}, r"forecast_order must be one of \(0, 1, 2\), got 3"),
        ({"forecast_order": True}, "forecast_order"),
        ({"forecast_order": 1.0}, "forecast_order"),
        ({"state_dtype": "int8"}, r"state_dtype must be None or one of \('float32', 'bfloat16', 'float16'\), got 'int8'"),
        ({"state_dtype": torch.float16}, "state_dtype"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CachedTailResidual(**kwargs)


def test_exit_block_must_leave_a_tail_and_config_round_trips():
    model = tiny_dit(num_layers=4)
    with pytest.raises(ValueError, match="exit_block"):
        apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(exit_block=4)))
    config = EarlyExitConfig(policy=CachedTailResidual(threshold=0.05, exit_block=2, max_cached_calls=4))
    assert EarlyExitConfig.from_json(config.to_json()) == config
    joined = EarlyExitConfig(policy=CachedTailResidual(threshold=0.3, join_threshold=0.1))
    assert EarlyExitConfig.from_json(joined.to_json()) == joined


@torch.no_grad()
def test_rows_due_soon_join_a_tail_that_runs_anyway(setup):
    """join_threshold: rows 0-2 repeat their input (change 0), row 3 changes a lot and must run the tail."""
    model, x, labels = setup
    t = torch.full((4,), 500)
    x2 = _with_row_3_changed(x)
    stock_second = model(x2, t, labels).sample

    def depths(join_threshold, second_input):
        apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(threshold=0.3, join_threshold=join_threshold)))
        model(x, t, labels)
        out = model(second_input, t, labels).sample
        blocks = get_exit_stats(model).blocks_run[0].tolist()
        remove_early_exit(model)
        return blocks, out

    assert depths(None, x2)[0] == [1, 1, 1, 6]  # rows decide alone
    assert depths(0.3, x2)[0] == [1, 1, 1, 6]  # a change of 0 is below join_threshold: no join
    blocks, out = depths(0.0, x2)  # every row joins the tail that row 3 runs
    assert blocks == [6, 6, 6, 6]
    assert torch.equal(out, stock_second)
    assert depths(0.0, x)[0] == [1, 1, 1, 1]  # no row must run: nobody runs the tail
