"""The package's one sampling loop: any supported pipeline (stock or ours), image by image, with or without
early exit, for evaluation and calibration alike.

Image `i` takes condition `i % conditioning.size` and its own noise generator seeded with `(seed, i)`
(`image_generators`, or the prompt's own seed), so an image does not depend on the batch it was drawn in, on the
batch size or on the process that drew it, and every method sees the same initial noise. Stock pipelines get the
exit hooks for the duration of each call (`early_exit`), ours get `exit_config=`; both report block evaluations
the same way (`BlockCounter`).

```py
>>> from ee_diffusion.pipelines.conditioning import Conditioning
>>> from ee_diffusion.testing import tiny_pipeline
>>> pipe = tiny_pipeline("pixart")
>>> pipe.set_progress_bar_config(disable=True)
>>> cond = Conditioning("prompts", prompts=[Prompt("a red cat"), Prompt("a blue car")])
>>> run = sample_pipeline(pipe, range(3), cond, num_inference_steps=2, guidance_scale=2.0)
>>> tuple(run.images.shape), run.model_rows, run.block_evals
((3, 3, 16, 16), 12, 48)

```
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import check_call_options
from ..config import EarlyExitConfig
from ..hooks import early_exit
from ..pipelines.conditioning import Conditioning, Prompt
from ..pipeline_hooks import find_denoisers
from ..pipelines.stock import kind_of
from ..stats import ExitStats

__all__ = ["BlockCounter", "Prompt", "SampleRun", "image_generators", "image_labels", "image_noise_generators",
           "sample_pipeline"]

_SEED_STRIDE = 1_000_003


def image_generators(indices: list[int] | range, seed: int) -> list[torch.Generator]:
    """One CPU generator per global image index."""
    return [torch.Generator().manual_seed(seed * _SEED_STRIDE + int(i)) for i in indices]


class BlockCounter:
    """Counts rows that really went through `modules` (summed over calls), whatever skipped the others.

    Given a model's blocks it hooks the first module of each that runs only when the block's attention computes
    (`_counted`: a DiT or PixArt block's `attn1.to_q`, an SD3 block's `attn.to_q`; a U-Net level: the level
    itself), so it counts early exit, FirstBlockCache (which skips whole blocks) and TaylorSeerCache (which
    replaces the attention and feed-forward outputs by a forecast) alike. `blocks=False` hooks the modules
    themselves (the denoiser: the rows it was called with).
    """

    def __init__(self, modules: Sequence[nn.Module], blocks: bool = True) -> None:
        self.rows = 0
        self._handles = [(self._counted(m) if blocks else m).register_forward_pre_hook(self._count, with_kwargs=True)
                         for m in modules]

    @staticmethod
    def _counted(block: nn.Module) -> nn.Module:
        """The block's first attention query projection (`attn1.to_q`, `attn.to_q`, below a wrapper block:
        `block.attn1.to_q`), in registration order; the block itself where it has none (a U-Net level)."""
        return next((module for name, module in block.named_modules() if name.rpartition(".")[2] == "to_q"), block)

    def _count(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # (B, ...) rows: the first positional argument, else `hidden_states` (a transformer, a block) or `sample`
        # (a U-Net).
        sample = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        self.rows += int(sample.shape[0])

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


def image_labels(conditioning: Conditioning, indices: Sequence[int]) -> torch.Tensor:
    """(N,) labels of images `indices`: their class ids (classes), prompt indices (prompts) or zeros (none)."""
    if conditioning.kind == "classes":
        return torch.tensor([conditioning.class_id(int(i)) for i in indices])
    return torch.tensor([int(i) % conditioning.size for i in indices])


def image_noise_generators(indices: Sequence[int], conditioning: Conditioning, seed: int) -> list[torch.Generator]:
    """One generator per image: the run's `(seed, i)`, or, for a prompt with its own seed, `(prompt seed, r)`
    where `r` counts the prompt's earlier images in the set (so a prompt's first image is the same in any set)."""
    generators = image_generators(indices, seed)
    if conditioning.kind == "prompts":
        for position, i in enumerate(indices):
            prompt = conditioning.prompt(int(i))
            if prompt.seed is not None:
                generators[position] = torch.Generator().manual_seed(
                    prompt.seed * _SEED_STRIDE + int(i) // conditioning.size)
    return generators


def _call_kwargs(pipe: Any, chunk: list[int], conditioning: Conditioning, guidance_scale: float | None,
                 generators: list[torch.Generator]) -> dict[str, Any]:
    """The pipeline-call arguments for one chunk of images (the condition, guidance, generators)."""
    kind = kind_of(pipe)
    kwargs: dict[str, Any] = {"generator": generators}
    if kind.conditioning != conditioning.kind:
        raise ValueError(f"{type(pipe).__name__} is conditioned on {kind.conditioning}, got a "
                         f"{conditioning.kind} conditioning ({conditioning.describe()})")
    if conditioning.kind == "classes":
        kwargs["class_labels"] = [conditioning.class_id(i) for i in chunk]
    elif conditioning.kind == "prompts":
        kwargs["prompt"] = [conditioning.prompt(i).text for i in chunk]
    else:
        kwargs["batch_size"] = len(chunk)
    if guidance_scale is not None:
        if conditioning.kind == "none":
            raise ValueError(f"{type(pipe).__name__} is unconditional and takes no guidance scale, "
                             f"got {guidance_scale}")
        kwargs["guidance_scale"] = guidance_scale
    if type(pipe).__name__ in ("PixArtAlphaPipeline", "SanaPipeline"):
        # The image size is the model's own (no aspect-ratio binning); captions are used as given.
        kwargs.update(use_resolution_binning=False, clean_caption=False)
    if type(pipe).__name__ == "HunyuanDiTPipeline":  # binning maps every size to 768-1280 pixels, whatever the model
        kwargs.update(use_resolution_binning=False)
    if type(pipe).__name__ in ("SanaPipeline", "AuraFlowPipeline"):  # calls default to 1024 pixels, whatever the model
        size = pipe.transformer.config.sample_size * pipe.vae_scale_factor
        kwargs.update(height=size, width=size)
    return kwargs


def _as_images(out: Any) -> torch.Tensor:
    """A pipeline output's `output_type="np"` images (N, H, W, C) in [0, 1] -> float32 (N, C, H, W) on the CPU; a
    video pipeline's frames (N, F, H, W, C) are laid side by side into one (N, C, H, F x W) image per video, so that
    PSNR and the sample store treat every frame alike."""
    array = np.asarray(out["frames"] if "frames" in out else out["images"], dtype=np.float32)
    if array.ndim == 5:
        n, frames, height, width, channels = array.shape
        array = array.transpose(0, 2, 1, 3, 4).reshape(n, height, frames * width, channels)
    if array.ndim == 3:
        array = array[..., None]
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def sample_pipeline(
    pipe: Any,
    indices: Sequence[int],
    conditioning: Conditioning,
    *,
    exit_config: EarlyExitConfig | None = None,
    heads: nn.Module | None = None,
    bridges: nn.Module | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    call_wrapper: Callable[[], Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
    call_options: dict[str, int] | None = None,
) -> SampleRun:
    """Images `indices` of the set (N, C, H, W) in [0, 1], with their block evaluations and exit statistics.

    `exit_config=None` runs the stock denoiser with no hooks at all (the baseline; diffusers caches through
    `call_wrapper`, a context-manager factory entered around every call); an `EarlyExitConfig` runs with the
    exit hooks (`heads`: `UncertaintyHeads` for certainty policies; `bridges`: U-Nets). `guidance_scale=None`
    keeps the pipeline's default. `on_batch(n)` is told after every batch of `n` images (progress bars).
    `call_options` (`CALL_OPTIONS`: height, width, num_frames) go to every call as they are.
    `labels`: `image_labels`.
    Both of Wan 2.2's experts are hooked and counted (`find_denoisers`, as `ee_diffusion.enable` finds them).
    """
    indices = [int(i) for i in indices]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    call_options = check_call_options(call_options or {})
    kind = kind_of(pipe)
    denoisers = list(find_denoisers(pipe).values())
    from ..adapters import get_adapter

    blocks = BlockCounter([block for denoiser in denoisers for block in get_adapter(denoiser).blocks])
    rows = BlockCounter(denoisers, blocks=False)
    stats: ExitStats | None = None
    images = []
    try:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            kwargs = _call_kwargs(pipe, chunk, conditioning, guidance_scale,
                                  image_noise_generators(chunk, conditioning, seed))
            kwargs.update(call_options, num_inference_steps=num_inference_steps, output_type="np")
            with contextlib.ExitStack() as context:
                if call_wrapper is not None:
                    context.enter_context(call_wrapper())
                if kind.ours:
                    kwargs["exit_config"] = exit_config if exit_config is not None else EarlyExitConfig()
                # A stock denoiser is hooked for the call only when an exit config is given (none: no hooks at all).
                hooked = not kind.ours and exit_config is not None
                call_stats = [context.enter_context(early_exit(denoiser, exit_config, heads, bridges))
                              for denoiser in denoisers] if hooked else []
                out = pipe(**kwargs)
            if kind.ours:
                call_stats = [out.exit_stats]
            # Wan 2.2's experts take the high-noise steps, then the low-noise ones: their calls in call order.
            for recorded in call_stats:
                stats = ExitStats(recorded.num_blocks) if stats is None else stats
                stats.extend(recorded)
            images.append(_as_images(out))
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        blocks.close()
        rows.close()
    extra = {} if stats is None else {"exit_stats": stats}
    return SampleRun(images=torch.cat(images), labels=image_labels(conditioning, indices),
                     indices=torch.tensor(indices), block_evals=blocks.rows, model_rows=rows.rows, extra=extra)
