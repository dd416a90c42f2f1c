"""CachedTailResidual's forecast of the skipped tail: per row, in the row's timestep, orders 0-2."""

import pytest
import torch
from _sampling import cfg_sample

from ee_diffusion import (
    EarlyExitConfig,
    UncertaintyHeads,
    apply_early_exit,
    exit_state_nbytes,
    get_exit_stats,
    record_exit_stats,
    remove_early_exit,
    reset_exit_state,
)
from ee_diffusion.schedules import CachedTailResidual, TailCacheState
from ee_diffusion.testing import tiny_dit

pytestmark = pytest.mark.usefixtures("one_thread")


def _lagrange(points, t):
    """The polynomial through [(t_j, r_j)] at t, in Lagrange form (independent of the policy's Newton form)."""
    total = 0.0
    for j, (tj, rj) in enumerate(points):
        weight = 1.0
        for m, (tm, _) in enumerate(points):
            if m != j:
                weight *= (t - tm) / (tj - tm)
        total = total + weight * rj
    return total


def _stock_call(model, x, t, y, tail=None):
    """The stock model's output, h_1 and h_N; with `tail` (h_1 -> hidden), the last block outputs tail(h_1)."""
    seen = {}

    def first(module, args, output):
        seen["h1"] = output

    def last(module, args, output):
        seen["hN"] = output
        return None if tail is None else tail(seen["h1"])

    handles = [model.transformer_blocks[0].register_forward_hook(first),
               model.transformer_blocks[-1].register_forward_hook(last)]
    try:
        out = model(x, timestep=t, class_labels=y).sample
    finally:
        for handle in handles:
            handle.remove()
    return out, seen["h1"], seen["hN"]


@torch.no_grad()
@pytest.mark.parametrize("order", [0, 1, 2])
def test_a_skipping_row_adds_its_divided_difference_extrapolation(order):
    """Heads decide (full or skip) per call; each row has its own timesteps, and two full calls at one timestep
    (as Heun makes them) refresh that point. Expected: the stock model with its last block's output replaced by
    h_1 + the Lagrange polynomial through the row's last order + 1 distinct-timestep tail residuals."""
    model = tiny_dit(num_layers=6)
    labels = torch.tensor([1, 5, 7])
    offsets = torch.tensor([0.0, -37.0, -90.0])  # per-row timesteps: row 2 lags row 0 by 90
    calls = [(900, True), (900, True), (800, False), (700, True), (650, False), (500, True), (500, True),
             (380, False), (300, False)]
    g = torch.Generator().manual_seed(4)
    inputs = [torch.randn(3, 1, 8, 8, generator=g) for _ in calls]

    expected, history = [], [[] for _ in range(3)]  # per row: [(t, h_N - h_1)] of its full calls
    for (base, full), x in zip(calls, inputs):
        t = base + offsets
        if full:
            out, h1, hN = _stock_call(model, x, t, labels)
            for row in range(3):
                point = (t[row].item(), hN[row] - h1[row])
                same = history[row] and history[row][-1][0] == point[0]
                history[row] = history[row][:-1] + [point] if same else (history[row] + [point])[-(order + 1):]
        else:
            forecast = torch.stack([_lagrange(history[row], t[row].item()) for row in range(3)])
            out = _stock_call(model, x, t, labels, tail=lambda h1: h1 + forecast)[0]
        expected.append(out)

    heads = UncertaintyHeads.from_model(model)
    for head in heads.heads:
        head.weight.zero_()  # every row's certainty is sigmoid(bias)
    apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(criterion="uncertainty", forecast_order=order)),
                     heads=heads)
    for (base, full), x, want in zip(calls, inputs, expected):
        for head in heads.heads:
            head.bias.fill_(-3.0 if full else 3.0)  # certainty 0.05 (run fully) or 0.95 (skip)
        out = model(x, timestep=base + offsets, class_labels=labels).sample
        assert get_exit_stats(model).blocks_run[0].tolist() == [6 if full else 1] * 3
        if order == 0:
            assert torch.equal(out, want)  # h_1 + the stored residual: today's stale reuse, bit for bit
        else:
            torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    remove_early_exit(model)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_the_forecast_is_exact_on_a_polynomial_of_its_order(order):
    """The state alone, on residuals that are exact polynomials in t: order p reproduces degree p; a repeated
    timestep replaces its point (the stale value at t=700 must not count)."""
    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(3, 2, 4, 6, generator=g, dtype=torch.float64)  # (degree + 1, B, L, D)

    def residual(t, degree):  # (B,) timesteps -> (B, L, D)
        return sum(coeffs[k] * (t[:, None, None] / 1000) ** k for k in range(degree + 1))

    rows = torch.arange(2)
    state = TailCacheState(order=order)
    state.allocate(2, torch.zeros(2, 4, 6, dtype=torch.float64), head_residual=False)
    for t, stale in ((900, False), (700, True), (700, False), (450, False)):
        t = torch.tensor([t, t - 50.0], dtype=torch.float64)
        state.record(rows, t, residual(t, order) + (5.0 if stale else 0.0))
    at = torch.tensor([300.0, 200.0], dtype=torch.float64)
    torch.testing.assert_close(state.forecast(rows, at, torch.float64), residual(at, order))
    if order < 2:  # one degree more than the order: the forecast misses
        assert not torch.allclose(state.forecast(rows, at, torch.float64), residual(at, order + 1))


@torch.no_grad()
@pytest.mark.parametrize("pairing", ["together", "independent"])
def test_guidance_branches_keep_their_own_history(pairing):
    """[cond; uncond] rows of two images equal each image's pair sampled alone; with independent pairing a
    branch skips while its partner runs fully, so the two branches' histories differ."""
    # float64: a batch of 4 rows sums its matmuls in another order than a batch of 2, which in float32 moves
    # outputs by ~1e-5 at some thread counts; in float64 the rows must agree to 1e-10.
    model = tiny_dit(num_layers=6).double()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    labels = torch.tensor([3, 4])
    config = EarlyExitConfig(policy=CachedTailResidual(threshold=1.0, max_cached_calls=2, forecast_order=2),
                             cfg_pairing=pairing)
    apply_early_exit(model, config)
    with record_exit_stats(model) as stats:
        batched = cfg_sample(model, x, labels)
    depths = torch.stack(stats.blocks_run)  # (calls, 4): rows [cond 0, cond 1, uncond 0, uncond 1]
    assert (depths == 1).any()
    if pairing == "together":
        assert torch.equal(depths[:, :2], depths[:, 2:])
    else:
        assert not torch.equal(depths[:, :2], depths[:, 2:])
    for image in range(2):
        reset_exit_state(model)
        with record_exit_stats(model) as alone_stats:
            alone = cfg_sample(model, x[image:image + 1], labels[image:image + 1])
        torch.testing.assert_close(alone[0], batched[image], atol=1e-10, rtol=0)
        assert torch.stack(alone_stats.blocks_run).tolist() == depths[:, [image, 2 + image]].tolist()
    remove_early_exit(model)


@torch.no_grad()
def test_state_bytes_scale_with_batch_order_and_precision():
    model = tiny_dit(num_layers=4)  # L = 16 tokens of width D = 32, float32
    for batch in (2, 4):
        x, labels = torch.randn(batch, 1, 8, 8), torch.arange(batch)
        for criterion, stored in (("residual", 1), ("timestep", 0)):
            for order in (0, 1, 2):
                sizes = {}
                for state_dtype, itemsize in ((None, 4), ("float16", 2), ("bfloat16", 2)):
                    policy = CachedTailResidual(criterion=criterion, forecast_order=order, state_dtype=state_dtype)
                    apply_early_exit(model, EarlyExitConfig(policy=policy))
                    model(x, torch.full((batch,), 500), labels)
                    sizes[state_dtype] = exit_state_nbytes(model)
                    remove_early_exit(model)
                    tensors = batch * 16 * 32 * itemsize * (order + 1 + stored)  # history and head residual
                    assert sizes[state_dtype] == tensors + batch * (4 * (order + 2) + 16), (criterion, order)
                small = batch * (4 * (order + 2) + 16)  # timesteps and counters stay full precision
                assert sizes["float16"] - small == (sizes[None] - small) // 2 == sizes["bfloat16"] - small


def test_config_round_trips_and_old_json_loads():
    policy = CachedTailResidual(threshold=0.2, forecast_order=2, state_dtype="float16", max_cached_calls=4,
                                full_above_t=880.0)
    config = EarlyExitConfig(policy=policy)
    assert EarlyExitConfig.from_json(config.to_json()) == config
    old = {"type": "CachedTailResidual", "threshold": 0.1, "exit_block": 1, "criterion": "residual",
           "certainty_threshold": 0.9, "skip_above_t": 500.0, "max_cached_calls": 3, "full_below_t": 0.0,
           "join_threshold": None}  # written before forecasts existed
    loaded = EarlyExitConfig.from_dict({"policy": old}).policy
    assert loaded == CachedTailResidual(threshold=0.1) and loaded.forecast_order == 0 and loaded.state_dtype is None
    assert loaded.full_above_t is None  # written before the warm-up steps existed
