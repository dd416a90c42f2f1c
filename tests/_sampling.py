"""What tests/test_tail_cache.py and tests/test_forecast.py share: plain scheduler loops on a class-conditional DiT."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler


def sample(model, x, labels, scheduler, steps=6):
    """A plain scheduler loop (Heun-type schedulers call the model twice per step); returns the final sample
    (B, C, H, W)."""
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        eps = model(model_input, timestep=t.expand(x.shape[0]), class_labels=labels).sample
        x = scheduler.step(eps, t, x).prev_sample
    return x


def cfg_sample(model, x, labels, steps=8, scale=3.0):
    """DDIM with classifier-free guidance: one batch [cond; uncond] of 2B rows per call (null class 10)."""
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(steps)
    null = torch.full_like(labels, 10)
    for t in scheduler.timesteps:
        eps = model(torch.cat([x, x]), timestep=t.expand(2 * x.shape[0]), class_labels=torch.cat([labels, null])).sample
        cond, uncond = eps.chunk(2)
        x = scheduler.step(uncond + scale * (cond - uncond), t, x).prev_sample
    return x
