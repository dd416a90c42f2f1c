"""Diffusers pipelines with early exit (integration layer): `EarlyExitDiTPipeline`, `EarlyExitUNetPipeline`.

`EarlyExitDiTPipeline.from_pretrained(folder)` is the recommended way to load one. Plain
`DiffusionPipeline.from_pretrained(folder, custom_pipeline=CUSTOM_PIPELINE_FILE, trust_remote_code=True)` also
returns an `EarlyExitDiTPipeline` (see docs/loading.md).
"""

from pathlib import Path

from .base import ClassConditionalExitPipeline, EarlyExitPipelineOutput
from .pipeline_dit import EarlyExitDiTPipeline
from .pipeline_unet import EarlyExitUNetPipeline

#: A one-line module that re-exports `EarlyExitDiTPipeline`, for diffusers' `custom_pipeline=` argument.
CUSTOM_PIPELINE_FILE = str(Path(__file__).with_name("ee_dit_pipeline.py"))

__all__ = [
    "CUSTOM_PIPELINE_FILE",
    "ClassConditionalExitPipeline",
    "EarlyExitDiTPipeline",
    "EarlyExitPipelineOutput",
    "EarlyExitUNetPipeline",
]
