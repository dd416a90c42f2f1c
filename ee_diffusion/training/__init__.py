"""Training for early-exit diffusion models: losses (DeeDiff, ASE), datasets and a thin accelerate trainer.

Our own pixel-space models and stock DiT, PixArt-alpha and SD3 folders (in latent space, `pipeline_source`)
train through the same trainer. Submodules are imported on use, so `import ee_diffusion.training` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DeeDiffLossConfig": "ee_diffusion.training.losses",
    "ASELossConfig": "ee_diffusion.training.losses",
    "deediff_loss": "ee_diffusion.training.losses",
    "deediff_loss_terms": "ee_diffusion.training.losses",
    "ase_loss": "ee_diffusion.training.losses",
    "simple_loss": "ee_diffusion.training.losses",
    "block_predictions": "ee_diffusion.training.losses",
    "TrainConfig": "ee_diffusion.training.config",
    "Trainer": "ee_diffusion.training.trainer",
    "train": "ee_diffusion.training.trainer",
    "ExperimentConfig": "ee_diffusion.training.config",
    "PipelineTrainingConfig": "ee_diffusion.training.config",
    "prepare_cache": "ee_diffusion.training.pipeline_source",
    "build_denoiser": "ee_diffusion.training.models",
    "TrainingObjective": "ee_diffusion.training.models",
    "get_dataset": "ee_diffusion.training.data",
    "register_dataset": "ee_diffusion.training.data",
    "available_datasets": "ee_diffusion.training.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ee_diffusion.training' has no attribute {name!r}")
