"""Model families: one declaration per diffusers transformer family, and the engine's view built from it.

A family is data (`ModelFamily`: its block stacks and their I/O pattern, see `spec.py`) plus, where the model's
head can decode an intermediate block, an `ExitDecoder`. `ee_diffusion.adapters.get_adapter(model)` finds the
family of a model (U-Nets: `ee_diffusion.unet`). How to add one: docs/add-a-family.md.
"""

from .adapter import FamilyAdapter
from .auraflow import AURAFLOW
from .base import BackboneAdapter
from .chroma import CHROMA
from .cogvideox import COGVIDEOX
from .cogview4 import COGVIEW4
from .decoder import ExitDecoder
from .dit import DIT
from .flux import FLUX
from .hidream import HIDREAM
from .hunyuandit import HUNYUAN_DIT
from .hunyuanvideo import HUNYUAN_VIDEO
from .ltx import LTX_VIDEO
from .lumina2 import LUMINA2
from .pixart import PIXART
from .qwenimage import QWEN_IMAGE
from .sana import SANA
from .sd3 import SD3
from .spec import BlockStack, ModelFamily
from .wan import WAN

#: Every declared transformer family, in lookup order (the first whose classes match a model serves it).
FAMILIES: tuple[ModelFamily, ...] = (
    DIT, PIXART, SD3, FLUX, QWEN_IMAGE, WAN, COGVIDEOX, HUNYUAN_VIDEO, CHROMA, SANA, COGVIEW4, LTX_VIDEO, AURAFLOW,
    LUMINA2, HUNYUAN_DIT, HIDREAM,
)

__all__ = [
    "AURAFLOW",
    "CHROMA",
    "COGVIDEOX",
    "COGVIEW4",
    "DIT",
    "FAMILIES",
    "FLUX",
    "HIDREAM",
    "HUNYUAN_DIT",
    "HUNYUAN_VIDEO",
    "LTX_VIDEO",
    "LUMINA2",
    "PIXART",
    "QWEN_IMAGE",
    "SANA",
    "SD3",
    "WAN",
    "BackboneAdapter",
    "BlockStack",
    "ExitDecoder",
    "FamilyAdapter",
    "ModelFamily",
]
