"""BlockForecast: per-row forecasts of every block's attention and feed-forward outputs (TaylorSeer's structure)."""

import copy

import pytest
import torch
from _sampling import cfg_sample

from ee_diffusion import (
    EarlyExitConfig,
    apply_early_exit,
    early_exit,
    exit_state_nbytes,
    get_exit_stats,
    remove_early_exit,
    reset_exit_state,
    set_exit_config,
)
from ee_diffusion.forward_chain import HOOK_ATTR
from ee_diffusion.layout import BatchLayout
from ee_diffusion.schedules import BlockForecast, BlockForecastState, CachedTailResidual, StaticDepth
from ee_diffusion.testing import random_bridges, tiny_dit, tiny_pixart, tiny_sd3, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = ("dit", "pixart", "sd3")
#: Per-row timesteps of 6 calls: row b lags row 0 by 50 b (rows sit at different points of their schedules).
CALLS = [torch.tensor([950.0, 900, 850, 800]) - 100 * i for i in range(6)]
#: With interval=2, full_above_t=700, rows computing per call (see test_rows_match_their_own_single_row_runs).
COMPUTING = [4, 3, 2, 2, 2, 2]


def _setup(kind, rows=4, num_layers=3):
    """A tiny model of `kind`, a latent batch and the conditioning `_call` takes."""
    g = torch.Generator().manual_seed(3)
    if kind == "dit":
        return tiny_dit(num_layers=num_layers), torch.randn(rows, 1, 8, 8, generator=g), torch.arange(1, rows + 1)
    model = (tiny_pixart if kind == "pixart" else tiny_sd3)(num_layers=num_layers)
    return model, torch.randn(rows, 4, 8, 8, generator=g), (torch.randn(rows, 5, 16, generator=g),
                                                            torch.randn(rows, 8, generator=g))


def _take(cond, rows):
    return cond[rows] if isinstance(cond, torch.Tensor) else tuple(c[rows] for c in cond)


@torch.no_grad()
def _call(kind, model, x, t, cond):
    if kind == "dit":
        return model(x, timestep=t, class_labels=cond).sample
    if kind == "pixart":
        return model(x, encoder_hidden_states=cond[0], timestep=t).sample
    return model(x, encoder_hidden_states=cond[0], pooled_projections=cond[1], timestep=t).sample


def _count_rows(model, kind):
    """Per block, the rows its attention and its feed-forward really compute (pre-hooks inside them)."""
    seen = []
    for index, block in enumerate(model.transformer_blocks):
        attn = block.attn1 if kind != "sd3" else block.attn
        for module, name in ((attn.to_q, "attn"), (block.ff.net[-1], "ff")):
            module.register_forward_pre_hook(
                lambda module, args, index=index, name=name: seen.append((index, name, args[0].shape[0])))
    return seen


def _hooked_submodules(model):
    """Names of the hooked modules below the blocks ("transformer_blocks.0.attn1", ...)."""
    return [name for name, module in model.named_modules() if HOOK_ATTR in vars(module) and name.count(".") >= 2]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy", [BlockForecast(interval=1, forecast_order=2),
                                    BlockForecast(interval=4, full_above_t=0.0)], ids=["interval1", "always_warm"])
def test_never_forecasting_is_the_stock_model_and_removal_restores_it(kind, policy):
    model, x, cond = _setup(kind)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    stock = [_call(kind, model, x, t, cond) for t in CALLS]
    apply_early_exit(model, EarlyExitConfig(policy=policy))
    assert _hooked_submodules(model)  # attention and feed-forward modules are hooked
    assert all(torch.equal(_call(kind, model, x, t, cond), want) for t, want in zip(CALLS, stock))
    remove_early_exit(model)
    assert not [name for name, module in model.named_modules() if {HOOK_ATTR, "forward"} & set(vars(module))]
    assert all(torch.equal(_call(kind, model, x, t, cond), want) for t, want in zip(CALLS, stock))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype and state[k].device == v.device
               for k, v in params.items())


@pytest.mark.parametrize("kind", KINDS)
def test_a_row_forecasting_at_its_last_computed_input_returns_the_stock_output(kind):
    """Same input, same timestep: the forecast of every sub-module is the output it had, so the model's output is
    the stock one bit for bit (all rows forecast), or to rounding (rows 0 and 2 restart and compute alone)."""
    model, x, cond = _setup(kind)
    t = torch.full((4,), 500.0)
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=3, forecast_order=2)))
    seen = _count_rows(model, kind)
    first = _call(kind, model, x, t, cond)
    assert torch.equal(_call(kind, model, x, t, cond), first)  # every row forecasts: nothing is computed
    assert [n for _, _, n in seen] == [4] * 6
    mixed = torch.tensor([600.0, 500, 600, 500])  # rows 0 and 2 went up: a new run, they compute
    out = _call(kind, model, x, mixed, cond)
    assert [n for _, _, n in seen[6:]] == [2] * 6
    remove_early_exit(model)
    torch.testing.assert_close(out, _call(kind, model, x, mixed, cond), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_match_their_own_single_row_runs(kind):
    """interval=2, full_above_t=700 on rows that lag each other by 50: they compute on different calls (row 0 at
    950, 850, 750, 550; row 3 at 800, 600, 400), and each row of the batch equals that row run alone. Sub-modules
    really run on the computing rows only."""
    model, x, cond = _setup(kind)
    stock = _call(kind, model, x, CALLS[-1], cond)
    policy = BlockForecast(interval=2, forecast_order=2, full_above_t=700)
    apply_early_exit(model, EarlyExitConfig(policy=policy))
    seen = _count_rows(model, kind)
    batched = [_call(kind, model, x, t, cond) for t in CALLS]
    per_call = len(model.transformer_blocks) * 2
    assert [n for _, _, n in seen] == [n for n in COMPUTING for _ in range(per_call)]
    assert not torch.allclose(batched[-1], stock, atol=1e-3)  # rows 0 and 3 forecast there
    for row in range(4):
        reset_exit_state(model)
        alone = [_call(kind, model, x[row:row + 1], t[row:row + 1], _take(cond, slice(row, row + 1))) for t in CALLS]
        for a, b in zip(alone, batched):
            torch.testing.assert_close(a[0], b[row], atol=1e-5, rtol=0)
    remove_early_exit(model)


@pytest.mark.parametrize("pairing", ["together", "independent"])
def test_guidance_halves_keep_their_own_history(pairing):
    model = tiny_dit(num_layers=3)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([3, 4])
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=2), cfg_pairing=pairing))
    with torch.no_grad():
        batched = cfg_sample(model, x, labels)
    state = model._ee_diffusion_hook.engine.policy_state.get(None)  # the one batch: no cache_context branch
    history = state.diffs[(1, "ff", 0)]  # (4, p+1, L, D): rows [cond 0, cond 1, uncond 0, uncond 1]
    assert not torch.allclose(history[0], history[2])  # a conditional row and its partner: two histories
    assert 0 < state.compute_fraction < 1
    for image in range(2):
        reset_exit_state(model)
        with torch.no_grad():
            alone = cfg_sample(model, x[image:image + 1], labels[image:image + 1])
        # Batch-size rounding (4 rows against 2), amplified by 8 guided steps of extrapolation.
        torch.testing.assert_close(alone[0], batched[image], atol=1e-4, rtol=0)
    remove_early_exit(model)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_the_forecast_is_exact_on_a_polynomial_of_its_order(order):
    """A sub-module whose output is a polynomial in its row's timestep: the forecast rows get it exactly at the
    policy's order; a repeated timestep replaces its point (the stale value computed first at 700 must not count)."""
    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64)  # (degree + 1, B, L, D)

    def poly(t, rows, degree):  # (R,) timesteps of the rows `rows` -> (R, L, D)
        return sum(coeffs[k, rows] * (t[:, None, None] / 1000) ** k for k in range(degree + 1))

    policy = BlockForecast(interval=4, forecast_order=order, full_above_t=400)
    for degree in (order, order + 1):
        state, computed = policy.create_state(), []

        def submodule(h, t, rows, stale):  # what the computing rows get: (R, L, D)
            computed.append(rows.tolist())
            return poly(t, rows, degree) + stale

        # Above 400 every row computes; the stale value at 700 is corrected at 700; below 400 every row forecasts.
        for base, stale in ((900, 0.0), (700, 5.0), (700, 0.0), (450, 0.0), (300, None), (200, None)):
            t = torch.tensor([base, base - 10, base - 20], dtype=torch.float64)
            call = policy.start_forecast(state, t, paired=False, inputs_key=())
            args = (torch.zeros(3, 5, 6, dtype=torch.float64), t, torch.arange(3), stale or 0.0)
            out = call.run(0, "ff", submodule, args, {})
            call.finish()
        assert computed == [[0, 1, 2]] * 4  # the forecast calls computed nothing
        if degree == order:
            torch.testing.assert_close(out, poly(t, torch.arange(3), degree))
        else:
            assert not torch.allclose(out, poly(t, torch.arange(3), degree))


def test_the_state_size_is_the_formula():
    """V per row: DiT 2 k L D, PixArt 3 k L D, SD3 k (2 L + 2 L_t) D - L_t D (the last block has no ff_context);
    L = 16 tokens, L_t = 5 text tokens, D = 32 (DiT) or 16."""
    for kind, values in (("dit", 2 * 3 * 16 * 32), ("pixart", 3 * 3 * 16 * 16), ("sd3", 3 * 42 * 16 - 5 * 16)):
        model, x, cond = _setup(kind)
        for order, state_dtype, itemsize in ((0, None, 4), (1, "bfloat16", 2), (2, "float16", 2)):
            policy = BlockForecast(forecast_order=order, state_dtype=state_dtype)
            apply_early_exit(model, EarlyExitConfig(policy=policy))
            assert exit_state_nbytes(model) == 0
            _call(kind, model, x, CALLS[0], cond)
            expected = 4 * ((order + 1) * values * itemsize + 4 * (order + 2) + 16)
            assert exit_state_nbytes(model) == expected == BlockForecastState.bound(4, values, order, itemsize)
            reset_exit_state(model)
            assert exit_state_nbytes(model) == 0
            remove_early_exit(model)
    model, x, labels = _setup("dit")  # depth 2: only blocks 0 and 1 keep histories
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(depth=2, forecast_order=1)))
    _call("dit", model, x, CALLS[0], labels)
    assert exit_state_nbytes(model) == BlockForecastState.bound(4, 2 * 2 * 16 * 32, 1, 4)
    remove_early_exit(model)


def test_depth_composes_with_trained_exits():
    """depth=k: every row stops after block k-1 and is decoded by the model's head (as StaticDepth(k)); the blocks
    before it forecast, the blocks after it never run."""
    model, x, labels = _setup("dit", num_layers=4)
    apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(2)))
    static = [_call("dit", model, x, t, labels) for t in CALLS[:3]]
    set_exit_config(model, EarlyExitConfig(policy=BlockForecast(depth=2, interval=1)))
    assert all(torch.equal(_call("dit", model, x, t, labels), want) for t, want in zip(CALLS[:3], static))
    assert get_exit_stats(model).blocks_run[0].tolist() == [2] * 4
    set_exit_config(model, EarlyExitConfig(policy=BlockForecast(depth=2, interval=2)))
    seen = _count_rows(model, "dit")
    _call("dit", model, x, CALLS[0], labels)
    _call("dit", model, x, CALLS[1], labels)
    assert seen == [(0, "attn", 4), (0, "ff", 4), (1, "attn", 4), (1, "ff", 4)]  # call 2 forecasts blocks 0 and 1
    with pytest.raises(ValueError, match="depth must be at most the model's 4 blocks, got 5"):
        set_exit_config(model, EarlyExitConfig(policy=BlockForecast(depth=5)))
    remove_early_exit(model)


def test_deepcopy_config_changes_and_a_failed_call():
    model, x, labels = _setup("dit")
    stock = [_call("dit", model, x, t, labels) for t in CALLS]
    apply_early_exit(model, EarlyExitConfig())  # no policy: the sub-modules are not hooked
    assert not _hooked_submodules(model)
    set_exit_config(model, EarlyExitConfig(policy=BlockForecast(interval=3)))  # calls: computed, 2 forecast, ...
    assert _hooked_submodules(model) == ["transformer_blocks.0.attn1", "transformer_blocks.0.ff",
                                         "transformer_blocks.1.attn1", "transformer_blocks.1.ff",
                                         "transformer_blocks.2.attn1", "transformer_blocks.2.ff"]
    for t in CALLS[:2]:
        _call("dit", model, x, t, labels)
    twin = copy.deepcopy(model)  # copies the hooks and the rows' histories with the model
    assert twin.transformer_blocks[0].ff.forward.module is twin.transformer_blocks[0].ff
    seen = _count_rows(model, "dit")
    assert torch.equal(_call("dit", twin, x, CALLS[2], labels), _call("dit", model, x, CALLS[2], labels))
    assert not seen  # both forecast, each from its own copy of the history
    with early_exit(model, EarlyExitConfig(policy=StaticDepth(1))):
        assert not _hooked_submodules(model)
    assert len(_hooked_submodules(model)) == 6
    _call("dit", model, x, CALLS[3], labels)  # computed; CALLS[4] would forecast
    # A call that raises halfway (label 11 is out of range) leaves no half-written history: the next call computes.
    with pytest.raises(IndexError):
        _call("dit", model, x, CALLS[4], torch.tensor([1, 2, 3, 11]))
    _call("dit", model, x, CALLS[4], labels)
    assert seen[-6:] == [(i, name, 4) for i in range(3) for name in ("attn", "ff")]
    for copy_of in (model, twin):
        remove_early_exit(copy_of)
        assert all(torch.equal(_call("dit", copy_of, x, t, labels), want) for t, want in zip(CALLS, stock))


def test_unets_and_bad_values_are_refused():
    unet = tiny_unet()
    supported = "supported model classes: DiTTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel"
    for bridges in (None, random_bridges(unet)):
        with pytest.raises(ValueError, match=f"UNet2DModel does not have .U-Nets are not supported.; {supported}"):
            apply_early_exit(unet, EarlyExitConfig(policy=BlockForecast()), bridges=bridges)
    assert not hasattr(unet, HOOK_ATTR)
    model, x, labels = _setup("dit")
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast()))
    model.transformer_blocks[1].set_chunk_feed_forward(4, dim=1)
    with pytest.raises(ValueError, match=r"feed-forward chunking is on .* model.disable_forward_chunking\(\)"):
        _call("dit", model, x, CALLS[0], labels)
    model.transformer_blocks[1].set_chunk_feed_forward(None, dim=0)
    model.enable_gradient_checkpointing()
    with pytest.raises(ValueError, match="training-free inference cache; .* call it under torch.no_grad"):
        model(x, timestep=CALLS[0], class_labels=labels)
    remove_early_exit(model)
    config = EarlyExitConfig(policy=BlockForecast(interval=4, forecast_order=2, full_above_t=850.0, depth=3,
                                                  state_dtype="bfloat16"))
    assert EarlyExitConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("kwargs, match", [
    ({"interval": 0}, r"interval must be an integer >= 1 \(a row computes every interval-th call; 1 never forecasts\), "
                      "got 0"),
    ({"interval": 2.0}, "interval must be an integer >= 1"),
    ({"forecast_order": 3}, r"forecast_order must be one of \(0, 1, 2\), got 3"),
    ({"forecast_order": True}, "forecast_order"),
    ({"full_below_t": -1}, "full_below_t must be a number >= 0.0, got -1"),
    ({"full_below_t": 300, "full_above_t": 200}, "full_above_t must be a number >= 300.0, got 200"),
    ({"depth": 0}, "depth must be an integer >= 1"),
    ({"state_dtype": "int8"}, r"state_dtype must be None or one of \('float32', 'bfloat16', 'float16'\), got 'int8'"),
    ({"verify_threshold": 0.0}, "verify_threshold must be a number > 0.0, got 0.0"),
    ({"verify_threshold": "0.1"}, "verify_threshold must be a number > 0.0, got '0.1'"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockForecast(**kwargs)


@pytest.mark.slow  # torch.compile traces
def test_compile_adds_no_graph_breaks_beyond_the_tail_cache():
    """Under torch.compile (aot_eager) a call breaks the graph only at the count of the computing rows (dynamo counts
    that one break once per frame it splits): no more breaks than CachedTailResidual, for any depth; equal to eager."""
    x, t, labels = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)), CALLS[0], torch.arange(4)
    steps = (t, t - 40)  # every row: computed, then forecast (or skipped)
    counts = {}
    for name, policy in (("tail", CachedTailResidual(threshold=1e9, forecast_order=2)),
                         ("forecast", BlockForecast(interval=2, forecast_order=2)),
                         ("verified", BlockForecast(interval=2, forecast_order=2, verify_threshold=1e9))):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        model = tiny_dit(num_layers=3)
        apply_early_exit(model, EarlyExitConfig(policy=policy), layout=BatchLayout())
        eager = [_call("dit", model, x, step, labels) for step in steps]
        reset_exit_state(model)
        compiled = torch.compile(model, backend="aot_eager")
        for step, expected in zip(steps, eager):
            torch.testing.assert_close(_call("dit", compiled, x, step, labels), expected, atol=1e-6, rtol=0)
        breaks = torch._dynamo.utils.counters["graph_break"]
        assert all("Tensor.item()" in reason for reason in breaks), dict(breaks)
        counts[name] = sum(breaks.values())
        remove_early_exit(model)
    torch._dynamo.reset()
    assert 0 < counts["forecast"] <= counts["tail"] and 0 < counts["verified"] <= counts["tail"], counts


@pytest.mark.parametrize("kind", ["dit", "pixart"])
def test_a_forecast_step_is_the_block_with_its_forecasts_bit_for_bit(kind, monkeypatch):
    """On a call where every row forecasts, DiT's and PixArt's blocks run only their gates and residual additions
    (`BlockStack.forecast_step`): the output equals the block run with its hooked sub-modules forecast, exactly."""
    from ee_diffusion.engine.stacks import SequentialEngine

    model, x, cond = _setup(kind)
    calls = [torch.full((4,), t) for t in (950.0, 900.0, 850.0, 800.0, 750.0)]  # computed at calls 0, 2, 4

    def run():
        norms = []  # the rows through each block's first LayerNorm
        handles = [(block.norm1.norm if kind == "dit" else block.norm1).register_forward_pre_hook(
            lambda module, args: norms.append(args[0].shape[0])) for block in model.transformer_blocks]
        apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=2, forecast_order=1)))
        outputs = [_call(kind, model, x, t, cond) for t in calls]
        remove_early_exit(model)
        for handle in handles:
            handle.remove()
        return outputs, len(norms)

    stepped, stepped_norms = run()
    monkeypatch.setattr(SequentialEngine, "forecast_step", lambda *args: None)  # every block runs as it is
    as_is, as_is_norms = run()
    for a, b in zip(stepped, as_is):
        assert torch.equal(a, b)
    assert (stepped_norms, as_is_norms) == (3 * 3, 5 * 3)  # 3 blocks: the norms ran on the computed calls only
