"""`EarlyExitUNetPipeline`: class-conditional `UNet2DModel` sampling with early exit by depth truncation.

A U-Net exits by truncating its depth; the skipped inner levels are replaced by `UNetExitBridges` (see
`ee_diffusion.unet`). The folder layout is diffusers' own: `model_index.json` (with `id2label` and the default
`exit_config`), `unet/`, `scheduler/`, and the optional `exit_bridges/`, `exit_heads/`, `vae/`.

Folders written by ee-diffusion 0.1 (a `DDPMPipeline` folder with an `early_exit.json` sidecar) still load,
with a `FutureWarning`; `save_pretrained` writes the new layout.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DModel
from diffusers.schedulers import KarrasDiffusionSchedulers, SchedulerMixin

from .._io import read_json_file
from ..config import EarlyExitConfig
from ..heads import UncertaintyHeads
from ..operating_point import OperatingPoint
from ..unet import UNetExitBridges
from .base import ClassConditionalExitPipeline
from .checks import check_components

#: The sidecar of ee-diffusion 0.1's U-Net folders (labels, null class, default exit config).
LEGACY_INFO_FILE = "early_exit.json"


class EarlyExitUNetPipeline(ClassConditionalExitPipeline):
    r"""Class-conditional image generation with a `UNet2DModel` that may truncate its depth per row.

    With exits off it runs the stock U-Net. An exit policy (per call, or the default saved in
    `model_index.json`) makes rows of depth d skip the inner levels d..N-1, replaced by the learned
    `exit_bridges`; uncertainty policies also need `exit_heads`.

    Args:
        unet: a class-conditional `UNet2DModel` whose last class-embedding row is the null class
            (`num_class_embeds` = classes + 1, as the trainer builds it).
        scheduler: any diffusers scheduler.
        exit_bridges: `UNetExitBridges` made for `unet`; needed whenever a policy is set.
        exit_heads: `UncertaintyHeads` made for `unet`; needed by uncertainty policies only.
        vae: `AutoencoderKL` for latent-space U-Nets, or `None` (pixel space).
        id2label: optional `{class id: "name, other name"}` map for `get_label_ids`.
        exit_config: the default exit config (dict or `EarlyExitConfig`) of calls without one; `None` never exits.

    ```py
    >>> import torch
    >>> from diffusers import DDIMScheduler
    >>> from ee_diffusion import EarlyExitConfig
    >>> from ee_diffusion.pipelines import EarlyExitUNetPipeline
    >>> from ee_diffusion.schedules import StaticDepth
    >>> from ee_diffusion.testing import random_bridges, tiny_unet
    >>> unet = tiny_unet(num_class_embeds=11)
    >>> pipe = EarlyExitUNetPipeline(unet=unet, scheduler=DDIMScheduler(), exit_bridges=random_bridges(unet))
    >>> pipe.set_progress_bar_config(disable=True)
    >>> out = pipe(class_labels=[1, 2], num_inference_steps=3, exit_config=EarlyExitConfig(policy=StaticDepth(2)),
    ...            generator=torch.Generator().manual_seed(0), output_type="np")
    >>> out.images.shape, round(out.exit_stats.depth_fraction, 3)
    ((2, 8, 8, 1), 0.667)

    ```
    """

    denoiser_name = "unet"
    _checked_components = ("unet", "vae", "exit_bridges")
    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae", "exit_heads", "exit_bridges"]
    # Bridges and heads run inside the U-Net's forward; keep them on the execution device under CPU offload.
    _exclude_from_cpu_offload = ["exit_heads", "exit_bridges"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: KarrasDiffusionSchedulers,
        exit_bridges: UNetExitBridges | None = None,
        exit_heads: UncertaintyHeads | None = None,
        vae: AutoencoderKL | None = None,
        id2label: dict | None = None,
        exit_config: dict[str, Any] | EarlyExitConfig | None = None,
        operating_point: dict[str, Any] | OperatingPoint | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(unet, UNet2DModel):
            raise TypeError(f"unet must be a diffusers UNet2DModel, got {type(unet).__name__}")
        check_components("unet", unet, scheduler, vae, exit_heads)
        if exit_bridges is not None:
            if not isinstance(exit_bridges, UNetExitBridges):
                raise TypeError(f"exit_bridges must be UNetExitBridges or None, got {type(exit_bridges).__name__}")
            exit_bridges.check_model(unet)
        self.register_modules(unet=unet, scheduler=scheduler, exit_bridges=exit_bridges, exit_heads=exit_heads,
                              vae=vae)
        self._init_config(id2label, exit_config, operating_point)

    def predict(self, model_input: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(model_input, timesteps, class_labels=labels).sample

    def exit_parts(self) -> dict[str, Any]:
        return {"heads": self.exit_heads, "bridges": self.exit_bridges}

    def check_inputs(
        self, class_labels: Any, guidance_scale: Any, num_inference_steps: Any, latents: Any, exit_config: Any,
        output_type: Any, generator: Any = None, return_dict: Any = True,
    ) -> torch.Tensor:
        labels = super().check_inputs(class_labels, guidance_scale, num_inference_steps, latents, exit_config,
                                      output_type, generator, return_dict)
        config = exit_config if exit_config is not None else self.default_exit_config
        if config.policy is not None and self.exit_bridges is None:
            raise ValueError(
                f"the exit policy {type(config.policy).__name__} truncates the U-Net, which needs the learned "
                f"replacement of the skipped levels, but this pipeline has exit_bridges=None; build it with "
                f"`exit_bridges=UNetExitBridges...` (fine-tuned with the U-Net)"
            )
        return labels

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> "EarlyExitUNetPipeline":
        """Load a pipeline folder; a folder of ee-diffusion 0.1 (with `early_exit.json`) loads with a FutureWarning."""
        folder = Path(pretrained_model_name_or_path)
        if (folder / LEGACY_INFO_FILE).is_file():
            return cls._from_legacy_folder(folder, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _from_legacy_folder(cls, folder: Path, **kwargs: Any) -> "EarlyExitUNetPipeline":
        warnings.warn(
            f"{str(folder)!r} is a U-Net folder of ee-diffusion 0.1 (a DDPMPipeline folder with {LEGACY_INFO_FILE}); "
            f"this layout is deprecated: load it once and re-save it with `save_pretrained`, which writes the exit "
            f"config and labels into model_index.json",
            FutureWarning,
            stacklevel=3,
        )
        index = read_json_file(folder / "model_index.json", "pipeline index")
        info = read_json_file(folder / LEGACY_INFO_FILE, "U-Net exit info")
        if not isinstance(index, dict) or not isinstance(info, dict) or "scheduler" not in index:
            raise ValueError(f"{str(folder)!r} is not a U-Net pipeline folder of ee-diffusion 0.1")
        components: dict[str, Any] = {}
        if "unet" not in kwargs:
            components["unet"] = UNet2DModel.from_pretrained(str(folder), subfolder="unet").eval()
        if "scheduler" not in kwargs:
            entry = index["scheduler"]
            name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
            scheduler_class = getattr(diffusers, name, None) if isinstance(name, str) else None
            if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
                raise ValueError(
                    f"{str(folder / 'model_index.json')!r} names the scheduler {index['scheduler']!r}; expected "
                    f'["diffusers", "<a diffusers scheduler class>"], e.g. ["diffusers", "DDIMScheduler"]'
                )
            components["scheduler"] = scheduler_class.from_pretrained(str(folder), subfolder="scheduler")
        for name, loader in (("exit_bridges", UNetExitBridges), ("exit_heads", UncertaintyHeads)):
            if name not in kwargs and (folder / name).is_dir():
                components[name] = loader.from_pretrained(str(folder), subfolder=name).eval()
        components.update(kwargs)
        components.setdefault("id2label", info.get("id2label"))
        components.setdefault("exit_config", info.get("exit_config"))
        return cls(**components)
