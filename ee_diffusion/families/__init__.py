"""Model families: one declaration per diffusers transformer family, and the engine's view built from it.

A family is data (`ModelFamily`: its block stacks and their I/O pattern, see `spec.py`) plus, where the model's
head can decode an intermediate block, an `ExitDecoder`. `ee_diffusion.adapters.get_adapter(model)` finds the
family of a model (U-Nets: `ee_diffusion.unet`). How to add one: docs/add-a-family.md.
"""

from .adapter import FamilyAdapter
from .base import BackboneAdapter
from .decoder import ExitDecoder
from .dit import DIT
from .flux import FLUX
from .pixart import PIXART
from .qwenimage import QWEN_IMAGE
from .sd3 import SD3
from .wan import WAN
from .spec import BlockStack, ModelFamily

#: Every declared transformer family, in lookup order (the first whose classes match a model serves it).
FAMILIES: tuple[ModelFamily, ...] = (DIT, PIXART, SD3, FLUX, QWEN_IMAGE, WAN)

__all__ = [
    "DIT",
    "FAMILIES",
    "FLUX",
    "PIXART",
    "QWEN_IMAGE",
    "SD3",
    "WAN",
    "BackboneAdapter",
    "BlockStack",
    "ExitDecoder",
    "FamilyAdapter",
    "ModelFamily",
]
