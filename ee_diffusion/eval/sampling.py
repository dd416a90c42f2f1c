"""Sampling for evaluation: fixed seeds, fixed class balance, the same initial noise for every method.

Image `i` of an evaluation set has the label `i % num_classes` and its own noise generator seeded with
`(seed, i)`, so an image does not depend on the batch it was drawn in, on the batch size, or on the process
that drew it: every method sees exactly the same initial noise, and an evaluation split across processes
(`generate_distributed`) gives the same images as one process.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import EarlyExitConfig
from ..stats import ExitStats

_SEED_STRIDE = 1_000_003


def image_generators(indices: list[int] | range, seed: int) -> list[torch.Generator]:
    """One CPU generator per global image index."""
    return [torch.Generator().manual_seed(seed * _SEED_STRIDE + int(i)) for i in indices]


def class_labels(indices: list[int] | range, num_classes: int) -> list[int]:
    """Class balance by construction: image i has class i % num_classes."""
    return [int(i) % num_classes for i in indices]


class BlockCounter:
    """Counts block evaluations (rows that really went through a block), whatever skipped the others.

    It hooks the first module of every block that runs only when the block's attention computes (a DiT or PixArt block's
    `attn1.to_q`, an SD3 block's `attn.to_q`; other blocks, such as a U-Net's levels: the block itself), so it counts early exit,
    FirstBlockCache (which skips whole blocks) and TaylorSeerCache (which replaces the attention and feed-forward
    outputs by a forecast) alike.
    """

    def __init__(self, blocks: nn.ModuleList) -> None:
        self.rows = 0
        self._handles = [self._counted(b).register_forward_pre_hook(self._count, with_kwargs=True) for b in blocks]

    @staticmethod
    def _counted(block: nn.Module) -> nn.Module:
        attention = getattr(block, "attn1", None) or getattr(block, "attn", None)  # DiT/PixArt, SD3
        query = getattr(attention, "to_q", None)
        return query if isinstance(query, nn.Module) else block

    def _count(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.rows += int((args[0] if args else kwargs["hidden_states"]).shape[0])

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class SampleRun:
    """Images (N, C, H, W) in [0, 1] (CPU, float32), their labels and global indices, and block evaluations."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    block_evals: int
    model_rows: int  # rows the model was called with, summed over calls (x num_blocks = full-depth block evals)
    extra: dict[str, Any] = field(default_factory=dict)


def generate(
    pipe: Any,
    indices: list[int] | range,
    *,
    exit_config: EarlyExitConfig | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float = 4.0,
    seed: int = 0,
    batch_size: int = 64,
    call_wrapper: Any = None,
) -> SampleRun:
    """Generate the images `indices` with `pipe` (an `EarlyExitDiTPipeline`); returns a `SampleRun`.

    `exit_config=None` means the full model (never the pipeline's default). `call_wrapper`, if given, is a
    context manager factory entered around every pipeline call (used for diffusers' FirstBlockCache).

    ```py
    >>> from diffusers import DDIMScheduler
    >>> from ee_diffusion.pipelines import EarlyExitDiTPipeline
    >>> from ee_diffusion.testing import tiny_dit
    >>> pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DDIMScheduler())
    >>> pipe.set_progress_bar_config(disable=True)
    >>> run = generate(pipe, range(3), num_inference_steps=2, batch_size=2)
    >>> tuple(run.images.shape), run.labels.tolist(), run.block_evals
    ((3, 1, 8, 8), [0, 1, 2], 24)

    ```
    """
    indices = list(indices)
    config = exit_config if exit_config is not None else EarlyExitConfig()
    transformer = pipe.transformer
    shape = (transformer.config.in_channels, transformer.config.sample_size, transformer.config.sample_size)
    num_classes = pipe.num_classes
    counter = BlockCounter(transformer.transformer_blocks)
    images, model_rows = [], 0
    stats = ExitStats(len(transformer.transformer_blocks))
    try:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            generators = image_generators(chunk, seed)
            noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
            wrapper = call_wrapper() if call_wrapper is not None else contextlib.nullcontext()
            with wrapper:
                out = pipe(
                    class_labels=class_labels(chunk, num_classes),
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    generator=generators,
                    latents=noise,
                    exit_config=config,
                    output_type="pt",
                )
            images.append(out.images.float().cpu())
            model_rows += sum(b.numel() for b in out.exit_stats.blocks_run)
            stats.extend(out.exit_stats)
    finally:
        counter.close()
    return SampleRun(
        images=torch.cat(images),
        labels=torch.tensor(class_labels(indices, num_classes)),
        indices=torch.tensor(indices),
        block_evals=counter.rows,
        model_rows=model_rows,
        extra={"exit_stats": stats},
    )


def generate_distributed(pipe: Any, num_images: int, accelerator: Any = None, **kwargs: Any) -> SampleRun:
    """`generate` for images 0..num_images-1 split across the processes of `accelerator`; every rank gets all.

    Each rank draws the global indices `rank, rank + world, ...` (its own seeds), and the results are gathered
    and put back in index order, so the images equal those of a single process. The exit statistics of all
    ranks are merged, rank by rank (`extra["exit_stats"]`).
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    accelerator = Accelerator(cpu=True) if accelerator is None else accelerator
    world, rank = accelerator.num_processes, accelerator.process_index
    mine = list(range(rank, num_images, world))
    run = generate(pipe, mine, **kwargs)
    if world == 1:
        return run
    parts = gather_object([(run.indices, run.images, run.labels, run.block_evals, run.model_rows,
                             run.extra["exit_stats"])])
    indices = torch.cat([p[0] for p in parts])
    order = torch.argsort(indices)
    stats = ExitStats(parts[0][5].num_blocks)
    for part in parts:
        stats.extend(part[5])
    return SampleRun(
        images=torch.cat([p[1] for p in parts])[order],
        labels=torch.cat([p[2] for p in parts])[order],
        indices=indices[order],
        block_evals=sum(p[3] for p in parts),
        model_rows=sum(p[4] for p in parts),
        extra={"exit_stats": stats},
    )
