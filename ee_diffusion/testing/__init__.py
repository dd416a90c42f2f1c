"""Tiny real diffusers models for tests, examples and the random-weight benchmarks (no downloads).

`models`: DiT, PixArt, SD3 and the U-Nets; `families`: every newer declared family with one call's inputs
(`tiny_flux` and `flux_inputs`, ...), `hunyuandit` and `hidream` Hunyuan-DiT's and HiDream's with their pipelines,
`lumina2` Lumina2's pipeline; `pipelines`: complete stock pipelines with tiny VAEs and text encoders, and
`family_pipelines` those of the newer families (`tiny_family_pipeline("flux")`, ...).
"""

from .families import (
    auraflow_inputs,
    chroma_inputs,
    cogvideox_inputs,
    cogview4_inputs,
    flux_inputs,
    hunyuanvideo_inputs,
    ltx_inputs,
    lumina2_inputs,
    qwenimage_inputs,
    sana_inputs,
    tiny_auraflow,
    tiny_chroma,
    tiny_cogvideox,
    tiny_cogview4,
    tiny_flux,
    tiny_hunyuanvideo,
    tiny_ltx,
    tiny_lumina2,
    tiny_qwenimage,
    tiny_sana,
    tiny_wan,
    wan_inputs,
)
from .family_pipelines import FAMILY_PIPELINES, TINY_CALLS, tiny_family_pipeline
from .hidream import hidream_inputs, tiny_hidream
from .hunyuandit import hunyuandit_inputs, tiny_hunyuandit
from .lumina2 import tiny_lumina2_pipeline
from .models import random_bridges, tiny_dit, tiny_pixart, tiny_sd3, tiny_unet, tiny_unet_condition
from .pipelines import TINY_PIPELINES, tiny_clip, tiny_pipeline, tiny_t5, tiny_tokenizer, tiny_vae

__all__ = [
    "FAMILY_PIPELINES",
    "TINY_CALLS",
    "TINY_PIPELINES",
    "chroma_inputs",
    "cogvideox_inputs",
    "cogview4_inputs",
    "flux_inputs",
    "hidream_inputs",
    "hunyuandit_inputs",
    "hunyuanvideo_inputs",
    "ltx_inputs",
    "lumina2_inputs",
    "qwenimage_inputs",
    "random_bridges",
    "sana_inputs",
    "tiny_auraflow",
    "tiny_chroma",
    "tiny_clip",
    "tiny_cogvideox",
    "tiny_cogview4",
    "tiny_dit",
    "tiny_family_pipeline",
    "tiny_flux",
    "tiny_hidream",
    "tiny_hunyuandit",
    "tiny_hunyuanvideo",
    "tiny_ltx",
    "tiny_lumina2",
    "tiny_lumina2_pipeline",
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
