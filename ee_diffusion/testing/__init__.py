"""Tiny real diffusers models for tests, examples and the random-weight benchmarks (no downloads).

`models`: DiT, PixArt, SD3 and the U-Nets; `families`: every newer declared family with one call's inputs
(`tiny_flux` and `flux_inputs`, ...); `pipelines`: complete stock pipelines with tiny VAEs and text encoders.
"""

from .families import (
    chroma_inputs,
    cogvideox_inputs,
    cogview4_inputs,
    flux_inputs,
    hunyuanvideo_inputs,
    ltx_inputs,
    qwenimage_inputs,
    sana_inputs,
    tiny_chroma,
    tiny_cogvideox,
    tiny_cogview4,
    tiny_flux,
    tiny_hunyuanvideo,
    tiny_ltx,
    tiny_qwenimage,
    tiny_sana,
    tiny_wan,
    wan_inputs,
)
from .models import random_bridges, tiny_dit, tiny_pixart, tiny_sd3, tiny_unet, tiny_unet_condition
from .pipelines import TINY_PIPELINES, tiny_clip, tiny_pipeline, tiny_t5, tiny_tokenizer, tiny_vae

__all__ = [
    "TINY_PIPELINES",
    "chroma_inputs",
    "cogvideox_inputs",
    "cogview4_inputs",
    "flux_inputs",
    "hunyuanvideo_inputs",
    "ltx_inputs",
    "qwenimage_inputs",
    "random_bridges",
    "sana_inputs",
    "tiny_chroma",
    "tiny_clip",
    "tiny_cogvideox",
    "tiny_cogview4",
    "tiny_dit",
    "tiny_flux",
    "tiny_hunyuanvideo",
    "tiny_ltx",
    "tiny_pipeline",
    "tiny_pixart",
    "tiny_qwenimage",
    "tiny_sana",
    "tiny_sd3",
    "tiny_t5",
    "tiny_tokenizer",
    "tiny_unet",
    "tiny_unet_condition",
    "tiny_vae",
    "tiny_wan",
    "wan_inputs",
]
