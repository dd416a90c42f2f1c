"""Entry point for `DiffusionPipeline.from_pretrained(folder, custom_pipeline=<this file>, trust_remote_code=True)`.

diffusers copies this file into its dynamic-module cache and imports it there, so it must use absolute imports
and define (or import) exactly one `DiffusionPipeline` subclass. It runs no code but the import of the installed
`ee_diffusion` package. Prefer `ee_diffusion.pipelines.EarlyExitDiTPipeline.from_pretrained(folder)`.
"""

from ee_diffusion.pipelines.pipeline_dit import EarlyExitDiTPipeline

__all__ = ["EarlyExitDiTPipeline"]
