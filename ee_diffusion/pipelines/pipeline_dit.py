"""`EarlyExitDiTPipeline`: class-conditional DiT sampling with early exit, latent or pixel space.

The shared machinery (inputs, labels, default exit config, the denoising loop under `early_exit`) is in
`ee_diffusion.pipelines.base`; this module holds what is DiT's: its components and its model call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel
from diffusers.schedulers import KarrasDiffusionSchedulers

from ..config import EarlyExitConfig
from ..heads import UncertaintyHeads
from .base import ClassConditionalExitPipeline, EarlyExitPipelineOutput, check_components


class EarlyExitDiTPipeline(ClassConditionalExitPipeline):
    r"""Class-conditional image generation with a DiT whose denoiser may stop early.

    A drop-in extension of diffusers' `DiTPipeline`: it loads a folder saved by `DiTPipeline`, and with exits
    off it computes exactly what `DiTPipeline` computes. On top of that it accepts an exit policy per call
    (or a pipeline default saved in `model_index.json`), optional DeeDiff uncertainty heads, and works without
    a VAE (the transformer then denoises images in [-1, 1] directly).

    Args:
        transformer: the class-conditional `DiTTransformer2DModel`. Its `num_embeds_ada_norm` is the number of
            classes and also the id of the null class used for classifier-free guidance.
        scheduler: any diffusers scheduler (DDPM, DDIM, DPM-Solver, Euler, Heun, ...).
        vae: `AutoencoderKL` for latent-space models, or `None` for pixel-space models.
        exit_heads: `UncertaintyHeads` made for `transformer`; needed by uncertainty policies only.
        id2label: optional `{class id: "name, other name"}` map for `get_label_ids`.
        exit_config: the default exit config as a dict (`EarlyExitConfig.to_dict()`) or an `EarlyExitConfig`;
            used by calls that pass no `exit_config`. `None` means never exit.

    ```py
    >>> import torch
    >>> from diffusers import DDIMScheduler
    >>> from ee_diffusion import EarlyExitConfig
    >>> from ee_diffusion.pipelines import EarlyExitDiTPipeline
    >>> from ee_diffusion.schedules import StaticDepth
    >>> from ee_diffusion.testing import tiny_dit
    >>> pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=4), scheduler=DDIMScheduler())
    >>> pipe.set_progress_bar_config(disable=True)
    >>> out = pipe(class_labels=[1, 7], num_inference_steps=3, exit_config=EarlyExitConfig(policy=StaticDepth(2)),
    ...            generator=torch.Generator().manual_seed(0), output_type="np")
    >>> out.images.shape
    (2, 8, 8, 1)
    >>> out.exit_stats.num_calls, out.exit_stats.blocks_run[0].tolist(), out.exit_stats.depth_fraction
    (3, [2, 2, 2, 2], 0.5)

    ```
    """

    denoiser_name = "transformer"
    _checked_components = ("transformer", "vae")
    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae", "exit_heads"]
    # The heads run inside the transformer's forward; keep them on the execution device under CPU offload.
    _exclude_from_cpu_offload = ["exit_heads"]

    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        scheduler: KarrasDiffusionSchedulers,
        vae: AutoencoderKL | None = None,
        exit_heads: UncertaintyHeads | None = None,
        id2label: dict | None = None,
        exit_config: dict[str, Any] | EarlyExitConfig | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(transformer, DiTTransformer2DModel):
            raise TypeError(f"transformer must be a diffusers DiTTransformer2DModel, got {type(transformer).__name__}")
        if transformer.config.num_embeds_ada_norm is None:
            raise ValueError(
                "transformer must be class-conditional (num_embeds_ada_norm set), got num_embeds_ada_norm=None"
            )
        check_components("transformer", transformer, scheduler, vae, exit_heads)
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae, exit_heads=exit_heads)
        self._init_config(id2label, exit_config)

    def predict(self, model_input: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.transformer(model_input, timestep=timesteps, class_labels=labels).sample

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | Sequence[int] | torch.Tensor,
        guidance_scale: float = 4.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        latents: torch.Tensor | None = None,
        exit_config: EarlyExitConfig | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> EarlyExitPipelineOutput | tuple:
        r"""Generate one image per class label.

        Args:
            class_labels: class ids in `[0, num_classes)`: an int, or a list/tuple/1-D tensor of ints. Names
                map to ids with `get_label_ids`.
            guidance_scale: classifier-free guidance weight; guidance is on when `> 1` (the batch then runs
                every row twice, with its label and with the null class `num_classes`).
            generator: `torch.Generator`(s) for the initial noise and for stochastic schedulers.
            num_inference_steps: number of denoising steps (Heun-type schedulers call the model about twice per
                step; the loop follows `scheduler.timesteps`).
            latents: optional initial noise of shape (B, C, H, W), scaled by the scheduler's
                `init_noise_sigma` like freshly drawn noise.
            exit_config: the exit policy for this call; `None` uses `default_exit_config`.
            output_type: `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict: return an `EarlyExitPipelineOutput` (else a tuple `(images, exit_stats)`).

        Returns:
            `EarlyExitPipelineOutput` with `images` and `exit_stats` (every model call of the run).

        ```py
        >>> import torch
        >>> from diffusers import DDIMScheduler
        >>> from ee_diffusion.pipelines import EarlyExitDiTPipeline
        >>> from ee_diffusion.testing import tiny_dit
        >>> pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> images = pipe(class_labels=3, num_inference_steps=2, output_type="pil").images
        >>> images[0].size, images[0].mode
        ((8, 8), 'L')

        ```
        """
        labels = self.check_inputs(
            class_labels, guidance_scale, num_inference_steps, latents, exit_config, output_type, generator, return_dict
        )
        config = exit_config if exit_config is not None else self.default_exit_config
        return self.sample(labels, guidance_scale, generator, num_inference_steps, latents, config, output_type,
                           return_dict)
