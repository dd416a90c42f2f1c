"""The shipped default model: a class-conditional DiT on 8x8 digits with DeeDiff exit heads.

It lives in `ee_diffusion/assets/digits-dit/` as an `EarlyExitDiTPipeline` folder (fp16 safetensors + JSON,
loaded as float32), with its operating point (scheduler, steps, guidance and exit config, in `model_index.json`):
the pick of the operating-point search, confirmed on held-out seeds and published over the full benchmark's
recommendation (`ee-diffusion publish --search`). How it was trained and what the point rests on:
`assets/digits-dit/TRAINING.md`; `scripts/rebuild_assets.sh digits` retrains it, benches it and publishes the
benchmark's recommendation.

Beside it ship its pre-trained twin without heads (`load_pretrained_pipeline`), the digits U-Net
(`load_digits_unet`), the glyphs DiT and the 28-block digits DiTs; `SETTINGS` names the benchmark settings they
are scored in, and `load_setting_pipeline(setting)` loads one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .pipelines import ClassConditionalExitPipeline, EarlyExitDiTPipeline, EarlyExitUNetPipeline

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "digits-dit"
#: The same DiT after pre-training only (L_simple, no exit heads, no layer-wise fine-tuning): the "stock
#: pretrained model" on which training-free exits (`CachedTailResidual`) are measured.
PRETRAINED_MODEL_DIR = Path(__file__).parent / "assets" / "digits-dit-pretrained"
#: Guidance scale of the shipped models (their operating points use it): these small pixel-space models
#: over-saturate under classifier-free guidance (the full reports measure the reference at guidance 2).
DEFAULT_GUIDANCE_SCALE = 1.0
#: The class-conditional digits U-Net (8x8, 3 levels, DeeDiff-trained with its bridges; fp16 on disk), an
#: `EarlyExitUNetPipeline` folder; how it was trained and how it compares with the DiT: docs/backbones.md.
DIGITS_UNET_DIR = Path(__file__).parent / "assets" / "digits-unet"
#: The harder benchmark setting: a DiT on 8x8 upper-case glyphs with DeeDiff heads (docs/evaluation.md).
GLYPHS_MODEL_DIR = Path(__file__).parent / "assets" / "glyphs-dit"
#: The deep digits DiT: 28 blocks (the depth of DiT-XL/2 and PixArt-alpha), width 64, DeeDiff heads; and its
#: pre-trained twin (no heads, no layer-wise training) for training-free exits. `scripts/train_deep_model.sh`.
DEEP_MODEL_DIR = Path(__file__).parent / "assets" / "digits-dit-deep"
DEEP_PRETRAINED_DIR = Path(__file__).parent / "assets" / "digits-dit-deep-pretrained"
#: Benchmark settings -> (the data and feature network they are scored on, the shipped folder, how to rebuild it).
SETTINGS: dict[str, tuple[str, Path, str]] = {
    "digits": ("digits", DEFAULT_MODEL_DIR, "scripts/train_default_model.sh"),
    "glyphs": ("glyphs", GLYPHS_MODEL_DIR, "scripts/glyphs/train.sh (see docs/evaluation.md), or pass --glyphs-model "
                                           "PATH"),
    "digits-deep": ("digits", DEEP_MODEL_DIR, "scripts/train_deep_model.sh"),
    "digits-deep-pretrained": ("digits", DEEP_PRETRAINED_DIR, "scripts/train_deep_model.sh"),
}


def load_default_pipeline(device: str | torch.device | None = None) -> EarlyExitDiTPipeline:
    """Load the shipped digits pipeline (transformer, scheduler, exit heads and its operating point).

    A call without steps, guidance or exit config runs the operating point (`pipe.operating_point`).

    ```py
    >>> from ee_diffusion import load_default_pipeline
    >>> pipe = load_default_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> out = pipe(class_labels=[3, 7], output_type="np")
    >>> out.images.shape, out.operating_point["source"], pipe.exit_heads is not None
    ((2, 8, 8, 1), 'default operating point', True)

    ```
    """
    return _load(EarlyExitDiTPipeline, DEFAULT_MODEL_DIR, "the default model", "scripts/train_default_model.sh", device)


def load_pretrained_pipeline(device: str | torch.device | None = None) -> EarlyExitDiTPipeline:
    """Load the shipped digits DiT as it was after plain pre-training: no exit heads, no layer-wise losses.

    Stage 1 of `scripts/train_default_model.sh` (the stage-2 DeeDiff fine-tune starts from it). It has no
    default exit config (a call without `exit_config` runs the full model); training-free per-row exits
    (`CachedTailResidual`) and their measured operating points are in docs/tail_cache.md.

    ```py
    >>> pipe = load_pretrained_pipeline()
    >>> pipe.exit_heads is None, pipe.transformer.config.num_layers
    (True, 8)

    ```
    """
    return _load(EarlyExitDiTPipeline, PRETRAINED_MODEL_DIR, "the pre-trained model", "scripts/train_default_model.sh",
                 device)


def load_digits_unet(device: str | torch.device | None = None) -> EarlyExitUNetPipeline:
    """Load the shipped digits U-Net pipeline (U-Net, DDIM scheduler, exit bridges and heads); sample it without
    guidance (`guidance_scale=1.0`, the pipeline's default).

    ```py
    >>> pipe = load_digits_unet()
    >>> pipe.exit_bridges is not None, pipe.num_classes
    (True, 10)

    ```
    """
    return _load(EarlyExitUNetPipeline, DIGITS_UNET_DIR, "the digits U-Net", "scripts/unet_digits/", device)


def setting_dataset(setting: str) -> str:
    """The data (and feature network) a benchmark setting is scored on."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; known: {', '.join(SETTINGS)}")
    return SETTINGS[setting][0]


def load_setting_pipeline(setting: str, model_path: str | None = None) -> Any:
    """The pipeline of a benchmark setting (one of `SETTINGS`): its shipped model, or the folder `model_path`."""
    setting_dataset(setting)  # a clear error for an unknown setting
    if model_path is not None:
        pipe = EarlyExitDiTPipeline.from_pretrained(model_path)
    else:
        _, folder, rebuild = SETTINGS[setting]
        pipe = _load(EarlyExitDiTPipeline, folder, f"the {setting} model", rebuild, None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load(pipeline_class: type[ClassConditionalExitPipeline], folder: Path, what: str, rebuild: str,
          device: str | torch.device | None) -> Any:
    """A shipped pipeline folder, or a FileNotFoundError saying what is missing and how to rebuild it."""
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{what} is missing from {str(folder)!r}; rebuild it with {rebuild}")
    # Weights are stored in fp16 to keep the package small; diffusers loads them into float32 modules.
    pipe = pipeline_class.from_pretrained(str(folder))
    return pipe if device is None else pipe.to(device)
