"""The hook API on stock diffusers pipelines with tiny real components: DDPMPipeline (UNet2DModel),
StableDiffusionPipeline (UNet2DConditionModel), PixArtAlphaPipeline and StableDiffusion3Pipeline.

Text encoders are not part of early exit (it hooks the denoiser only), so the text-to-image pipelines get
precomputed prompt embeddings and no text encoder, tokenizer or VAE (`output_type="latent"`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")  # the text-to-image pipelines are dummies without it

from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PixArtAlphaPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
)

from ee_diffusion import EarlyExitConfig, apply_early_exit, record_exit_stats, remove_early_exit  # noqa: E402
from ee_diffusion.schedules import TimestepSchedule  # noqa: E402
from ee_diffusion.testing import random_bridges, tiny_pixart, tiny_sd3, tiny_unet, tiny_unet_condition  # noqa: E402

STEPS = 3
SCHEDULERS = {
    "DDPM": DDPMScheduler,
    "DDIM": DDIMScheduler,
    "DPMSolverMultistep": DPMSolverMultistepScheduler,
    "EulerDiscrete": EulerDiscreteScheduler,
    "Heun": HeunDiscreteScheduler,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def embeds(n, length=5, dim=16, seed=0):
    return torch.randn(n, length, dim, generator=torch.Generator().manual_seed(seed))


def make(kind, scheduler="DDIM"):
    """(pipeline, its denoiser, extra apply_early_exit kwargs, call kwargs) with tiny real components."""
    if kind == "ddpm":
        unet = tiny_unet()
        pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
        return pipe, unet, {"bridges": random_bridges(unet)}, {"batch_size": 2, "output_type": "np"}
    text = {"prompt_embeds": embeds(2), "negative_prompt_embeds": embeds(2, seed=1)}
    common = {"height": 64, "width": 64, "output_type": "latent", **text}
    if kind == "sd":
        unet = tiny_unet_condition()
        pipe = StableDiffusionPipeline(
            vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=SCHEDULERS[scheduler](),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        return pipe, unet, {"bridges": random_bridges(unet)}, common
    if kind == "pixart":
        model = tiny_pixart()
        pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model,
                                   scheduler=DDIMScheduler())
        mask = torch.ones(2, 5)
        call = {**common, "negative_prompt": None, "prompt_attention_mask": mask,
                "negative_prompt_attention_mask": mask, "use_resolution_binning": False}
        return pipe, model, {}, call
    model = tiny_sd3()
    pipe = StableDiffusion3Pipeline(
        transformer=model, scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )
    pooled = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    return pipe, model, {}, {**common, "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": -pooled}


def sample(pipe, call):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), **call).images
    return np.asarray(out) if not isinstance(out, torch.Tensor) else out.numpy()


def check_pipeline(kind, scheduler="DDIM", calls_per_step=1):
    pipe, model, extra, call = make(kind, scheduler)
    stock = sample(pipe, call)
    # 1. hooks on, no exits: bit-identical to the stock pipeline
    apply_early_exit(model, EarlyExitConfig(), **extra)
    assert np.array_equal(sample(pipe, call), stock)
    remove_early_exit(model)
    # 2. an ASE-style schedule: fewer blocks at noisy steps, statistics for every model call
    n = 3 if kind in ("ddpm", "sd") else 4  # U-Net levels or transformer blocks
    apply_early_exit(model, EarlyExitConfig(policy=TimestepSchedule(boundaries=[500], depths=[n, 1])), **extra)
    with record_exit_stats(model) as stats:
        early = sample(pipe, call)
    assert not np.array_equal(early, stock)
    assert np.isfinite(early).all()
    expected_calls = calls_per_step * STEPS - (calls_per_step - 1)  # Heun: 2 calls per step but the first
    assert stats.num_calls == expected_calls
    assert 0 < stats.depth_fraction < 1
    guided = kind != "ddpm"
    assert stats.cfg_paired == [guided] * stats.num_calls  # text pipelines batch [negative; positive]
    assert all(b.shape == ((4,) if guided else (2,)) for b in stats.blocks_run)
    # 3. removal restores the stock pipeline exactly
    remove_early_exit(model)
    assert np.array_equal(sample(pipe, call), stock)


@pytest.mark.parametrize("kind", ["ddpm", "pixart", "sd3"])
def test_stock_pipeline(kind):
    check_pipeline(kind)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_stable_diffusion_pipeline_with_schedulers(scheduler):
    check_pipeline("sd", scheduler, calls_per_step=2 if scheduler == "Heun" else 1)


def test_docs_backbones_runs(capsys):
    """Every ```python block of docs/backbones.md runs, in order, in one namespace."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / "backbones.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/backbones.md", "exec"), namespace)
