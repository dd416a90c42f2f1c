"""Our own research models beside the shipped demo model, and the benchmark settings they are scored in.

The wheel ships one model, the demo (`ee_diffusion.load_default_pipeline`, `ee_diffusion/assets/digits-dit`).
The others live here, in `bench/assets/`, as pipeline folders (fp16 safetensors + JSON, loaded as float32): the
demo model's pre-trained twin without heads (`load_pretrained_pipeline`), the digits U-Net (`load_digits_unet`), the
glyphs DiT and the 28-block digits DiTs. `SETTINGS` names the benchmark settings they are scored in, and
`load_setting_pipeline(setting)` loads one. How each was trained: the `TRAINING.md` in its folder; the scripts that
rebuild them: `bench/scripts/`.
"""

from __future__ import annotations

from pathlib import Path
import torch

from ee_diffusion.default_model import SETTINGS as PACKAGE_SETTINGS
from ee_diffusion.default_model import Setting, load_pipeline_folder
from ee_diffusion.pipelines import EarlyExitDiTPipeline, EarlyExitUNetPipeline

ASSETS = Path(__file__).resolve().parent / "assets"
#: The demo DiT after pre-training only (L_simple, no exit heads, no layer-wise fine-tuning): the "stock
#: pretrained model" on which training-free exits (`CachedTailResidual`) are measured.
PRETRAINED_MODEL_DIR = ASSETS / "digits-dit-pretrained"
#: The class-conditional digits U-Net (8x8, 3 levels, DeeDiff-trained with its bridges; fp16 on disk), an
#: `EarlyExitUNetPipeline` folder; how it was trained and how it compares with the DiT: docs/backbones.md.
DIGITS_UNET_DIR = ASSETS / "digits-unet"
#: The harder benchmark setting: a DiT on 8x8 upper-case glyphs with DeeDiff heads (docs/evaluation.md).
GLYPHS_MODEL_DIR = ASSETS / "glyphs-dit"
#: The deep digits DiT: 28 blocks (the depth of DiT-XL/2 and PixArt-alpha), width 64, DeeDiff heads; and its
#: pre-trained twin (no heads, no layer-wise training) for training-free exits. `bench/scripts/train_deep_model.sh`.
DEEP_MODEL_DIR = ASSETS / "digits-dit-deep"
DEEP_PRETRAINED_DIR = ASSETS / "digits-dit-deep-pretrained"
#: Benchmark settings: the package's (the demo model on digits) and our other models.
SETTINGS: dict[str, Setting] = {
    **PACKAGE_SETTINGS,
    "glyphs": Setting("glyphs", GLYPHS_MODEL_DIR, "bench/scripts/glyphs/train.sh (see docs/evaluation.md), or pass "
                                                  "--glyphs-model PATH"),
    "digits-deep": Setting("digits", DEEP_MODEL_DIR, "bench/scripts/train_deep_model.sh"),
    "digits-deep-pretrained": Setting("digits", DEEP_PRETRAINED_DIR, "bench/scripts/train_deep_model.sh"),
}


def load_pretrained_pipeline(device: str | torch.device | None = None) -> EarlyExitDiTPipeline:
    """Load the demo digits DiT as it was after plain pre-training: no exit heads, no layer-wise losses.

    Stage 1 of `bench/scripts/train_default_model.sh` (the stage-2 DeeDiff fine-tune starts from it). It has no
    default exit config (a call without `exit_config` runs the full model); training-free per-row exits
    (`CachedTailResidual`) and their measured operating points are in docs/tail_cache.md.

    ```py
    >>> pipe = load_pretrained_pipeline()
    >>> pipe.exit_heads is None, pipe.transformer.config.num_layers
    (True, 8)

    ```
    """
    return load_pipeline_folder(EarlyExitDiTPipeline, PRETRAINED_MODEL_DIR, "the pre-trained model",
                                "bench/scripts/train_default_model.sh", device)


def load_digits_unet(device: str | torch.device | None = None) -> EarlyExitUNetPipeline:
    """Load the digits U-Net pipeline (U-Net, DDIM scheduler, exit bridges and heads); sample it without guidance
    (`guidance_scale=1.0`, the pipeline's default).

    ```py
    >>> pipe = load_digits_unet()
    >>> pipe.exit_bridges is not None, pipe.num_classes
    (True, 10)

    ```
    """
    return load_pipeline_folder(EarlyExitUNetPipeline, DIGITS_UNET_DIR, "the digits U-Net",
                                "bench/scripts/unet_digits/", device)


def setting_dataset(setting: str) -> str:
    """The data (and feature network) a benchmark setting is scored on."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; known: {', '.join(SETTINGS)}")
    return SETTINGS[setting].data


def load_setting_pipeline(setting: str, model_path: str | None = None) -> EarlyExitDiTPipeline:
    """The pipeline of a benchmark setting (one of `SETTINGS`): its model, or the folder `model_path`."""
    setting_dataset(setting)  # a clear error for an unknown setting
    return SETTINGS[setting].load(setting, model_path)
