"""`EarlyExitDiTPipeline`: class-conditional DiT sampling with early exit, latent or pixel space.

The shared machinery (inputs, labels, default exit config, the denoising loop under `early_exit`) is in
`ee_diffusion.pipelines.base`; this module holds what is DiT's: its components and its model call.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel
from diffusers.schedulers import KarrasDiffusionSchedulers

from ..config import EarlyExitConfig
from ..heads import UncertaintyHeads
from ..operating_point import OperatingPoint
from .base import ClassConditionalExitPipeline
from .checks import check_components


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
    #: `DiTPipeline`'s default, kept for drop-in use; small pixel-space models want less (see their model cards).
    default_guidance_scale = 4.0
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
        operating_point: dict[str, Any] | OperatingPoint | None = None,
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
        self._init_config(id2label, exit_config, operating_point)

    def predict(self, model_input: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.transformer(model_input, timestep=timesteps, class_labels=labels).sample
