"""EarlyExitDiTPipeline: parity with a hand-written loop and with DiTPipeline, exit stats, loading, bad input."""

from __future__ import annotations

import inspect
import json
import sys

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from ee_diffusion import (
    EarlyExitConfig,
    UncertaintyHeads,
    apply_early_exit,
    get_exit_stats,
    is_early_exit_applied,
    remove_early_exit,
)
from ee_diffusion.pipelines import CUSTOM_PIPELINE_FILE, EarlyExitDiTPipeline, EarlyExitPipelineOutput
from ee_diffusion.schedules import StaticDepth, TimestepSchedule, UncertaintyThreshold
from ee_diffusion.testing import tiny_dit

STEPS = 4
LABELS = [1, 7]

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
}


def make_pipe(transformer=None, scheduler=None, **kwargs) -> EarlyExitDiTPipeline:
    pipe = EarlyExitDiTPipeline(
        transformer=transformer if transformer is not None else tiny_dit(num_layers=4),
        scheduler=scheduler if scheduler is not None else DDIMScheduler(),
        **kwargs,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_vae(latent_channels: int = 4) -> AutoencoderKL:
    """A random one-level AutoencoderKL: 3-channel 8x8 images <-> `latent_channels`-channel 8x8 latents."""
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        latent_channels=latent_channels,
        norm_num_groups=2,
        layers_per_block=1,
        sample_size=8,
    ).eval()


def seed(value: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(value)


@torch.no_grad()
def plain_loop(transformer, scheduler, labels, guidance_scale, generator, vae=None) -> torch.Tensor:
    """The reference: a hand-written sampling loop over the unhooked transformer; returns images in [0, 1]."""
    config = transformer.config
    channels, size, batch = config.in_channels, config.sample_size, len(labels)
    x = torch.randn((batch, channels, size, size), generator=generator) * scheduler.init_noise_sigma
    y = torch.tensor(labels)
    guided = guidance_scale > 1
    if guided:
        y = torch.cat([y, torch.full_like(y, config.num_embeds_ada_norm)])  # null class = num_embeds_ada_norm
    keep_sigma = config.out_channels == 2 * channels and scheduler.config.get("variance_type") in (
        "learned", "learned_range"
    )
    stochastic = "generator" in inspect.signature(scheduler.step).parameters
    scheduler.set_timesteps(STEPS)
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        if guided:
            inp = torch.cat([inp, inp])
        out = transformer(inp, timestep=t.expand(inp.shape[0]), class_labels=y).sample
        eps, sigma = out[:, :channels], out[:, channels:]
        if guided:
            cond, uncond = eps.chunk(2)
            eps, sigma = uncond + guidance_scale * (cond - uncond), sigma[:batch]
        model_out = torch.cat([eps, sigma], dim=1) if keep_sigma else eps
        x = scheduler.step(model_out, t, x, **({"generator": generator} if stochastic else {})).prev_sample
    if vae is not None:
        x = vae.decode(x * (1 / vae.config.scaling_factor)).sample
    return (x / 2 + 0.5).clamp(0, 1)


def fresh(scheduler):
    return type(scheduler).from_config(scheduler.config)


def count_calls(module: torch.nn.Module, counter: list[int]):
    return module.register_forward_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))


# ------------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_exits_off_equals_plain_loop_pixel_space(guidance_scale):
    pipe = make_pipe()
    out = pipe(LABELS, guidance_scale=guidance_scale, generator=seed(), num_inference_steps=STEPS, output_type="pt")
    ref = plain_loop(pipe.transformer, fresh(pipe.scheduler), LABELS, guidance_scale, seed())
    assert isinstance(out, EarlyExitPipelineOutput)
    assert (out.images - ref).abs().max().item() == 0
    assert out.exit_stats.depth_fraction == 1.0
    assert out.exit_stats.num_calls == STEPS
    assert all(b.shape == (2 * len(LABELS) if guidance_scale > 1 else len(LABELS),) for b in out.exit_stats.blocks_run)


def test_exits_off_equals_plain_loop_latent_space_learned_sigma():
    # Latent space with a learned-variance DiT and a scheduler that consumes the variance channels.
    transformer = tiny_dit(num_layers=3, in_channels=4, learn_sigma=True)
    scheduler = DDPMScheduler(variance_type="learned_range")
    pipe = make_pipe(transformer, scheduler, vae=tiny_vae())
    out = pipe(LABELS, generator=seed(), num_inference_steps=STEPS, output_type="pt")
    ref = plain_loop(transformer, fresh(scheduler), LABELS, 4.0, seed(), vae=pipe.vae)
    assert out.images.shape == (2, 3, 8, 8)
    assert (out.images - ref).abs().max().item() == 0


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_parity_and_static_depth_stats(name):
    pipe = make_pipe(scheduler=SCHEDULERS[name]())
    args = dict(class_labels=LABELS, num_inference_steps=STEPS, output_type="pt")
    out = pipe(**args, generator=seed())
    ref = plain_loop(pipe.transformer, fresh(pipe.scheduler), LABELS, 4.0, seed())
    assert (out.images - ref).abs().max().item() == 0

    # Count model calls, and the real work of the blocks past the exit: the hooked block module is still
    # entered, but its feed-forward runs only when the block's own forward does.
    model_calls, late_block_calls = [0], [0]
    handles = [count_calls(pipe.transformer, model_calls)]
    handles += [count_calls(block.ff, late_block_calls) for block in pipe.transformer.transformer_blocks[2:]]
    try:
        stats = pipe(**args, generator=seed(), exit_config=EarlyExitConfig(policy=StaticDepth(2))).exit_stats
    finally:
        for handle in handles:
            handle.remove()
    expected_calls = 2 * STEPS - 1 if name == "heun" else STEPS  # Heun: two model calls per step but the last
    assert model_calls[0] == expected_calls == len(pipe.scheduler.timesteps) == stats.num_calls
    assert late_block_calls[0] == 0
    assert all(b.tolist() == [2] * 4 for b in stats.blocks_run)  # 2 labels, guided: 4 rows per call
    assert stats.total_blocks == 2 * 4 * expected_calls
    assert stats.depth_fraction == 0.5


# ------------------------------------------------------------------------------------------------- exit config
def test_exit_config_per_call_and_default_and_transformer_left_as_found():
    pipe = make_pipe()
    x = torch.randn(2, 1, 8, 8, generator=seed(3))
    t, y = torch.tensor([10, 900]), torch.tensor([1, 2])
    with torch.no_grad():
        before = pipe.transformer(x, timestep=t, class_labels=y).sample

    assert pipe.default_exit_config == EarlyExitConfig()
    pipe.set_default_exit_config(EarlyExitConfig(policy=StaticDepth(3)))
    assert pipe(3, num_inference_steps=2, output_type="pt").exit_stats.blocks_run[0].tolist() == [3, 3]
    out = pipe(3, num_inference_steps=2, output_type="pt", exit_config=EarlyExitConfig(policy=StaticDepth(1)))
    assert [b.tolist() for b in out.exit_stats.blocks_run] == [[1, 1], [1, 1]]
    assert pipe.default_exit_config.policy == StaticDepth(3)  # a per-call config does not change the default

    images, stats = pipe(3, num_inference_steps=2, output_type="np", return_dict=False)
    assert images.shape == (1, 8, 8, 1) and stats.num_calls == 2

    assert not is_early_exit_applied(pipe.transformer)
    with torch.no_grad():
        after = pipe.transformer(x, timestep=t, class_labels=y).sample
    assert torch.equal(before, after)


def test_user_hooks_are_kept_and_restored():
    pipe = make_pipe()
    base = pipe(LABELS, num_inference_steps=2, generator=seed(), output_type="pt").images
    apply_early_exit(pipe.transformer, EarlyExitConfig(policy=StaticDepth(1)))
    try:
        # The call runs with its own config (the default: never exit) ...
        out = pipe(LABELS, num_inference_steps=2, generator=seed(), output_type="pt")
        assert torch.equal(out.images, base)
        # ... and the user's hooks and config are back afterwards.
        assert is_early_exit_applied(pipe.transformer)
        with torch.no_grad():
            pipe.transformer(torch.randn(2, 1, 8, 8), timestep=torch.tensor([1, 2]), class_labels=torch.tensor([0, 1]))
        assert get_exit_stats(pipe.transformer).blocks_run[0].tolist() == [1, 1]
    finally:
        remove_early_exit(pipe.transformer)
    assert torch.equal(pipe(LABELS, num_inference_steps=2, generator=seed(), output_type="pt").images, base)


def test_cfg_pairing_together_vs_independent():
    transformer = tiny_dit(num_layers=6)
    torch.manual_seed(0)
    pipe = make_pipe(transformer, exit_heads=UncertaintyHeads.from_model(transformer))
    policy = UncertaintyThreshold(0.55, patience=1)
    runs = {}
    for mode in ("together", "independent"):
        config = EarlyExitConfig(policy=policy, cfg_pairing=mode)
        runs[mode] = pipe([0, 1, 2, 3], num_inference_steps=STEPS, generator=seed(), output_type="pt",
                          exit_config=config).exit_stats
    together, independent = runs["together"], runs["independent"]
    assert together.cfg_paired == [True] * STEPS and independent.cfg_paired == [False] * STEPS
    for blocks in together.blocks_run:
        assert torch.equal(blocks[:4], blocks[4:])  # each conditional row and its unconditional partner
    # The random heads disagree on some pair, so "independent" really lets the halves differ.
    assert any(not torch.equal(b[:4], b[4:]) for b in independent.blocks_run)
    assert 0 < together.depth_fraction < 1


# ----------------------------------------------------------------------------------------------- save and load
def test_save_load_round_trip_is_bit_exact(tmp_path):
    transformer = tiny_dit(num_layers=4)
    torch.manual_seed(0)
    heads = UncertaintyHeads.from_model(transformer)
    config = EarlyExitConfig(policy=UncertaintyThreshold(0.55, patience=1), cfg_pairing="independent")
    pipe = make_pipe(transformer, DPMSolverMultistepScheduler(), exit_heads=heads, exit_config=config,
                     id2label={0: "zero, nought", 7: "seven"})
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["exit_config"] == config.to_dict()
    assert index["exit_heads"] == ["ee_diffusion.heads", "UncertaintyHeads"]
    assert (tmp_path / "exit_heads" / "diffusion_pytorch_model.safetensors").is_file()

    loaded = EarlyExitDiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.exit_heads, UncertaintyHeads) and loaded.vae is None
    assert isinstance(loaded.scheduler, DPMSolverMultistepScheduler)
    assert loaded.default_exit_config == config
    assert loaded.get_label_ids(["nought", "seven"]) == [0, 7]
    for a, b in ((pipe.transformer, loaded.transformer), (pipe.exit_heads, loaded.exit_heads)):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))

    args = dict(class_labels=[0, 7], num_inference_steps=STEPS, output_type="pt")
    first, second = pipe(**args, generator=seed()), loaded(**args, generator=seed())
    assert torch.equal(first.images, second.images)
    assert [b.tolist() for b in first.exit_stats.blocks_run] == [b.tolist() for b in second.exit_stats.blocks_run]
    assert first.exit_stats.depth_fraction < 1  # the saved default policy really ran


@pytest.fixture
def stock_folder(tmp_path):
    """A folder written by stock DiTPipeline.save_pretrained, with its pipeline.

    Honest parity needs the same null class: DiTPipeline hard-codes null id 1000 while EarlyExitDiTPipeline uses
    `num_embeds_ada_norm`, so the model has 1000 classes (as real DiT checkpoints do). DiTPipeline also needs
    an explicit `out_channels`, hence a learned-sigma model (again like the real checkpoints).
    """
    transformer = tiny_dit(num_layers=3, in_channels=4, num_classes=1000, learn_sigma=True)
    stock = DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=DDIMScheduler())
    stock.set_progress_bar_config(disable=True)
    stock.save_pretrained(tmp_path)
    return tmp_path, stock


def test_stock_dit_folder_loads_and_matches_dit_pipeline(stock_folder):
    folder, stock = stock_folder
    args = dict(class_labels=[1, 999], num_inference_steps=STEPS, output_type="np")
    expected = stock(**args, generator=seed()).images

    pipe = EarlyExitDiTPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.exit_heads is None and isinstance(pipe.vae, AutoencoderKL)
    assert abs(pipe(**args, generator=seed()).images - expected).max() == 0

    heads = UncertaintyHeads.from_model(pipe.transformer)
    with_heads = EarlyExitDiTPipeline.from_pretrained(folder, exit_heads=heads)
    with_heads.set_progress_bar_config(disable=True)
    out = with_heads(**args, generator=seed(), exit_config=EarlyExitConfig(policy=UncertaintyThreshold(0.5)))
    assert with_heads.exit_heads is heads and out.exit_stats.num_calls == STEPS


def test_hook_api_on_stock_dit_pipeline(stock_folder):
    _, stock = stock_folder
    args = dict(class_labels=[1, 999], num_inference_steps=STEPS, output_type="np")
    expected = stock(**args, generator=seed()).images
    apply_early_exit(stock.transformer, EarlyExitConfig(policy=StaticDepth(2)))
    exited = stock(**args, generator=seed()).images
    stats = get_exit_stats(stock.transformer)
    assert stats.blocks_run[0].tolist() == [2, 2, 2, 2] and stats.cfg_paired == [True]
    assert abs(exited - expected).max() > 0
    remove_early_exit(stock.transformer)
    assert abs(stock(**args, generator=seed()).images - expected).max() == 0


def test_diffusion_pipeline_from_pretrained(tmp_path, monkeypatch):
    import diffusers.utils.dynamic_modules_utils as dynamic

    # diffusers copies custom pipeline files into its module cache: keep that inside the test's folder.
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = tmp_path / "pipe"
    make_pipe(exit_config=EarlyExitConfig(policy=StaticDepth(2))).save_pretrained(folder)

    with pytest.raises(AttributeError, match="has no attribute EarlyExitDiTPipeline"):
        DiffusionPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(folder, custom_pipeline=CUSTOM_PIPELINE_FILE)
    pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline=CUSTOM_PIPELINE_FILE, trust_remote_code=True)
    assert type(pipe) is EarlyExitDiTPipeline
    assert pipe.default_exit_config.policy == StaticDepth(2)


# -------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(class_labels="cat"), TypeError, r"got the string 'cat'.*get_label_ids"),
        (dict(class_labels=[]), ValueError, r"got an empty sequence"),
        (dict(class_labels=[1, 10]), ValueError, r"in \[0, 10\).*out-of-range ids \[10\]"),
        (dict(class_labels=-1), ValueError, r"out-of-range ids \[-1\]"),
        (dict(class_labels=[1.5]), TypeError, r"non-integer entries \[1.5\]"),
        (dict(class_labels=True), TypeError, r"got bool"),
        (dict(class_labels=torch.tensor([[1]])), TypeError, r"shape \(1, 1\)"),
        (dict(class_labels=torch.tensor([1.0])), TypeError, r"torch.float32"),
        (dict(num_inference_steps=0), ValueError, r"positive integer, got 0"),
        (dict(num_inference_steps=2.0), TypeError, r"positive integer, got 2.0"),
        (dict(guidance_scale=float("nan")), ValueError, r"finite number >= 0.*got nan"),
        (dict(guidance_scale=-1), ValueError, r"got -1"),
        (dict(guidance_scale="4"), TypeError, r"got '4'"),
        (dict(output_type="jpg"), ValueError, r"\('pil', 'np', 'pt', 'latent'\), got 'jpg'"),
        (dict(latents=torch.zeros(2, 1, 4, 4)), ValueError, r"\(2, 1, 8, 8\).*got \(2, 1, 4, 4\)"),
        (dict(latents=[0.0]), TypeError, r"latents must be a torch.Tensor"),
        (dict(exit_config={"policy": None}), TypeError, r"EarlyExitConfig or None, got dict"),
        (dict(exit_config=EarlyExitConfig(policy=UncertaintyThreshold(0.9))), ValueError, r"needs uncertainty heads"),
    ],
)
def test_bad_inputs_raise(kwargs, error, match):
    pipe = make_pipe(transformer=tiny_dit(num_layers=2))
    kwargs = {"class_labels": [1, 2], "num_inference_steps": 1, **kwargs}
    with pytest.raises(error, match=match):
        pipe(**kwargs)


def test_label_names_and_construction_errors():
    pipe = make_pipe(id2label={"3": "cat, kitty", 5: "dog"})
    assert pipe.get_label_ids("kitty") == [3]
    assert pipe.get_label_ids(["dog", "cat"]) == [5, 3]
    with pytest.raises(ValueError, match=r"unknown labels \['white shark'\]; known labels: \['cat', 'dog', 'kitty'\]"):
        pipe.get_label_ids(["dog", "white shark"])
    with pytest.raises(ValueError, match="no label names"):
        make_pipe().get_label_ids("cat")
    with pytest.raises(TypeError, match="exit_heads must be UncertaintyHeads"):
        make_pipe(exit_heads=torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="made for a different model"):
        make_pipe(transformer=tiny_dit(num_layers=2), exit_heads=UncertaintyHeads.from_model(tiny_dit(num_layers=4)))
    with pytest.raises(TypeError, match="EarlyExitConfig, a dict or None, got str"):
        make_pipe(exit_config="static")


def test_output_types():
    pipe = make_pipe(transformer=tiny_dit(num_layers=2))

    def run(**kwargs):
        kwargs = {"generator": seed(), **kwargs}
        return pipe(class_labels=[1, 2], num_inference_steps=1, **kwargs).images

    pt, latent = run(output_type="pt"), run(output_type="latent")
    assert torch.equal(pt, (latent / 2 + 0.5).clamp(0, 1))
    assert run(output_type="np").shape == (2, 8, 8, 1)
    pil = run(output_type="pil")
    assert len(pil) == 2 and pil[0].size == (8, 8)
    # Given latents are used as the initial noise.
    noise = torch.randn(2, 1, 8, 8, generator=seed())
    assert torch.equal(run(generator=None, latents=noise, output_type="pt"), pt)


def test_docs_loading_runs(tmp_path, monkeypatch):
    """Every ```python block of docs/loading.md runs, in order, in one namespace."""
    import re
    import tempfile
    from pathlib import Path

    import diffusers.utils.dynamic_modules_utils as dynamic

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    text = (Path(__file__).resolve().parents[1] / "docs" / "loading.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/loading.md", "exec"), namespace)


def test_the_pipeline_declares_its_guidance_pairs(monkeypatch):
    """Guided calls tell the engine the layout: no tensor comparison, no host sync to find the pairs."""
    from ee_diffusion.families import FamilyAdapter

    monkeypatch.setattr(FamilyAdapter, "is_cfg_pair_batch", lambda *a: pytest.fail("pairs were inferred"))
    pipe = make_pipe(tiny_dit(num_layers=4))
    config = EarlyExitConfig(policy=TimestepSchedule(boundaries=[500], depths=[4, 2]))
    guided = pipe([1, 2], num_inference_steps=STEPS, guidance_scale=3.0, generator=seed(), exit_config=config,
                  output_type="pt").exit_stats
    assert guided.cfg_paired == [True] * STEPS and all(b.numel() == 4 for b in guided.blocks_run)
    plain = pipe([1, 2], num_inference_steps=STEPS, guidance_scale=1.0, generator=seed(), exit_config=config,
                 output_type="pt").exit_stats
    assert plain.cfg_paired == [False] * STEPS
