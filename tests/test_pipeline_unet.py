"""`EarlyExitUNetPipeline`: stock parity with exits off, exits through the engine, save/load with the exit config in
`model_index.json`, the 0.1 folder layout (deprecated, still loads), clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline

from ee_diffusion import EarlyExitConfig, UncertaintyHeads
from ee_diffusion.pipelines import EarlyExitUNetPipeline
from ee_diffusion.schedules import CachedTailResidual, StaticDepth, TimestepSchedule
from ee_diffusion.testing import random_bridges, tiny_unet
from ee_diffusion.unet import UNetExitBridges

LABELS = [1, 2, 7]


@pytest.fixture()
def pipe():
    unet = tiny_unet(num_class_embeds=11)
    pipe = EarlyExitUNetPipeline(unet=unet, scheduler=DDIMScheduler(), exit_bridges=random_bridges(unet),
                                 exit_heads=UncertaintyHeads.from_model(unet), id2label={i: str(i) for i in range(10)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise(n=len(LABELS)):
    return torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(3))


def stock_loop(unet, scheduler, labels, latents, steps, guidance):
    """The plain DDIM loop with the unhooked U-Net: what exits-off must reproduce bit for bit."""
    labels = torch.tensor(labels)
    null = torch.full_like(labels, unet.config.num_class_embeds - 1)
    scheduler.set_timesteps(steps)
    sample = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            guided = guidance > 1
            x = torch.cat([sample, sample]) if guided else sample
            eps = unet(scheduler.scale_model_input(x, t), t.expand(x.shape[0]),
                       class_labels=torch.cat([labels, null]) if guided else labels).sample
            if guided:
                cond, uncond = eps.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            sample = scheduler.step(eps, t, sample).prev_sample
    return (sample / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_exits_off_is_the_stock_unet_loop(pipe, guidance):
    out = pipe(LABELS, num_inference_steps=3, guidance_scale=guidance, latents=noise(), output_type="pt")
    expected = stock_loop(pipe.unet, DDIMScheduler(), LABELS, noise(), 3, guidance)
    assert torch.equal(out.images, expected)
    assert out.exit_stats.depth_fraction == 1.0
    assert not hasattr(pipe.unet, "_diffusers_hook")  # hooks only for the duration of a call


def test_exits_follow_the_policy_and_pairs_are_declared(pipe, monkeypatch):
    # The pipeline declares its guidance layout: the engine must never infer it from the tensors.
    from ee_diffusion.unet import UNetAdapter

    def refuse(*args, **kwargs):
        raise AssertionError("the engine compared tensors to find guidance pairs")

    monkeypatch.setattr(UNetAdapter, "is_cfg_pair_batch", refuse)
    config = EarlyExitConfig(policy=TimestepSchedule(boundaries=[500], depths=[3, 1]))
    out = pipe(LABELS, num_inference_steps=4, guidance_scale=2.0, latents=noise(), exit_config=config, output_type="pt")
    stats = out.exit_stats
    assert all(stats.cfg_paired) and stats.num_calls == 4
    for t, blocks in zip(stats.timesteps, stats.blocks_run):
        assert blocks.tolist() == [3 if float(t[0]) < 500 else 1] * 6


def test_save_and_load_keep_bridges_heads_labels_and_exit_config(pipe, tmp_path):
    pipe.set_default_exit_config(EarlyExitConfig(policy=StaticDepth(2)))
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "EarlyExitUNetPipeline"
    assert index["exit_config"]["policy"] == {"type": "StaticDepth", "depth": 2}
    assert index["exit_bridges"] == ["ee_diffusion.unet.bridges", "UNetExitBridges"]
    loaded = EarlyExitUNetPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.get_label_ids(["7"]) == [7]
    a = pipe(LABELS, num_inference_steps=2, latents=noise(), output_type="pt")
    b = loaded(LABELS, num_inference_steps=2, latents=noise(), output_type="pt")
    assert torch.equal(a.images, b.images)
    assert b.exit_stats.depth_fraction == pytest.approx(2 / 3)


def test_a_folder_of_version_0_1_loads_with_a_deprecation_warning(pipe, tmp_path):
    # The 0.1 layout: a DDPMPipeline folder, bridges and heads in subfolders, the rest in early_exit.json.
    DDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler).save_pretrained(tmp_path)
    pipe.exit_bridges.save_pretrained(tmp_path / "exit_bridges")
    pipe.exit_heads.save_pretrained(tmp_path / "exit_heads")
    info = {"id2label": {"3": "three"}, "null_class": 10, "exit_config": {"policy": {"type": "StaticDepth", "depth": 1}}}
    (tmp_path / "early_exit.json").write_text(json.dumps(info))
    with pytest.warns(FutureWarning, match="deprecated"):
        old = EarlyExitUNetPipeline.from_pretrained(tmp_path)
    old.set_progress_bar_config(disable=True)
    assert old.get_label_ids("three") == [3] and old.exit_heads is not None
    assert old.default_exit_config.policy == StaticDepth(1)
    expected = pipe(LABELS, num_inference_steps=2, latents=noise(), output_type="pt",
                    exit_config=EarlyExitConfig(policy=StaticDepth(1)))
    assert torch.equal(old(LABELS, num_inference_steps=2, latents=noise(), output_type="pt").images, expected.images)


def test_bad_components_and_inputs_raise_clear_errors(pipe):
    unet = pipe.unet
    with pytest.raises(TypeError, match="exit_bridges must be UNetExitBridges"):
        EarlyExitUNetPipeline(unet=unet, scheduler=DDIMScheduler(), exit_bridges=torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="null class"):
        EarlyExitUNetPipeline(unet=tiny_unet(), scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match="different model"):
        EarlyExitUNetPipeline(unet=unet, scheduler=DDIMScheduler(),
                              exit_bridges=UNetExitBridges([4, 8, 8], unet.config.block_out_channels[0] * 4))
    bare = EarlyExitUNetPipeline(unet=unet, scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match="exit_bridges=None"):
        bare(LABELS, num_inference_steps=1, exit_config=EarlyExitConfig(policy=StaticDepth(1)))
    with pytest.raises(ValueError, match=r"out-of-range ids \[10\]"):
        pipe([10], num_inference_steps=1)


def test_a_stateful_policy_is_refused_at_apply_time(pipe):
    with pytest.raises(ValueError, match="CachedTailResidual needs every row's block input"):
        pipe(LABELS, num_inference_steps=1, exit_config=EarlyExitConfig(policy=CachedTailResidual(0.1)))
    assert not hasattr(pipe.unet, "_diffusers_hook")


def test_a_version_0_1_folder_naming_an_unknown_scheduler_is_refused(pipe, tmp_path):
    DDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler).save_pretrained(tmp_path)
    (tmp_path / "early_exit.json").write_text(json.dumps({"id2label": None, "exit_config": None}))
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "NoSuchScheduler"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="names the scheduler.*NoSuchScheduler"):
        EarlyExitUNetPipeline.from_pretrained(tmp_path)
