"""UncertaintyHeads (DeeDiff UEMs) and the UncertaintyThreshold policy running in the engine on tiny DiTs."""

from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import apply_early_exit, early_exit, get_exit_stats, remove_early_exit, set_exit_config
from ee_diffusion.heads import UncertaintyHeads
from ee_diffusion.schedules import ExitPolicy, StaticDepth, UncertaintyThreshold
from ee_diffusion.testing import tiny_dit

NUM_BLOCKS = 6  # the `dit` fixture; its first half (where patience applies) is blocks 0, 1, 2


# ------------------------------------------------------------------------------------------------- helpers
def run(model, x, t, y):
    with torch.no_grad():
        return model(x, timestep=t, class_labels=y).sample


def hand_hiddens(model, x, t, y):
    """[h_0, ..., h_{N-1}] by calling pos_embed and the blocks by hand."""
    h = model.pos_embed(x)
    out = []
    for block in model.transformer_blocks:
        h = block(h, timestep=t, class_labels=y)
        out.append(h)
    return out


def certainties(model, heads, x, t, y):
    """(B, N) mean certainty of every row after every block, computed by hand on the full batch."""
    with torch.no_grad():
        condition = get_adapter(model).decoder.timestep_embedding(t.float(), torch.float32) if heads.conditioned else None
        return torch.stack(
            [heads(i, h, condition).mean(dim=(1, 2, 3)) for i, h in enumerate(hand_hiddens(model, x, t, y))], dim=1
        )


def reference_depths(cert, thresholds, patience, num_blocks=NUM_BLOCKS):
    """The DeeDiff rule written as a plain Python loop: cert (B, N), thresholds one per row."""
    depths = []
    for row, threshold in zip(cert.tolist(), thresholds):
        streak, depth = 0, num_blocks
        for i in range(num_blocks - 1):  # nothing to decide after the last block
            passed = row[i] > threshold
            streak = streak + 1 if passed else 0
            need = patience if i < num_blocks // 2 else 1
            if passed and streak >= need:
                depth = i + 1
                break
        depths.append(depth)
    return depths


def single_row_reference(model, x, t, y, depths):
    rows = []
    for r, d in enumerate(depths):
        with early_exit(model, EarlyExitConfig(policy=StaticDepth(int(d)))):
            rows.append(run(model, x[r : r + 1], t[r : r + 1], y[r : r + 1]))
    return torch.cat(rows)


@contextlib.contextmanager
def count_attn1(model):
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


def expected_attn1(depths, num_blocks=NUM_BLOCKS):
    return [(i, sum(d > i for d in depths)) for i in range(num_blocks) if any(d > i for d in depths)]


def constant_heads(model, block_certainty):
    """Heads whose certainty after block i is exactly `block_certainty[i]` for every row and pixel."""
    heads = UncertaintyHeads.from_model(model)
    with torch.no_grad():
        for head, c in zip(heads.heads, block_certainty):
            head.weight.zero_()
            head.bias.fill_(math.log(c / (1 - c)))
    return heads


def check_engine_matches(model, heads, policy, x, t, y, expected):
    """Run the engine; stats, real block work and every row's output must match `expected` depths."""
    reference = single_row_reference(model, x, t, y, expected)
    apply_early_exit(model, EarlyExitConfig(policy=policy), heads=heads)
    try:
        with count_attn1(model) as seen:
            out = run(model, x, t, y)
        assert get_exit_stats(model).blocks_run[0].tolist() == expected
        assert seen == expected_attn1(expected, len(model.transformer_blocks))
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    finally:
        remove_early_exit(model)


def well_separated_threshold(cert, patience, margin=1e-4):
    """A threshold between observed certainties that spreads the rows over as many depths as possible."""
    values = sorted(set(cert.flatten().tolist()))
    best = None
    for lo, hi in zip(values, values[1:]):
        if hi - lo < 2 * margin:
            continue
        tau = (lo + hi) / 2
        depths = reference_depths(cert, [tau] * cert.shape[0], patience, cert.shape[1])
        if best is None or len(set(depths)) > len(set(best[1])):
            best = (tau, depths)
    assert best is not None and len(set(best[1])) >= 2, "no threshold separates the rows"
    return best


class RecordingThreshold(ExitPolicy):
    """A custom certainty policy that records what the engine hands it and delegates to UncertaintyThreshold."""

    needs_certainty = True

    def __init__(self, inner):
        self.inner = inner
        self.seen = []

    def create_call_state(self, batch_size, device):
        return self.inner.create_call_state(batch_size, device)

    def exit_mask(self, ctx):
        self.seen.append((ctx.block_index, ctx.rows.clone(), ctx.certainty.clone()))
        return self.inner.exit_mask(ctx)


# ------------------------------------------------------------------------------------------------- the module
def test_from_model_shapes_and_range(dit, inputs):
    x, t, y = inputs
    heads = UncertaintyHeads.from_model(dit)
    expected = {
        "num_blocks": NUM_BLOCKS, "hidden_dim": 32, "patch_size": 2, "out_channels": 1, "sample_size": 8,
        "condition_dim": 0, "model_class": "DiTTransformer2DModel",
    }
    assert {k: heads.config[k] for k in expected} == expected
    assert not heads.conditioned
    for i, h in enumerate(hand_hiddens(dit, x, t, y)):
        c = heads(i, h)
        assert c.shape == x.shape
        assert ((c >= 0) & (c <= 1)).all()  # sigmoid; saturates in float32 on large random activations
    cond = UncertaintyHeads.from_model(dit, condition_on_timestep=True)
    assert cond.conditioned and cond.config.condition_dim == 32
    learn_sigma = UncertaintyHeads.from_model(tiny_dit(num_layers=2, learn_sigma=True, in_channels=2))
    assert learn_sigma.config.out_channels == 2  # the eps half only


def test_heads_detach_their_input(dit, inputs):
    x, t, y = inputs
    heads = UncertaintyHeads.from_model(dit, condition_on_timestep=True)
    hidden = torch.randn(2, 16, 32, requires_grad=True)
    condition = torch.randn(2, 32, requires_grad=True)
    heads(1, hidden, condition).square().mean().backward()
    assert hidden.grad is None and condition.grad is None
    assert heads.heads[1].weight.grad is not None and heads.heads[1].weight.grad.abs().sum() > 0
    assert heads.heads[0].weight.grad is None
    # through a real backbone: the head loss gives the backbone no gradient at all
    with torch.enable_grad():
        hs = hand_hiddens(dit, x, t, y)
        emb = get_adapter(dit).decoder.timestep_embedding(t.float(), torch.float32)
        assert hs[3].requires_grad and emb.requires_grad
        loss = sum(heads(i, h, emb).mean() for i, h in enumerate(hs))
        loss.backward()
    assert all(p.grad is None for p in dit.parameters())
    assert all(head.weight.grad is not None for head in heads.heads)


def test_forward_bad_input_raises(dit):
    heads = UncertaintyHeads.from_model(dit)
    hidden = torch.randn(1, 16, 32)
    for index in (-1, NUM_BLOCKS):
        with pytest.raises(ValueError, match=r"block_index must be in 0\.\.5"):
            heads(index, hidden)
    cond = UncertaintyHeads.from_model(dit, condition_on_timestep=True)
    with pytest.raises(ValueError, match="timestep-conditioned"):
        cond(0, hidden)


@pytest.mark.parametrize(
    "field, value",
    [("num_blocks", 0), ("hidden_dim", -3), ("patch_size", 1.5), ("out_channels", True), ("sample_size", "8"),
     ("condition_dim", -1), ("condition_dim", False)],
)
def test_constructor_validation(field, value):
    kwargs = dict(num_blocks=2, hidden_dim=8, patch_size=2, out_channels=1, sample_size=8)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        UncertaintyHeads(**kwargs)


def test_from_model_rejects_unsupported_models():
    with pytest.raises(TypeError, match="DiTTransformer2DModel"):
        UncertaintyHeads.from_model(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------- mismatches
@pytest.mark.parametrize(
    "other, fields",
    [
        (dict(num_layers=4), ["num_blocks"]),
        (dict(width=16), ["hidden_dim"]),
        (dict(sample_size=16), ["sample_size"]),
        (dict(in_channels=2), ["out_channels"]),
        (dict(num_layers=3, width=64, sample_size=4), ["num_blocks", "hidden_dim", "sample_size"]),
    ],
)
def test_heads_for_another_model_are_refused(dit, other, fields):
    heads = UncertaintyHeads.from_model(tiny_dit(**{"num_layers": 6, **other}))
    policy = UncertaintyThreshold(0.9)
    with pytest.raises(ValueError, match="different model") as info:
        apply_early_exit(dit, EarlyExitConfig(policy=policy), heads=heads)
    for field in fields:
        assert f"{field}:" in str(info.value)
    for field in {"num_blocks", "hidden_dim", "sample_size", "out_channels"} - set(fields):
        assert f"{field}:" not in str(info.value)
    assert not hasattr(dit, "_diffusers_hook")
    # also when swapping heads on a hooked model, and even with a policy that needs no heads
    apply_early_exit(dit)
    with pytest.raises(ValueError, match=fields[0]):
        set_exit_config(dit, EarlyExitConfig(policy=policy), heads=heads)
    with pytest.raises(ValueError, match=fields[0]):
        set_exit_config(dit, EarlyExitConfig(), heads=heads)


def test_uncertainty_policy_without_heads_raises(dit, inputs):
    with pytest.raises(ValueError, match="heads"):
        apply_early_exit(dit, EarlyExitConfig(policy=UncertaintyThreshold(0.9)))
    assert not hasattr(dit, "_diffusers_hook")
    apply_early_exit(dit, EarlyExitConfig(policy=StaticDepth(2)))
    with pytest.raises(ValueError, match="heads"):
        set_exit_config(dit, EarlyExitConfig(policy=UncertaintyThreshold(0.9)))
    with pytest.raises(TypeError, match="UncertaintyHeads"):
        set_exit_config(dit, EarlyExitConfig(), heads=torch.nn.Linear(2, 2))


def test_heads_on_another_device_raise(dit, inputs):
    x, t, y = inputs
    heads = UncertaintyHeads.from_model(dit).to("meta")
    apply_early_exit(dit, EarlyExitConfig(policy=UncertaintyThreshold(0.9)), heads=heads)
    with pytest.raises(ValueError, match="heads.to"):
        run(dit, x, t, y)


# ------------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("conditioned", [False, True])
def test_save_load_round_trip(dit, inputs, tmp_path, conditioned):
    x, t, y = inputs
    torch.manual_seed(0)
    heads = UncertaintyHeads.from_model(dit, condition_on_timestep=conditioned)
    heads.save_pretrained(tmp_path)
    files = os.listdir(tmp_path)
    assert "config.json" in files
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    loaded = UncertaintyHeads.from_pretrained(tmp_path)
    assert {k: v for k, v in loaded.config.items() if k != "_name_or_path"} == dict(heads.config)
    loaded.check_model(dit)
    emb = torch.randn(4, 32) if conditioned else None
    for i, h in enumerate(hand_hiddens(dit, x, t, y)):
        with torch.no_grad():
            assert torch.equal(loaded(i, h, emb), heads(i, h, emb))
    policy = UncertaintyThreshold(0.5, patience=1)
    outputs, blocks = [], []
    for model_heads in (heads, loaded):
        apply_early_exit(dit, EarlyExitConfig(policy=policy), heads=model_heads)
        outputs.append(run(dit, x, t, y))
        blocks.append(get_exit_stats(dit).blocks_run[0].tolist())
        remove_early_exit(dit)
    assert blocks[0] == blocks[1]
    assert torch.equal(outputs[0], outputs[1])


# ------------------------------------------------------------------------------------- the policy in the engine
def test_constant_certainty_exits_when_strictly_above_threshold(dit, inputs):
    x, t, y = inputs
    cert = [0.2, 0.4, 0.6, 0.7, 0.8, 0.9]
    heads = constant_heads(dit, cert)
    torch.testing.assert_close(certainties(dit, heads, x, t, y), torch.tensor([cert] * 4), rtol=0, atol=1e-6)
    for threshold, depth in [(0.1, 1), (0.3, 2), (0.65, 4), (0.75, 5), (0.85, 6), (0.95, 6)]:
        check_engine_matches(dit, heads, UncertaintyThreshold(threshold, patience=1), x, t, y, [depth] * 4)
    # equal is not above: sigmoid(0) is exactly 0.5
    half = UncertaintyHeads.from_model(dit)
    with torch.no_grad():
        for head in half.heads:
            head.weight.zero_()
            head.bias.zero_()
    check_engine_matches(dit, half, UncertaintyThreshold(0.5, patience=1), x, t, y, [6] * 4)


def test_per_timestep_thresholds_pick_by_bucket(dit, inputs):
    x, t, y = inputs  # t = 10, 300, 600, 900
    heads = constant_heads(dit, [0.2, 0.4, 0.6, 0.7, 0.8, 0.9])
    policy = UncertaintyThreshold(
        0.99, patience=1, per_timestep={"boundaries": [200, 500, 800], "thresholds": [0.75, 0.65, 0.5, 0.1]}
    )
    assert policy.thresholds_for(t.float()).tolist() == pytest.approx([0.75, 0.65, 0.5, 0.1])
    check_engine_matches(dit, heads, policy, x, t, y, [5, 4, 3, 1])
    # boundary values belong to the upper bucket
    edge = torch.tensor([200.0, 499.0, 500.0, 800.0])
    assert policy.thresholds_for(edge).tolist() == pytest.approx([0.65, 0.65, 0.5, 0.1])
    check_engine_matches(dit, heads, policy, x, edge, y, [4, 4, 3, 1])


def test_patience_in_the_first_half(dit, inputs):
    x, t, y = inputs  # t = 10, 300, 600, 900
    cert = [0.8, 0.6, 0.3, 0.7, 0.2, 0.2]
    heads = constant_heads(dit, cert)
    per_timestep = {"boundaries": [200, 500, 800], "thresholds": [0.75, 0.65, 0.5, 0.25]}
    # 0.75: passes block 0 only -> never exits;  0.65: passes 0, then 3 (second half, no patience) -> 4;
    # 0.5 and 0.25: pass blocks 0 and 1 -> exit after block 1
    patient = UncertaintyThreshold(0.9, patience=2, per_timestep=per_timestep)
    assert reference_depths(torch.tensor([cert] * 4), [0.75, 0.65, 0.5, 0.25], 2) == [6, 4, 2, 2]
    check_engine_matches(dit, heads, patient, x, t, y, [6, 4, 2, 2])
    # without patience the same certainties stop everybody after block 0
    check_engine_matches(dit, heads, UncertaintyThreshold(0.9, patience=1, per_timestep=per_timestep), x, t, y,
                         [1, 1, 1, 1])
    # a pass at block 0, a miss, a pass at block 2 (streak 1) and a pass at 3 (second half): exit after 3
    heads = constant_heads(dit, [0.8, 0.2, 0.8, 0.8, 0.8, 0.8])
    check_engine_matches(dit, heads, UncertaintyThreshold(0.5, patience=2), x, t, y, [4] * 4)
    # patience 3 needs blocks 0, 1, 2 in a row
    heads = constant_heads(dit, [0.8, 0.8, 0.8, 0.2, 0.2, 0.2])
    check_engine_matches(dit, heads, UncertaintyThreshold(0.5, patience=3), x, t, y, [3] * 4)
    check_engine_matches(dit, heads, UncertaintyThreshold(0.5, patience=2), x, t, y, [2] * 4)


@pytest.mark.parametrize("patience", [1, 2])
@pytest.mark.parametrize("conditioned", [False, True])
def test_random_heads_match_the_rule(inputs, conditioned, patience):
    """Random heads; the threshold is placed between observed certainties so rows exit at different blocks."""
    x, t, y = inputs
    x = torch.cat([x, -x])
    t = torch.cat([t, t.flip(0)])
    y = torch.cat([y, y + 5])
    model = tiny_dit(num_layers=6, seed=3)
    torch.manual_seed(1)
    heads = UncertaintyHeads.from_model(model, condition_on_timestep=conditioned)
    with torch.no_grad():  # spread the certainties out so thresholds can sit well between them
        for head in heads.heads:
            head.weight.mul_(4.0)
    cert = certainties(model, heads, x, t, y)
    threshold, depths = well_separated_threshold(cert, patience)
    policy = RecordingThreshold(UncertaintyThreshold(threshold, patience=patience))
    check_engine_matches(model, heads, policy, x, t, y, depths)
    # the engine handed the policy each active row's mean certainty, computed on the compacted batch
    for block, rows, seen in policy.seen:
        assert rows.tolist() == [r for r, d in enumerate(depths) if d > block]
        torch.testing.assert_close(seen, cert[rows, block], rtol=0, atol=1e-5)


def test_timestep_conditioned_heads_depend_on_the_timestep(dit, inputs):
    x, t, y = inputs
    torch.manual_seed(2)
    heads = UncertaintyHeads.from_model(dit, condition_on_timestep=True)
    with torch.no_grad():
        for head in heads.heads:  # certainty from the timestep embedding only
            head.weight[:, :32].zero_()
    x_same, y_same = x[:1].expand(4, -1, -1, -1), y[:1].expand(4)
    cert = certainties(dit, heads, x_same, t, y_same)
    # the same latent and label at different timesteps gets different certainties
    assert cert[:, 0].unique().numel() == 4
    threshold, depths = well_separated_threshold(cert, 1)
    check_engine_matches(dit, heads, UncertaintyThreshold(threshold, patience=1), x_same, t, y_same, depths)


def test_uncertainty_cfg_pairs_together(dit, inputs):
    x2, t2, y2 = [v[:2] for v in inputs]
    x, t, y = torch.cat([x2, x2]), torch.cat([t2, t2]), torch.cat([y2, torch.full((2,), 10)])
    torch.manual_seed(4)
    heads = UncertaintyHeads.from_model(dit)
    with torch.no_grad():
        for head in heads.heads:
            head.weight.mul_(4.0)
    cert = certainties(dit, heads, x, t, y)
    threshold, alone = well_separated_threshold(cert, 1)
    # together: a pair leaves at the first block where both halves pass
    passed = (cert > threshold).tolist()
    together = []
    for r in range(2):
        both = [i for i in range(NUM_BLOCKS - 1) if passed[r][i] and passed[r + 2][i]]
        together.append(both[0] + 1 if both else NUM_BLOCKS)
    apply_early_exit(dit, EarlyExitConfig(policy=UncertaintyThreshold(threshold, patience=1)), heads=heads)
    run(dit, x, t, y)
    stats = get_exit_stats(dit)
    assert stats.cfg_paired == [True]
    assert stats.blocks_run[0].tolist() == together + together
    set_exit_config(dit, EarlyExitConfig(policy=UncertaintyThreshold(threshold, patience=1),
                                         cfg_pairing="independent"))
    run(dit, x, t, y)
    assert get_exit_stats(dit).cfg_paired == [False]
    assert get_exit_stats(dit).blocks_run[0].tolist() == alone


def test_set_exit_config_keeps_heads(dit, inputs):
    x, t, y = inputs
    heads = constant_heads(dit, [0.2, 0.4, 0.6, 0.7, 0.8, 0.9])
    apply_early_exit(dit, EarlyExitConfig(policy=StaticDepth(2)), heads=heads)
    set_exit_config(dit, EarlyExitConfig(policy=UncertaintyThreshold(0.65, patience=1)))
    run(dit, x, t, y)
    assert get_exit_stats(dit).blocks_run[0].tolist() == [4] * 4
    with pytest.raises(ValueError, match="heads"):
        set_exit_config(dit, EarlyExitConfig(policy=UncertaintyThreshold(0.65)), heads=None)


@pytest.mark.parametrize("conditioned", [False, True])
def test_mean_certainty_equals_the_mean_of_the_certainty_map(conditioned):
    model = tiny_dit(num_layers=3)
    heads = UncertaintyHeads.from_model(model, condition_on_timestep=conditioned)
    hidden = torch.randn(5, 16, 32)
    condition = torch.randn(5, 32) if conditioned else None
    for index in range(3):
        expected = heads(index, hidden, condition).float().mean(dim=(1, 2, 3))
        torch.testing.assert_close(heads(index, hidden, condition, mean=True), expected, atol=1e-6, rtol=0)
