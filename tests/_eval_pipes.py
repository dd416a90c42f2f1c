"""What tests/ and bench/tests share: a tiny pixel-space DiT pipeline of ours, sampling it class-balanced, and the
property every diffusers cache baseline must have on it."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from ee_diffusion import UncertaintyHeads
from ee_diffusion.eval.baselines import diffusers_cache
from ee_diffusion.eval.pipeline_sampling import sample_pipeline
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.pipelines.conditioning import Conditioning
from ee_diffusion.testing import tiny_dit


def tiny_dit_pipeline(num_layers=4, heads=False):
    """A random `num_layers`-block DiT (8x8x1, 10 classes) with DDIM, with random exit heads if `heads`."""
    model = tiny_dit(num_layers=num_layers)
    pipe = EarlyExitDiTPipeline(transformer=model, scheduler=DDIMScheduler(),
                                exit_heads=UncertaintyHeads.from_model(model) if heads else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_classes(pipe, indices, guidance_scale=4.0, **kwargs):
    """`sample_pipeline` on one of our class-conditional pipelines: image i has class i % num_classes."""
    classes = Conditioning("classes", class_ids=list(range(pipe.num_classes)))
    return sample_pipeline(pipe, indices, classes, guidance_scale=guidance_scale, **kwargs)


def assert_caches_skip_work_and_leave_the_model_exact(pipe, caches, steps):
    """Each cache of `caches` skips block evaluations and changes the images; after it the stock model, bit for bit."""
    reference = sample_classes(pipe, range(3), num_inference_steps=steps)
    for cache in caches:
        wrapper = lambda cache=cache: diffusers_cache(pipe.transformer, cache, pipe.scheduler, steps)
        cached = sample_classes(pipe, range(3), num_inference_steps=steps, call_wrapper=wrapper)
        assert cached.block_evals < reference.block_evals, cache.kind
        assert not torch.equal(cached.images, reference.images), cache.kind
        # Every hook is gone again: the stock model, bit for bit.
        assert not any(getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks
                       for m in pipe.transformer.modules()), cache.kind
        again = sample_classes(pipe, range(3), num_inference_steps=steps)
        torch.testing.assert_close(again.images, reference.images, rtol=0, atol=0, msg=cache.kind)
