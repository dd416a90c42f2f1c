"""Early exit by depth truncation on tiny real U-Nets (UNet2DModel, UNet2DConditionModel): the property suite
against a hand-written truncated forward, plus the U-Net specifics (bridges, skip bookkeeping, heads)."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import Case, T, count_pre_hooks, run
from diffusers import UNet2DModel

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import apply_early_exit, is_early_exit_applied
from ee_diffusion.heads import UncertaintyHeads
from ee_diffusion.schedules import StaticDepth
from ee_diffusion.testing import random_bridges, tiny_dit, tiny_unet, tiny_unet_condition
from ee_diffusion.unet import UNetAdapter, UNetExitBridges

LEVELS = 3


def truncated_forward(model, bridges, inputs, depth):
    """The U-Net run by hand to `depth` levels: down blocks 0..d-1, the bridge, up blocks N-d..N-1, the head."""
    cross = "encoder_hidden_states" in inputs
    x, t = inputs["sample"], inputs["timestep"]
    text = {"encoder_hidden_states": inputs["encoder_hidden_states"]} if cross else {}
    n = len(model.down_blocks)
    with torch.no_grad():
        emb = model.time_embedding(model.time_proj(t).to(x.dtype))
        if model.class_embedding is not None:
            emb = emb + model.class_embedding(inputs["class_labels"])
        h = model.conv_in(x)
        res = [h]
        for down in model.down_blocks[:depth]:
            extra = text if getattr(down, "has_cross_attention", False) else {}
            h, r = down(h, emb, **extra)
            res += list(r)
        if depth == n:
            extra = text if getattr(model.mid_block, "has_cross_attention", False) else {}
            h = model.mid_block(h, emb, **extra)
        else:
            feature = r[len(model.down_blocks[depth - 1].resnets) - 1]
            h = bridges(depth - 1, feature, emb)
            res = res[:-1]  # the downsampled output of down block d-1 feeds only the skipped levels
        for up in model.up_blocks[n - depth :]:
            k = len(up.resnets)
            skips, res = tuple(res[-k:]), res[:-k]
            extra = text if getattr(up, "has_cross_attention", False) else {}
            h = up(h, skips, emb, **extra)
        return model.conv_out(model.conv_act(model.conv_norm_out(h)))


def count_levels(model):
    """Real computations per level: the first resnet of each down block (levels 0..N-1)."""
    return count_pre_hooks([(i, b.resnets[0]) for i, b in enumerate(model.down_blocks)])


@pytest.fixture(params=["UNet2DModel", "UNet2DConditionModel"])
def case(request):
    g = torch.Generator().manual_seed(1)
    if request.param == "UNet2DModel":
        model = tiny_unet(num_class_embeds=10)
        inputs = {"sample": torch.randn(4, 1, 8, 8, generator=g), "timestep": T,
                  "class_labels": torch.tensor([1, 2, 3, 4])}
    else:
        model = tiny_unet_condition()
        inputs = {"sample": torch.randn(4, 4, 8, 8, generator=g), "timestep": T,
                  "encoder_hidden_states": torch.randn(4, 5, 16, generator=g)}
    bridges = random_bridges(model)
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=LEVELS,
        hand_exit=lambda inp, k: truncated_forward(model, bridges, inp, k),
        count=count_levels,
        apply_kwargs={"bridges": bridges},
        latent="sample",
        cfg_pairs=request.param == "UNet2DConditionModel",
    )


def test_inner_blocks_run_only_on_deep_rows(case):
    """Mid and up blocks see exactly the rows of their level: the deep rows, then the deep + rejoined rows."""
    from _backbone_properties import RowDepths, apply

    model = case.model
    modules = [(("mid", 0), model.mid_block.resnets[0])] + [
        (("up", j), up.resnets[0]) for j, up in enumerate(model.up_blocks)
    ]
    apply(case, EarlyExitConfig(policy=RowDepths([3, 1, 2, 2])))
    with count_pre_hooks(modules) as seen:
        run(case)
    # level 2 (mid, up 0): 1 row; level 1 (up 1): 3 rows; level 0 (up 2): all 4
    assert seen == [(("mid", 0), 1), (("up", 0), 1), (("up", 1), 3), (("up", 2), 4)]


def test_untrained_bridges_replace_the_inner_levels_by_zero(case):
    model = case.model
    bridges = UNetExitBridges.from_model(model)
    feature = torch.randn(2, 8, 8, 8)
    assert torch.equal(bridges(0, feature, torch.randn(2, UNetAdapter(model).temb_dim())), torch.zeros(2, 16, 8, 8))


def test_u_net_needs_bridges_to_exit(case):
    with pytest.raises(ValueError, match="UNetExitBridges.from_model"):
        apply_early_exit(case.model, EarlyExitConfig(policy=StaticDepth(1)))
    assert not is_early_exit_applied(case.model)
    apply_early_exit(case.model, EarlyExitConfig())  # exits off needs none
    assert torch.equal(run(case), truncated_forward(case.model, None, case.inputs, LEVELS))


def test_bridges_for_another_model_raise():
    other = tiny_unet_condition()
    with pytest.raises(ValueError, match="level_channels|model_class"):
        apply_early_exit(tiny_unet(), EarlyExitConfig(policy=StaticDepth(1)), bridges=UNetExitBridges.from_model(other))
    with pytest.raises(ValueError, match="bridges are for U-Nets"):
        apply_early_exit(tiny_dit(num_layers=2), EarlyExitConfig(), bridges=UNetExitBridges.from_model(other))


def test_heads_read_level_features(case):
    heads = UncertaintyHeads.from_model(case.model)
    assert heads.config.feature_channels == [8, 16, 16]
    channels = case.inputs["sample"].shape[1]
    for level, (c, size) in enumerate([(8, 8), (16, 4), (16, 2)]):
        assert heads(level, torch.randn(2, c, size, size)).shape == (2, channels, 8, 8)


def test_controlnet_residuals_raise():
    model = tiny_unet_condition()
    apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(1)), bridges=random_bridges(model))
    with pytest.raises(ValueError, match="mid_block_additional_residual"):
        model(torch.randn(1, 4, 8, 8), 1, torch.randn(1, 5, 16), mid_block_additional_residual=torch.zeros(1))


def test_unsupported_layouts_raise_type_error():
    skip = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 8),
        down_block_types=("SkipDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "SkipUpBlock2D"),
        norm_num_groups=4,
    )
    with pytest.raises(TypeError, match="SkipDownBlock2D"):
        get_adapter(skip)
    with pytest.raises(TypeError, match="SkipDownBlock2D"):
        apply_early_exit(skip)


def test_exit_outputs_for_training_match_the_engine_and_train_the_bridges(case):
    from ee_diffusion.hooks import early_exit
    from ee_diffusion.training.losses import DeeDiffLossConfig, deediff_loss_terms

    model, bridges = case.model, case.apply_kwargs["bridges"]
    conditioning = {k: v for k, v in case.inputs.items() if k not in ("sample", "timestep")}
    features, predictions = UNetAdapter(model).exit_outputs(case.inputs["sample"], T, bridges=bridges, **conditioning)
    assert [tuple(f.shape[1:]) for f in features] == [(8, 8, 8), (16, 4, 4), (16, 2, 2)]
    for depth, prediction in enumerate(predictions, start=1):
        with early_exit(model, EarlyExitConfig(policy=StaticDepth(depth)), bridges=bridges):
            torch.testing.assert_close(prediction.detach(), run(case), rtol=0, atol=1e-5)
    heads = UncertaintyHeads.from_model(model)
    noise = torch.randn_like(case.inputs["sample"])
    terms = deediff_loss_terms(predictions, [heads(i, f) for i, f in enumerate(features)], noise, DeeDiffLossConfig())
    terms["loss"].backward()
    assert all(p.grad is not None for p in bridges.parameters())
    assert all(p.grad is not None for p in heads.parameters())


def test_training_losses_take_u_nets(case):
    from ee_diffusion.schedules import TimestepSchedule
    from ee_diffusion.training.losses import ASELossConfig, ase_loss, deediff_loss

    model, bridges = case.model.train(), case.apply_kwargs["bridges"]
    x = case.inputs["sample"]
    conditioning = {k: v for k, v in case.inputs.items() if k not in ("sample", "timestep")}
    noise = torch.randn_like(x)
    config = ASELossConfig(schedule=TimestepSchedule(boundaries=[200, 800], depths=[3, 2, 1]))
    out = ase_loss(model, x, noise, T, config=config, bridges=bridges, **conditioning)
    assert out["depth"].item() == pytest.approx((3 + 2 + 2 + 1) / 4)
    out["loss"].backward()
    assert all(p.grad is not None for p in bridges.parameters())
    heads = UncertaintyHeads.from_model(model)
    out = deediff_loss(model, heads, x, noise, T, bridges=bridges, **conditioning)
    assert out["block_mse"].shape == (LEVELS,)
    model.eval()
