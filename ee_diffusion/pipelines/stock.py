"""Any supported pipeline folder, stock or ours: load it, find its denoiser, and say what it is conditioned on.

The tools (`ee-diffusion calibrate`, `bench --pipeline`, training) accept a local pipeline folder of one of
`SUPPORTED_PIPELINES`. Its class is read from `model_index.json` before anything is loaded, so a folder of
another class is refused at once, with the classes that would work.

```py
>>> import tempfile
>>> from ee_diffusion.testing import tiny_pipeline
>>> folder = tempfile.mkdtemp()
>>> tiny_pipeline("dit").save_pretrained(folder)
>>> pipe = load_pipeline(folder)
>>> PIPELINES[type(pipe).__name__].conditioning, type(denoiser_of(pipe)).__name__
('classes', 'DiTTransformer2DModel')

```
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import read_json_file


@dataclass(frozen=True)
class PipelineKind:
    """What the tools need to know about one pipeline class."""

    #: the attribute that holds the denoiser ("transformer" or "unet")
    denoiser: str
    #: "classes" (class ids), "prompts" (text) or "none" (unconditional)
    conditioning: str
    #: whether the pipeline decodes latents with a VAE
    latent: bool
    #: True for ee-diffusion's own pipelines (they take `exit_config=` and own their hooks)
    ours: bool = False


PIPELINES: dict[str, PipelineKind] = {
    "EarlyExitDiTPipeline": PipelineKind("transformer", "classes", latent=False, ours=True),
    "EarlyExitUNetPipeline": PipelineKind("unet", "classes", latent=False, ours=True),
    "DiTPipeline": PipelineKind("transformer", "classes", latent=True),
    "PixArtAlphaPipeline": PipelineKind("transformer", "prompts", latent=True),
    "StableDiffusion3Pipeline": PipelineKind("transformer", "prompts", latent=True),
    "FluxPipeline": PipelineKind("transformer", "prompts", latent=True),
    "ChromaPipeline": PipelineKind("transformer", "prompts", latent=True),
    "QwenImagePipeline": PipelineKind("transformer", "prompts", latent=True),
    "SanaPipeline": PipelineKind("transformer", "prompts", latent=True),
    "CogView4Pipeline": PipelineKind("transformer", "prompts", latent=True),
    "AuraFlowPipeline": PipelineKind("transformer", "prompts", latent=True),
    "HunyuanDiTPipeline": PipelineKind("transformer", "prompts", latent=True),
    "HiDreamImagePipeline": PipelineKind("transformer", "prompts", latent=True),
    "Lumina2Pipeline": PipelineKind("transformer", "prompts", latent=True),
    # video: a call returns `frames` (N, F, H, W, C); the tools score a video as its frames side by side
    "WanPipeline": PipelineKind("transformer", "prompts", latent=True),
    "CogVideoXPipeline": PipelineKind("transformer", "prompts", latent=True),
    "HunyuanVideoPipeline": PipelineKind("transformer", "prompts", latent=True),
    "LTXPipeline": PipelineKind("transformer", "prompts", latent=True),
    "StableDiffusionPipeline": PipelineKind("unet", "prompts", latent=True),
    "DDPMPipeline": PipelineKind("unet", "none", latent=False),
}
SUPPORTED_PIPELINES = tuple(PIPELINES)
#: The pipelines whose calls return `frames` (videos), not `images`.
VIDEO_PIPELINES = ("WanPipeline", "CogVideoXPipeline", "HunyuanVideoPipeline", "LTXPipeline")


def pipeline_class_name(folder: str | os.PathLike) -> str:
    """The `_class_name` of `folder/model_index.json`; `ValueError` for a missing folder or an unsupported class."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"pipeline folder {str(folder)!r} does not exist (expected a local folder with a "
                         f"model_index.json; nothing is downloaded)")
    index = path / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{str(folder)!r} has no model_index.json: it is not a diffusers pipeline folder")
    data = read_json_file(index, "model_index.json")
    name = data.get("_class_name") if isinstance(data, dict) else None
    if name not in PIPELINES:
        raise ValueError(f"{str(folder)!r} holds a {name!r} pipeline; supported pipeline classes: "
                         f"{', '.join(SUPPORTED_PIPELINES)}")
    return name


def kind_of(pipe: Any) -> PipelineKind:
    """The `PipelineKind` of a loaded pipeline; `ValueError` naming the supported classes for any other."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in PIPELINES:
            return PIPELINES[cls.__name__]
    raise ValueError(f"unsupported pipeline class {type(pipe).__name__}; supported: {', '.join(SUPPORTED_PIPELINES)}")


def denoiser_of(pipe: Any) -> nn.Module:
    """The pipeline's denoiser (`pipe.transformer` or `pipe.unet`), the model early exit hooks."""
    return getattr(pipe, kind_of(pipe).denoiser)


def default_guidance_scale(pipe: Any) -> float | None:
    """The guidance scale a call without one runs at: ours from their operating point, stock ones from their
    `__call__` default; None for pipelines that take no guidance (unconditional) or leave it unset by default."""
    if kind_of(pipe).ours:
        return float(pipe.resolve_call(None, None, None).guidance_scale)
    parameter = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
    # None also where the call's default is None (Qwen-Image: guidance runs as `true_cfg_scale`)
    return None if parameter is None or parameter.default is None else float(parameter.default)


def load_pipeline(folder: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                  device: str | torch.device | None = None) -> Any:
    """Load a local pipeline folder of a supported class (ours through our classes, stock ones through diffusers).

    The progress bar of sampling is left to the caller (`pipe.set_progress_bar_config`).
    """
    name = pipeline_class_name(folder)
    kwargs: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}
    if PIPELINES[name].ours:
        from . import EarlyExitDiTPipeline, EarlyExitUNetPipeline

        cls = EarlyExitDiTPipeline if name == "EarlyExitDiTPipeline" else EarlyExitUNetPipeline
        pipe = cls.from_pretrained(folder, **kwargs)
    else:
        import diffusers

        pipe = getattr(diffusers, name).from_pretrained(folder, **kwargs)
    return pipe if device is None else pipe.to(device)
