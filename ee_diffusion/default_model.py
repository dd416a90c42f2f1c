"""The shipped demo model: a class-conditional DiT on 8x8 digits with DeeDiff exit heads.

It lives in `ee_diffusion/assets/digits-dit/` as an `EarlyExitDiTPipeline` folder (fp16 safetensors + JSON,
loaded as float32), with its operating point (scheduler, steps, guidance and exit config, in `model_index.json`):
the pick of the operating-point search, confirmed on held-out seeds. How it was trained and what the point rests
on: `assets/digits-dit/TRAINING.md`. It is the one model the wheel ships; our other research models, and the
scripts that rebuild every one of them, live in the repository's `bench/` (not installed).

`SETTINGS` names what `ee-diffusion calibrate --model` accepts besides a pipeline folder: a model scored on one of
the package's datasets (its real images and shipped feature networks, `ee_diffusion.eval.features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .pipelines import ClassConditionalExitPipeline, EarlyExitDiTPipeline

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "digits-dit"
_REBUILD = "bench/scripts/train_default_model.sh of the repository"


@dataclass(frozen=True)
class Setting:
    """A model scored on a registered dataset: `data` ("digits"; the repository's `bench/` adds "glyphs") names its
    real images and feature networks, `folder` its pipeline folder, `rebuild` how to make the folder when it is missing."""

    data: str
    folder: Path
    rebuild: str

    def load(self, name: str, model_path: str | None = None) -> EarlyExitDiTPipeline:
        """The setting's pipeline (or the folder `model_path`), progress bar off; `name` names it in errors."""
        if model_path is not None:
            pipe = EarlyExitDiTPipeline.from_pretrained(model_path)
        else:
            pipe = load_pipeline_folder(EarlyExitDiTPipeline, self.folder, f"the {name} model", self.rebuild, None)
        pipe.set_progress_bar_config(disable=True)
        return pipe


#: The settings of the installed package: the demo model on the digits data.
SETTINGS: dict[str, Setting] = {"digits": Setting("digits", DEFAULT_MODEL_DIR, _REBUILD)}


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
    return load_pipeline_folder(EarlyExitDiTPipeline, DEFAULT_MODEL_DIR, "the default model", _REBUILD, device)


def load_pipeline_folder(pipeline_class: type[ClassConditionalExitPipeline], folder: Path, what: str, rebuild: str,
                         device: str | torch.device | None) -> Any:
    """A model folder of ours (`what`, e.g. "the default model"), or a FileNotFoundError saying what is missing and
    how to rebuild it (`rebuild`)."""
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{what} is missing from {str(folder)!r}; rebuild it with {rebuild}")
    # Weights are stored in fp16 to keep the package small; diffusers loads them into float32 modules.
    pipe = pipeline_class.from_pretrained(str(folder))
    return pipe if device is None else pipe.to(device)
