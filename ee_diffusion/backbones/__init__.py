"""Backbone adapters: one small class per diffusers transformer family (U-Nets: `ee_diffusion.unet`).

`get_adapter(model)` (in `ee_diffusion.backbones.registry`) picks the adapter for any supported model.
"""

from __future__ import annotations

from .base import BackboneAdapter
from .dit import DiTAdapter
from .pixart import PixArtAdapter
from .sd3 import SD3Adapter

__all__ = ["BackboneAdapter", "DiTAdapter", "PixArtAdapter", "SD3Adapter"]
