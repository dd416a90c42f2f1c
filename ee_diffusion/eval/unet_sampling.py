"""Class-conditional sampling of a `UNet2DModel` with early exit (there is no U-Net pipeline class).

A U-Net pipeline folder written by the trainer (`ModelConfig(kind="unet")`) is a `DDPMPipeline` folder
(`unet/`, `scheduler/`) plus `exit_bridges/`, `exit_heads/` and `early_exit.json`; `load_unet_folder` loads it
and `sample_unet` runs the scheduler loop (classifier-free guidance with the null class when
`guidance_scale != 1`) under `early_exit(unet, config, heads, bridges)`.

```py
>>> import torch
>>> from diffusers import DDIMScheduler
>>> from ee_diffusion import EarlyExitConfig
>>> from ee_diffusion.schedules import StaticDepth
>>> from ee_diffusion.unet import UNetExitBridges
>>> from ee_diffusion.testing import tiny_unet
>>> unet = tiny_unet(num_class_embeds=11)
>>> images, stats = sample_unet(unet, DDIMScheduler(), [1, 2], num_inference_steps=3,
...                             exit_config=EarlyExitConfig(policy=StaticDepth(2)),
...                             bridges=UNetExitBridges.from_model(unet))
>>> tuple(images.shape), round(stats.depth_fraction, 3)
((2, 1, 8, 8), 0.667)

```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import DDIMScheduler, UNet2DModel

from ..config import EarlyExitConfig
from ..engine import early_exit
from ..stats import ExitStats

INFO_FILE = "early_exit.json"
#: The shipped class-conditional digits U-Net (8x8, 3 levels, DeeDiff-trained with its bridges; fp16 on disk).
DIGITS_UNET_DIR = Path(__file__).resolve().parent.parent / "assets" / "digits-unet"


@dataclass
class UNetBundle:
    """A trained class-conditional U-Net with its exit parts, as saved by the trainer."""

    unet: UNet2DModel
    scheduler: Any
    bridges: Any = None
    heads: Any = None
    null_class: int | None = None
    id2label: dict[int, str] = field(default_factory=dict)
    exit_config: dict[str, Any] | None = None


def load_unet_folder(folder: str | Path, device: str | torch.device | None = None) -> UNetBundle:
    """Load a trainer's U-Net pipeline folder (DDIM scheduler from its saved noise schedule)."""
    from ..unet import UNetExitBridges
    from ..heads import UncertaintyHeads

    folder = Path(folder)
    if not (folder / "unet").is_dir():
        raise ValueError(f"{str(folder)!r} is not a U-Net pipeline folder (no unet/ subfolder)")
    unet = UNet2DModel.from_pretrained(str(folder), subfolder="unet").eval()
    scheduler = DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    bridges = heads = None
    if (folder / "exit_bridges").is_dir():
        bridges = UNetExitBridges.from_pretrained(str(folder), subfolder="exit_bridges").eval()
        bridges.check_model(unet)
    if (folder / "exit_heads").is_dir():
        heads = UncertaintyHeads.from_pretrained(str(folder), subfolder="exit_heads").eval()
    info = json.loads((folder / INFO_FILE).read_text()) if (folder / INFO_FILE).is_file() else {}
    if device is not None:
        unet.to(device)
        bridges = bridges.to(device) if bridges is not None else None
        heads = heads.to(device) if heads is not None else None
    return UNetBundle(
        unet=unet,
        scheduler=scheduler,
        bridges=bridges,
        heads=heads,
        null_class=info.get("null_class", _default_null(unet)),
        id2label={int(k): v for k, v in info.get("id2label", {}).items()},
        exit_config=info.get("exit_config"),
    )


def load_digits_unet(device: str | torch.device | None = None) -> UNetBundle:
    """The shipped digits U-Net (`scripts/unet_digits/`; compare it with the DiT by `python -m
    ee_diffusion.eval.unet_vs_dit`). Sample it with `sample_unet(..., guidance_scale=1.0)`."""
    if not (DIGITS_UNET_DIR / "unet").is_dir():
        raise FileNotFoundError(f"the digits U-Net is missing from {str(DIGITS_UNET_DIR)!r}; see docs/backbones.md")
    return load_unet_folder(DIGITS_UNET_DIR, device)


def _default_null(unet: UNet2DModel) -> int | None:
    rows = unet.config.num_class_embeds
    return None if rows is None else int(rows) - 1


@torch.no_grad()
def sample_unet(
    unet: UNet2DModel,
    scheduler: Any,
    class_labels: Sequence[int] | torch.Tensor,
    *,
    num_inference_steps: int = 25,
    guidance_scale: float = 1.0,
    null_class: int | None = None,
    latents: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    exit_config: EarlyExitConfig | None = None,
    bridges: Any = None,
    heads: Any = None,
) -> tuple[torch.Tensor, ExitStats]:
    """Images (B, C, H, W) in [0, 1] (float32, CPU) for `class_labels`, and the run's `ExitStats`.

    `latents`: the initial noise (else drawn from `generator`, one generator per row allowed). With
    `guidance_scale != 1` every step runs the batch twice (labels and `null_class`, default the U-Net's last
    class-embedding row) and mixes the two predictions. `exit_config=None` runs the full U-Net.
    """
    param = next(unet.parameters())
    labels = torch.as_tensor(class_labels, dtype=torch.long, device=param.device).reshape(-1)
    size = unet.config.sample_size
    shape = (labels.shape[0], unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    if latents is None:
        if isinstance(generator, list):
            latents = torch.stack([torch.randn(shape[1:], generator=g) for g in generator])
        else:
            latents = torch.randn(shape, generator=generator)
    if tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
    guided = guidance_scale != 1.0
    if guided:
        null_class = _default_null(unet) if null_class is None else null_class
        if null_class is None:
            raise ValueError("guidance needs a class-conditional U-Net (num_class_embeds) or null_class")
        labels = torch.cat([labels, torch.full_like(labels, null_class)])
    sample = latents.to(device=param.device, dtype=param.dtype) * scheduler.init_noise_sigma
    scheduler.set_timesteps(num_inference_steps)
    config = exit_config if exit_config is not None else EarlyExitConfig()
    with early_exit(unet, config, heads=heads, bridges=bridges) as stats:
        for t in scheduler.timesteps:
            model_input = torch.cat([sample, sample]) if guided else sample
            model_input = scheduler.scale_model_input(model_input, t)
            eps = unet(model_input, t, class_labels=labels).sample
            if guided:
                cond, uncond = eps.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
            sample = scheduler.step(eps, t, sample).prev_sample
    images = (sample.float().cpu() / 2 + 0.5).clamp(0, 1)
    return images, stats
