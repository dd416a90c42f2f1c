"""The early-exit engine on tiny real DiT models: exactness, real skipping, per-row compaction, CFG pairs,
hook removal, statistics and gradients."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from diffusers import UNet2DModel

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import (
    _engine_of,
    apply_early_exit,
    early_exit,
    exit_state_nbytes,
    get_exit_stats,
    is_early_exit_applied,
    record_exit_stats,
    remove_early_exit,
    reset_exit_state,
    set_exit_config,
)
from ee_diffusion.families import FamilyAdapter
from ee_diffusion.layout import BatchLayout
from ee_diffusion.schedules import (
    CachedTailResidual,
    ExitContext,
    ExitPolicy,
    StaticDepth,
    TailCacheState,
    TimestepSchedule,
)
from ee_diffusion.testing import tiny_dit

NUM_BLOCKS = 6  # the `dit` fixture
NULL = 10  # the `dit` fixture's null class id (num_embeds_ada_norm)


# ------------------------------------------------------------------------------------------------- helpers
def run(model, x, t, y):
    with torch.no_grad():
        return model(x, timestep=t, class_labels=y).sample


def hand_hidden(model, x, t, y, k):
    """h_{k-1}: pos_embed, then blocks 0..k-1 called by hand (as the model's forward calls them)."""
    h = model.pos_embed(x)
    for block in model.transformer_blocks[:k]:
        h = block(h, timestep=t, class_labels=y)
    return h


def hand_exit(model, x, t, y, k):
    """The prediction "exited after block k-1": the model's own head applied to h_{k-1}."""
    with torch.no_grad():
        return get_adapter(model).decoder.decode(hand_hidden(model, x, t, y, k), timestep=t, class_labels=y)


@contextlib.contextmanager
def count_attn1(model):
    """Record (block index, batch size) of every real computation of a block, via a pre-hook on `attn1`.

    The block's own __call__ still happens for skipped blocks (the engine's hook returns early), so counting
    there would count nothing useful; attn1 only runs when the block body really runs.
    """
    seen: list[tuple[int, int]] = []
    handles = [
        block.attn1.register_forward_pre_hook(lambda mod, args, i=i: seen.append((i, args[0].shape[0])))
        for i, block in enumerate(model.transformer_blocks)
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def assert_unhooked(model):
    for module in (model, *model.transformer_blocks):
        assert not hasattr(module, "_diffusers_hook")
        assert "forward" not in module.__dict__
    assert not is_early_exit_applied(model)


class RowDepths:
    """A custom (dynamic) policy: row r of the batch exits after block depth[r] - 1 (the ExitPolicy protocol)."""

    needs_certainty = False

    def __init__(self, depths):
        self.depths = torch.as_tensor(depths)
        self.contexts: list[tuple[int, list[int]]] = []

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        self.contexts.append((ctx.block_index, ctx.rows.tolist()))
        return self.depths[ctx.rows] <= ctx.block_index + 1


class WantsFrom:
    """A dynamic policy: row r wants to exit after every block index >= first[r]."""

    needs_certainty = False

    def __init__(self, first):
        self.first = torch.as_tensor(first)

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        return self.first[ctx.rows] <= ctx.block_index


class PlannedRowDepths(ExitPolicy):
    """A custom policy with `plan_depths` (planned up front, no per-block decisions)."""

    def __init__(self, depths):
        self.depths = torch.as_tensor(depths)

    def plan_depths(self, timesteps, num_blocks):
        return self.depths.clone()

    def exit_mask(self, ctx):  # pragma: no cover - the engine uses the plan
        return self.depths[ctx.rows] == ctx.block_index + 1


def expected_attn1(depths, num_blocks=NUM_BLOCKS):
    """(block, rows still active) for every block that must be computed, given per-row depths."""
    return [(i, sum(d > i for d in depths)) for i in range(num_blocks) if any(d > i for d in depths)]


# ------------------------------------------------------------------------------------------------ 1. exits off
def test_exits_off_is_the_stock_model(dit, inputs):
    x, t, y = inputs
    stock = run(dit, x, t, y)
    apply_early_exit(dit, EarlyExitConfig())
    with count_attn1(dit) as seen:
        out = run(dit, x, t, y)
    assert torch.equal(out, stock)
    assert seen == [(i, 4) for i in range(NUM_BLOCKS)]
    stats = get_exit_stats(dit)
    assert stats.num_calls == 1
    assert stats.blocks_run[0].tolist() == [NUM_BLOCKS] * 4
    assert stats.depth_fraction == 1.0
    assert stats.cfg_paired == [False]
    assert torch.equal(stats.timesteps[0], t.float())


def test_exits_off_return_dict_false_and_positional(dit, inputs):
    x, t, y = inputs
    with torch.no_grad():
        stock = dit(x, timestep=t, class_labels=y, return_dict=False)[0]
        apply_early_exit(dit)
        out = dit(x, timestep=t, class_labels=y, return_dict=False)[0]
        positional = dit(x, t, y).sample  # positional arguments reach the engine too
    assert torch.equal(out, stock)
    assert torch.equal(positional, stock)
    assert get_exit_stats(dit).timesteps[0].tolist() == t.float().tolist()


def test_one_timestep_for_the_whole_batch(dit, inputs):
    """The stock DiT broadcasts a (1,) timestep over the batch; so must the engine, with exits off or on."""
    x, _, y = inputs
    t1 = torch.tensor([600])
    stock = run(dit, x, t1, y)
    expected = hand_exit(dit, x, t1, y, 3)
    apply_early_exit(dit)
    assert torch.equal(run(dit, x, t1, y), stock)
    assert get_exit_stats(dit).timesteps[0].tolist() == [600.0] * 4
    set_exit_config(dit, EarlyExitConfig(policy=StaticDepth(3)))
    assert torch.equal(run(dit, x, t1, y), expected)
    set_exit_config(dit, EarlyExitConfig(policy=RowDepths([3, 1, 6, 2])))
    out = run(dit, x, t1, y)
    assert get_exit_stats(dit).blocks_run[0].tolist() == [3, 1, 6, 2]
    for r, d in enumerate([3, 1, 6, 2]):
        torch.testing.assert_close(out[r : r + 1], hand_exit(dit, x[r : r + 1], t1, y[r : r + 1], d), rtol=0, atol=1e-5)


def test_full_depth_static_policy_is_the_stock_model(dit, inputs):
    x, t, y = inputs
    stock = run(dit, x, t, y)
    apply_early_exit(dit, EarlyExitConfig(policy=StaticDepth(NUM_BLOCKS)))
    assert torch.equal(run(dit, x, t, y), stock)
    assert get_exit_stats(dit).blocks_run[0].tolist() == [NUM_BLOCKS] * 4


def test_decode_of_last_block_is_the_model_output(dit, inputs):
    x, t, y = inputs
    assert torch.equal(hand_exit(dit, x, t, y, NUM_BLOCKS), run(dit, x, t, y))


# ------------------------------------------------------------------------------------------------ 2. static depth
@pytest.mark.parametrize("k", [1, 2, 3, 5, 6])
def test_static_depth_is_the_decode_of_block_k(dit, inputs, k):
    x, t, y = inputs
    expected = hand_exit(dit, x, t, y, k)
    apply_early_exit(dit, EarlyExitConfig(policy=StaticDepth(k)))
    with count_attn1(dit) as seen:
        out = run(dit, x, t, y)
    assert torch.equal(out, expected)
    assert seen == [(i, 4) for i in range(k)]  # exactly blocks 0..k-1 ran, on the full batch
    assert get_exit_stats(dit).blocks_run[0].tolist() == [k] * 4
    assert get_exit_stats(dit).total_blocks == 4 * k


def test_static_depth_differs_from_full_depth(dit, inputs):
    # guards the exactness tests above against a degenerate model whose blocks do nothing
    x, t, y = inputs
    assert not torch.allclose(hand_exit(dit, x, t, y, 2), run(dit, x, t, y), atol=1e-3)


def test_static_depth_timestep_schedule_uniform_batch(dit, inputs):
    # every row in the same bucket: the uniform fast path
    x, _, y = inputs
    t = torch.tensor([700, 750, 800, 999])
    apply_early_exit(dit, EarlyExitConfig(policy=TimestepSchedule(boundaries=[600], depths=[6, 3])))
    with count_attn1(dit) as seen:
        out = run(dit, x, t, y)
    remove_early_exit(dit)
    assert torch.equal(out, hand_exit(dit, x, t, y, 3))
    assert seen == [(0, 4), (1, 4), (2, 4)]


# ------------------------------------------------------------------------------------------------ 3. per sample
def single_row_reference(model, x, t, y, depths):
    """Each row alone, through the engine with StaticDepth(its depth)."""
    rows = []
    for r, d in enumerate(depths):
        with early_exit(model, EarlyExitConfig(policy=StaticDepth(int(d)))):
            rows.append(run(model, x[r : r + 1], t[r : r + 1], y[r : r + 1]))
    return torch.cat(rows)


@pytest.mark.parametrize(
    "boundaries, depths, expected",
    [
        ([200, 500, 800], [6, 4, 3, 1], [6, 4, 3, 1]),  # t = 10, 300, 600, 900
        ([500], [3, 2], [3, 3, 2, 2]),  # deepest rows stop before the last block
        ([100, 700], [2, 5, 1], [2, 5, 5, 1]),  # depth not monotone in t
        ([0, 1000], [1, 6, 1], [6, 6, 6, 6]),  # everybody in the middle bucket: full depth
    ],
)
def test_timestep_schedule_per_row(dit, inputs, boundaries, depths, expected):
    x, t, y = inputs
    reference = single_row_reference(dit, x, t, y, expected)
    policy = TimestepSchedule(boundaries=boundaries, depths=depths)
    apply_early_exit(dit, EarlyExitConfig(policy=policy))
    with count_attn1(dit) as seen:
        out = run(dit, x, t, y)
    assert get_exit_stats(dit).blocks_run[0].tolist() == expected
    assert seen == expected_attn1(expected)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    for r, d in enumerate(expected):
        torch.testing.assert_close(out[r : r + 1], hand_exit(dit, x[r : r + 1], t[r : r + 1], y[r : r + 1], d),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("depths", [[2, 6, 4, 2], [1, 1, 3, 1], [5, 3, 5, 3], [6, 6, 6, 1], [4, 4, 4, 4]])
def test_custom_dynamic_policy_per_row(dit, inputs, depths):
    x, t, y = inputs
    reference = single_row_reference(dit, x, t, y, depths)
    policy = RowDepths(depths)
    apply_early_exit(dit, EarlyExitConfig(policy=policy))
    with count_attn1(dit) as seen:
        out = run(dit, x, t, y)
    assert get_exit_stats(dit).blocks_run[0].tolist() == depths
    assert seen == expected_attn1(depths)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    # the policy saw only the active rows, by their position in the batch, and was not asked after the
    # last block or after everybody left
    for block, rows in policy.contexts:
        assert rows == [r for r, d in enumerate(depths) if d > block]
    assert [block for block, _ in policy.contexts] == list(range(min(max(depths), NUM_BLOCKS - 1)))


def test_custom_planned_policy_per_row(dit, inputs):
    x, t, y = inputs
    depths = [3, 1, 5, 3]
    reference = single_row_reference(dit, x, t, y, depths)
    apply_early_exit(dit, EarlyExitConfig(policy=PlannedRowDepths(depths)))
    with count_attn1(dit) as seen:
        out = run(dit, x, t, y)
    assert get_exit_stats(dit).blocks_run[0].tolist() == depths
    assert seen == expected_attn1(depths)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


def test_blocks_after_every_row_left_are_not_computed(dit, inputs):
    x, t, y = inputs
    apply_early_exit(dit, EarlyExitConfig(policy=RowDepths([2, 1, 3, 2])))
    with count_attn1(dit) as seen:
        run(dit, x, t, y)
    assert {block for block, _ in seen} == {0, 1, 2}
    assert seen == [(0, 4), (1, 3), (2, 1)]


def test_per_row_state_does_not_leak_between_calls(dit, inputs):
    x, t, y = inputs
    apply_early_exit(dit, EarlyExitConfig(policy=TimestepSchedule(boundaries=[500], depths=[5, 2])))
    first = run(dit, x, t, y)
    with count_attn1(dit) as seen:
        second = run(dit, x, t, y)
    assert torch.equal(first, second)
    assert seen == expected_attn1([5, 5, 2, 2])
    # a call with a different batch size after a compacted one
    out = run(dit, x[:3], t[:3], y[:3])
    assert get_exit_stats(dit).blocks_run[0].tolist() == [5, 5, 2]
    torch.testing.assert_close(out, first[:3], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ 4. removal
def test_remove_restores_bit_exact_and_leaves_no_trace(dit, inputs):
    x, t, y = inputs
    stock = run(dit, x, t, y)
    forwards = [type(m).forward for m in (dit, *dit.transformer_blocks)]
    apply_early_exit(dit, EarlyExitConfig(policy=TimestepSchedule(boundaries=[500], depths=[4, 2])))
    assert is_early_exit_applied(dit)
    assert not torch.equal(run(dit, x, t, y), stock)
    remove_early_exit(dit)
    assert_unhooked(dit)
    assert [type(m).forward for m in (dit, *dit.transformer_blocks)] == forwards
    with count_attn1(dit) as seen:
        assert torch.equal(run(dit, x, t, y), stock)
    assert seen == [(i, 4) for i in range(NUM_BLOCKS)]


def test_apply_twice_raises(dit):
    apply_early_exit(dit, EarlyExitConfig(policy=StaticDepth(2)))
    with pytest.raises(ValueError, match="remove_early_exit"):
        apply_early_exit(dit, EarlyExitConfig())
    # the first application is untouched
    assert isinstance(_engine_of(dit).config.policy, StaticDepth)


def test_remove_without_apply_raises(dit):
    with pytest.raises(ValueError, match="apply_early_exit"):
        remove_early_exit(dit)


def test_unsupported_models_raise_type_error():
    # U-Nets are supported (tests/test_backbone_unet.py), but not with skip blocks
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 8),
        down_block_types=("SkipDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "SkipUpBlock2D"),
        norm_num_groups=4,
    )
    for model, match in ((torch.nn.Linear(2, 2), "DiTTransformer2DModel"), (unet, "SkipDownBlock2D")):
        with pytest.raises(TypeError, match=match):
            apply_early_exit(model, EarlyExitConfig())
        assert not hasattr(model, "_diffusers_hook")
        assert "forward" not in model.__dict__


def test_pipeline_like_object_raises_type_error():
    with pytest.raises(TypeError, match="DiTTransformer2DModel"):
        apply_early_exit(object())


def test_bad_config_type_raises(dit):
    with pytest.raises(TypeError, match="EarlyExitConfig"):
        apply_early_exit(dit, {"policy": None})
    assert_unhooked(dit)


def test_apply_remove_many_times(dit, inputs):
    x, t, y = inputs
    stock = run(dit, x, t, y)
    policy = TimestepSchedule(boundaries=[500], depths=[4, 2])
    expected = None
    for i in range(50):
        apply_early_exit(dit, EarlyExitConfig(policy=policy if i % 2 else None))
        if i in (1, 49):
            out = run(dit, x, t, y)
            expected = out if expected is None else expected
            assert torch.equal(out, expected)
        remove_early_exit(dit)
    assert_unhooked(dit)
    with count_attn1(dit) as seen:
        assert torch.equal(run(dit, x, t, y), stock)
    assert len(seen) == NUM_BLOCKS


def test_remove_keeps_other_hooks(dit, inputs):
    """A foreign diffusers hook registered before ours survives removal (and still runs)."""
    from diffusers.hooks import HookRegistry, ModelHook

    class Counter(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Counter.calls += 1
            return args, kwargs

    x, t, y = inputs
    stock = run(dit, x, t, y)
    HookRegistry.check_if_exists_or_initialize(dit).register_hook(Counter(), "counter")
    apply_early_exit(dit, EarlyExitConfig(policy=StaticDepth(2)))
    run(dit, x, t, y)
    remove_early_exit(dit)
    assert dit._diffusers_hook.get_hook("counter") is not None
    assert torch.equal(run(dit, x, t, y), stock)
    assert Counter.calls == 2  # the hooked call and the call after removal
    for block in dit.transformer_blocks:
        assert not hasattr(block, "_diffusers_hook")


# ------------------------------------------------------------------------------------------------ 6. CFG pairs
def cfg_batch(x, t, y, null=NULL):
    half = x.shape[0]
    return (
        torch.cat([x, x]),
        torch.cat([t, t]),
        torch.cat([y, torch.full((half,), null, dtype=y.dtype)]),
    )


def test_cfg_pairs_exit_together(dit, inputs):
    x, t, y = cfg_batch(*[v[:2] for v in inputs])
    # the conditional half wants out after block 1 (depth 2), the unconditional half after block 3 (depth 4)
    policy = WantsFrom([1, 1, 3, 3])
    apply_early_exit(dit, EarlyExitConfig(policy=policy, cfg_pairing="together"))
    with count_attn1(dit) as seen:
        out = run(dit, x, t, y)
    stats = get_exit_stats(dit)
    assert stats.cfg_paired == [True]
    assert stats.blocks_run[0].tolist() == [4, 4, 4, 4]
    assert seen == [(i, 4) for i in range(4)]
    torch.testing.assert_close(out, hand_exit(dit, x, t, y, 4), rtol=0, atol=1e-5)


def test_cfg_pair_keeps_both_when_only_conditional_wants(dit, inputs):
    x, t, y = cfg_batch(*[v[:2] for v in inputs])
    # only the conditional rows ever want to exit; pair 0's partner never does
    policy = WantsFrom([0, 2, 99, 2])
    apply_early_exit(dit, EarlyExitConfig(policy=policy, cfg_pairing="together"))
    run(dit, x, t, y)
    blocks = get_exit_stats(dit).blocks_run[0].tolist()
    assert blocks == [NUM_BLOCKS, 3, NUM_BLOCKS, 3]
    assert blocks[:2] == blocks[2:]


def test_cfg_pairs_independent(dit, inputs):
    x, t, y = cfg_batch(*[v[:2] for v in inputs])
    apply_early_exit(dit, EarlyExitConfig(policy=WantsFrom([1, 1, 3, 3]), cfg_pairing="independent"))
    with count_attn1(dit) as seen:
        out = run(dit, x, t, y)
    stats = get_exit_stats(dit)
    assert stats.cfg_paired == [False]
    assert stats.blocks_run[0].tolist() == [2, 2, 4, 4]
    assert seen == [(0, 4), (1, 4), (2, 2), (3, 2)]
    reference = single_row_reference(dit, x, t, y, [2, 2, 4, 4])
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pairing, expected", [("together", [4, 4, 4, 4]), ("independent", [2, 1, 4, 4])])
def test_cfg_pairs_with_planned_policy(dit, inputs, pairing, expected):
    x, t, y = cfg_batch(*[v[:2] for v in inputs])
    apply_early_exit(dit, EarlyExitConfig(policy=PlannedRowDepths([2, 1, 4, 4]), cfg_pairing=pairing))
    with count_attn1(dit) as seen:
        run(dit, x, t, y)
    stats = get_exit_stats(dit)
    assert stats.cfg_paired == [pairing == "together"]
    assert stats.blocks_run[0].tolist() == expected
    assert seen == expected_attn1(expected)


def test_cfg_pairs_with_timestep_schedule(dit, inputs):
    x, t, y = cfg_batch(*[v[:2] for v in inputs])  # t = [10, 300, 10, 300]
    apply_early_exit(dit, EarlyExitConfig(policy=TimestepSchedule(boundaries=[200], depths=[5, 2])))
    run(dit, x, t, y)
    stats = get_exit_stats(dit)
    assert stats.cfg_paired == [True]
    assert stats.blocks_run[0].tolist() == [5, 2, 5, 2]


def test_non_pair_batches_are_not_detected(dit, inputs):
    x2, t2, y2 = [v[:2] for v in inputs]
    x, t, y = cfg_batch(x2, t2, y2)
    cases = {
        "labels not null": (x, t, torch.cat([y2, y2])),
        "latents differ": (torch.cat([x2, x2 + 1]), t, y),
        "timesteps differ": (x, torch.cat([t2, t2 + 1]), y),
        "null in the first half": (x, t, torch.cat([torch.full((2,), NULL), y2])),
        "odd batch": (x[:3], t[:3], y[:3]),
        "plain batch": inputs,
    }
    apply_early_exit(dit, EarlyExitConfig(policy=WantsFrom([1, 1, 3, 3])))
    for name, (xx, tt, yy) in cases.items():
        run(dit, xx, tt, yy)
        stats = get_exit_stats(dit)
        assert stats.cfg_paired == [False], name
        assert stats.blocks_run[0].tolist() == [2, 2, 4, 4][: xx.shape[0]], name
    run(dit, x, t, y)
    assert get_exit_stats(dit).cfg_paired == [True]


def test_exits_off_never_reports_pairs(dit, inputs):
    x, t, y = cfg_batch(*[v[:2] for v in inputs])
    apply_early_exit(dit, EarlyExitConfig(cfg_pairing="together"))
    run(dit, x, t, y)
    assert get_exit_stats(dit).cfg_paired == [False]


# ------------------------------------------------------------------------------------------------ 7/8. errors
def test_schedule_deeper_than_model_raises(dit):
    for policy in (StaticDepth(NUM_BLOCKS + 1), TimestepSchedule(boundaries=[500], depths=[NUM_BLOCKS + 3, 2])):
        with pytest.raises(ValueError, match=f"{NUM_BLOCKS} blocks"):
            apply_early_exit(dit, EarlyExitConfig(policy=policy))
        assert_unhooked(dit)
    apply_early_exit(dit)
    with pytest.raises(ValueError, match=f"depth {NUM_BLOCKS + 1}"):
        set_exit_config(dit, EarlyExitConfig(policy=StaticDepth(NUM_BLOCKS + 1)))
    assert get_exit_stats(dit) is None


class BadMask:
    needs_certainty = False

    def __init__(self, make):
        self.make = make

    def exit_mask(self, ctx):
        return self.make(ctx)


@pytest.mark.parametrize(
    "make",
    [
        lambda ctx: torch.zeros(ctx.rows.shape[0] + 1, dtype=torch.bool),  # wrong length
        lambda ctx: torch.zeros(ctx.rows.shape[0], 1, dtype=torch.bool),  # wrong rank
        lambda ctx: torch.zeros(ctx.rows.shape[0]),  # float
        lambda ctx: torch.zeros(ctx.rows.shape[0], dtype=torch.long),  # integer
        lambda ctx: [False] * ctx.rows.shape[0],  # not a tensor
        lambda ctx: None,
    ],
)
def test_custom_policy_bad_mask_raises(dit, inputs, make):
    x, t, y = inputs
    apply_early_exit(dit, EarlyExitConfig(policy=BadMask(make)))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        run(dit, x, t, y)
    # the engine recovers at the next call
    set_exit_config(dit, EarlyExitConfig(policy=StaticDepth(2)))
    run(dit, x, t, y)
    assert get_exit_stats(dit).blocks_run[0].tolist() == [2] * 4


def test_custom_planned_policy_bad_shape_raises(dit, inputs):
    x, t, y = inputs
    apply_early_exit(dit, EarlyExitConfig(policy=PlannedRowDepths([2, 2, 2])))
    with pytest.raises(ValueError, match=r"plan_depths must return a tensor of shape \(4,\)"):
        run(dit, x, t, y)


def test_bad_timestep_shape_raises(dit, inputs):
    x, _, y = inputs
    apply_early_exit(dit, EarlyExitConfig(policy=StaticDepth(2)))
    for bad in (torch.tensor([1, 2, 3]), torch.tensor([[1, 2, 3, 4]]), torch.full((2, 2), 5)):
        with pytest.raises(ValueError, match=r"timestep must be a scalar or have shape \(1,\) or \(4,\)"):
            run(dit, x, bad, y)


def test_failed_call_leaves_no_stale_state(dit, inputs):
    """A model call that raises after every row exited must not make later direct block calls skip work."""
    x, t, y = inputs
    with torch.no_grad():
        expected = hand_hidden(dit, x, t, y, NUM_BLOCKS)

    def boom(module, args):
        raise RuntimeError("boom")

    apply_early_exit(dit, EarlyExitConfig(policy=StaticDepth(2)))
    handle = dit.norm_out.register_forward_pre_hook(boom)  # fails after the blocks, in the output head
    with pytest.raises(RuntimeError, match="boom"):
        run(dit, x, t, y)
    handle.remove()
    with torch.no_grad(), count_attn1(dit) as seen:
        assert torch.equal(hand_hidden(dit, x, t, y, NUM_BLOCKS), expected)
    assert len(seen) == NUM_BLOCKS
    # the same after a failure while planning (before the model's forward started)
    set_exit_config(dit, EarlyExitConfig(policy=PlannedRowDepths([1, 2])))
    with pytest.raises(ValueError, match="plan_depths"):
        run(dit, x, t, y)
    with torch.no_grad():
        assert torch.equal(hand_hidden(dit, x, t, y, NUM_BLOCKS), expected)
    assert get_exit_stats(dit) is None  # failed calls record nothing


def test_per_row_exits_with_gradient_checkpointing(inputs):
    """The engine checkpoints each block on the rows it runs: same gradients as without checkpointing."""
    x, t, y = inputs
    grads = []
    for checkpointing in (False, True):
        model = tiny_dit(num_layers=6).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        policy = TimestepSchedule(boundaries=[200, 500, 800], depths=[6, 4, 3, 1])
        apply_early_exit(model, EarlyExitConfig(policy=policy))
        with torch.enable_grad(), count_attn1(model) as seen:
            model(x, timestep=t, class_labels=y).sample.square().sum().backward()
        ran = sum(get_exit_stats(model).blocks_run[0].tolist())
        assert sum(rows for _, rows in seen) == ran * (2 if checkpointing else 1)  # recomputed on the same rows
        assert model.gradient_checkpointing is checkpointing  # the model's own flag is back after the call
        assert len(set(get_exit_stats(model).blocks_run[0].tolist())) > 1  # really per-row exits
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_uniform_exit_with_gradient_checkpointing(inputs):
    x, t, y = inputs
    grads = []
    for checkpointing in (False, True):
        model = tiny_dit(num_layers=6).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(3)))
        with torch.enable_grad():
            model(x, timestep=t, class_labels=y).sample.square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------ 9. stats
def test_get_exit_stats_before_apply_raises(dit, inputs):
    with pytest.raises(ValueError, match="apply_early_exit"):
        get_exit_stats(dit)
    with pytest.raises(ValueError, match="apply_early_exit"):
        with record_exit_stats(dit):
            pass
    with pytest.raises(ValueError, match="apply_early_exit"):
        set_exit_config(dit, EarlyExitConfig())
    apply_early_exit(dit)
    assert get_exit_stats(dit) is None


def test_record_exit_stats_collects_every_call(dit, inputs):
    x, t, y = inputs
    apply_early_exit(dit, EarlyExitConfig(policy=TimestepSchedule(boundaries=[500], depths=[5, 2])))
    run(dit, x, t, y)  # before the block: not recorded
    with record_exit_stats(dit) as stats, record_exit_stats(dit) as inner:
        run(dit, x, t, y)
        run(dit, x[:2], t[:2], y[:2])
        run(dit, x, torch.full((4,), 900), y)
    run(dit, x, t, y)  # after the block: not recorded
    for s in (stats, inner):
        assert s.num_calls == 3
        assert s.num_blocks == NUM_BLOCKS
        assert [b.tolist() for b in s.blocks_run] == [[5, 5, 2, 2], [5, 5], [2, 2, 2, 2]]
        assert [ts.tolist() for ts in s.timesteps] == [[10, 300, 600, 900], [10, 300], [900] * 4]
        assert s.cfg_paired == [False] * 3
        assert s.total_blocks == 14 + 10 + 8
        assert s.full_blocks == 10 * NUM_BLOCKS
        assert s.depth_fraction == pytest.approx(32 / 60)
        assert s.per_call_mean() == [3.5, 5.0, 2.0]
        assert s.to_dict()["blocks_run"] == [[5, 5, 2, 2], [5, 5], [2, 2, 2, 2]]
    assert get_exit_stats(dit).num_calls == 1


def test_early_exit_context_manager_unhooks(dit, inputs):
    x, t, y = inputs
    stock = run(dit, x, t, y)
    with early_exit(dit, EarlyExitConfig(policy=StaticDepth(3))) as stats:
        out = run(dit, x, t, y)
        run(dit, x, t, y)
    assert stats.num_calls == 2
    assert [b.tolist() for b in stats.blocks_run] == [[3] * 4] * 2
    assert torch.equal(out, hand_exit(dit, x, t, y, 3))
    assert_unhooked(dit)
    assert torch.equal(run(dit, x, t, y), stock)
    # also after an exception inside the block
    with pytest.raises(RuntimeError, match="boom"):
        with early_exit(dit, EarlyExitConfig(policy=StaticDepth(3))):
            raise RuntimeError("boom")
    assert_unhooked(dit)
    assert torch.equal(run(dit, x, t, y), stock)


def test_early_exit_context_manager_restores_previous_config(dit, inputs):
    x, t, y = inputs
    config = EarlyExitConfig(policy=StaticDepth(2))
    apply_early_exit(dit, config)
    with early_exit(dit, EarlyExitConfig(policy=StaticDepth(4))) as stats:
        run(dit, x, t, y)
    assert stats.blocks_run[0].tolist() == [4] * 4
    assert is_early_exit_applied(dit)
    engine = _engine_of(dit)
    assert engine.config is config
    assert engine.recorders == []
    with count_attn1(dit) as seen:
        run(dit, x, t, y)
    assert get_exit_stats(dit).blocks_run[0].tolist() == [2] * 4
    assert len(seen) == 2


def test_set_exit_config_switches_policy(dit, inputs):
    x, t, y = inputs
    apply_early_exit(dit, EarlyExitConfig(policy=StaticDepth(2)))
    set_exit_config(dit, EarlyExitConfig(policy=StaticDepth(5)))
    assert torch.equal(run(dit, x, t, y), hand_exit(dit, x, t, y, 5))
    set_exit_config(dit, EarlyExitConfig())
    remove_early_exit(dit)
    stock = run(dit, x, t, y)
    apply_early_exit(dit, EarlyExitConfig(policy=StaticDepth(2)))
    set_exit_config(dit, EarlyExitConfig())
    assert torch.equal(run(dit, x, t, y), stock)


# ------------------------------------------------------------------------------------------------ 10. gradients
def test_train_mode_exits_off_equals_stock_with_gradients(inputs):
    x, t, y = inputs
    stock_model = tiny_dit(num_layers=4).train()
    hooked = tiny_dit(num_layers=4).train()
    apply_early_exit(hooked, EarlyExitConfig())
    outs = []
    for model in (stock_model, hooked):
        out = model(x, timestep=t, class_labels=y).sample
        out.square().mean().backward()
        outs.append(out.detach())
    assert torch.equal(outs[0], outs[1])
    for p, q in zip(stock_model.parameters(), hooked.parameters()):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad)


def test_static_depth_backward(dit, inputs):
    x, t, y = inputs
    dit.train()
    apply_early_exit(dit, EarlyExitConfig(policy=StaticDepth(2)))
    with torch.enable_grad():
        out = dit(x, timestep=t, class_labels=y).sample
        assert out.requires_grad
        out.square().mean().backward()
    blocks = dit.transformer_blocks
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in blocks[1].parameters())
    # the skipped blocks were never part of the graph
    assert all(p.grad is None for block in blocks[2:] for p in block.parameters())
    assert dit.proj_out_2.weight.grad is not None


def test_per_row_exits_backward_matches_reference(dit, inputs):
    """Input gradients through compacted rows equal those of each row's own hand-decoded exit.

    In float64: batched and single-row backward passes sum in different orders, which float32 rounding shows.
    """
    x, t, y = inputs
    dit = copy.deepcopy(dit).double()
    depths = [6, 4, 3, 1]
    x = x.double().requires_grad_(True)
    expected = []
    for r, d in enumerate(depths):
        xr = x.detach()[r : r + 1].clone().requires_grad_(True)
        h = hand_hidden(dit, xr, t[r : r + 1], y[r : r + 1], d)
        get_adapter(dit).decoder.decode(h, timestep=t[r : r + 1], class_labels=y[r : r + 1]).square().sum().backward()
        expected.append(xr.grad)
    dit.zero_grad(set_to_none=True)
    apply_early_exit(dit, EarlyExitConfig(policy=TimestepSchedule(boundaries=[200, 500, 800], depths=[6, 4, 3, 1])))
    with torch.enable_grad():
        dit(x, timestep=t, class_labels=y).sample.square().sum().backward()
    assert get_exit_stats(dit).blocks_run[0].tolist() == depths
    torch.testing.assert_close(x.grad, torch.cat(expected), rtol=1e-9, atol=1e-12)


def test_a_declared_layout_replaces_inferring_the_pairs(dit, inputs, monkeypatch):
    x, t, y = cfg_batch(*[v[:2] for v in inputs])
    config = EarlyExitConfig(policy=WantsFrom([1, 1, 3, 3]), cfg_pairing="together")
    # Declared pairs: the adapter's tensor comparison must not run.
    monkeypatch.setattr(FamilyAdapter, "is_cfg_pair_batch", lambda *a: pytest.fail("pairs were inferred"))
    with early_exit(dit, config, layout=BatchLayout(guidance_pairs=True)) as stats:
        run(dit, x, t, y)
    assert stats.cfg_paired == [True] and stats.blocks_run[0].tolist() == [4, 4, 4, 4]
    # Declared "no pairs" wins over what the tensors would suggest.
    with early_exit(dit, config, layout=BatchLayout(guidance_pairs=False)) as stats:
        run(dit, x, t, y)
    assert stats.cfg_paired == [False] and stats.blocks_run[0].tolist() == [2, 2, 4, 4]
    monkeypatch.undo()
    with early_exit(dit, config) as stats:  # no layout: inferred from the inputs (stock pipelines)
        run(dit, x, t, y)
    assert stats.cfg_paired == [True]
    with pytest.raises(ValueError, match="batch size must be even, got 3"):
        with early_exit(dit, config, layout=BatchLayout(guidance_pairs=True)):
            run(dit, x[:3], t[:3], y[:3])
    with pytest.raises(TypeError, match="layout must be a BatchLayout"):
        apply_early_exit(dit, config, layout=True)


def test_early_exit_restores_the_previous_config_state_and_layout(dit, inputs):
    x, t, y = inputs
    policy = CachedTailResidual(threshold=0.5)
    apply_early_exit(dit, EarlyExitConfig(policy=policy), layout=BatchLayout(guidance_pairs=False))
    run(dit, x, t, y)
    engine = _engine_of(dit)
    state, nbytes = engine.policy_state, exit_state_nbytes(dit)
    assert isinstance(state.get(None), TailCacheState) and nbytes > 0
    with early_exit(dit, EarlyExitConfig(policy=StaticDepth(2))):
        assert engine.policy_state is None and engine.layout is None
        run(dit, x, t, y)
    assert engine.policy_state is state and exit_state_nbytes(dit) == nbytes
    assert engine.layout == BatchLayout(guidance_pairs=False) and engine.config.policy is policy
    reset_exit_state(dit)
    assert exit_state_nbytes(dit) == 0 and engine.policy_state is state
    set_exit_config(dit, EarlyExitConfig(policy=CachedTailResidual(threshold=0.5)))
    assert engine.policy_state is not state  # a new config starts with a new state
    remove_early_exit(dit)
    assert engine.policy_state is None


def test_plain_policy_objects_run_or_say_how_to_subclass(dit, inputs):
    x, t, y = inputs

    class Plain:
        needs_certainty = False

        def exit_mask(self, ctx):
            return ctx.timesteps > 500

    class PlainWithPlan(Plain):
        def plan_depths(self, timesteps, num_blocks):
            return torch.ones_like(timesteps, dtype=torch.long)

    with early_exit(dit, EarlyExitConfig(policy=Plain())) as stats:
        run(dit, x, t, y)
    assert stats.blocks_run[0].tolist() == [1 if v > 500 else NUM_BLOCKS for v in t.tolist()]
    with pytest.raises(TypeError, match=r"defines \['plan_depths'\] but is not an ExitPolicy.*subclass"):
        EarlyExitConfig(policy=PlainWithPlan())
