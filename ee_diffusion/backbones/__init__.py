"""Backbone adapters: one small class per diffusers model family."""

from __future__ import annotations

from torch import nn

from .base import BackboneAdapter
from .dit import DiTAdapter
from .pixart import PixArtAdapter
from .sd3 import SD3Adapter
from .unet import UNetAdapter, UNetExitBridges

ADAPTERS: tuple[type[BackboneAdapter], ...] = (DiTAdapter, PixArtAdapter, SD3Adapter, UNetAdapter)


def supported_model_classes() -> list[str]:
    return [cls.__name__ for adapter in ADAPTERS for cls in adapter.model_classes]


def get_adapter(model: nn.Module) -> BackboneAdapter:
    """Return the adapter for `model`, or raise a `TypeError` that names the supported classes."""
    for adapter in ADAPTERS:
        if isinstance(model, adapter.model_classes):
            return adapter(model)
    raise TypeError(
        f"early exit does not support {type(model).__name__}; supported model classes: "
        f"{', '.join(supported_model_classes())}. If you hold a pipeline, pass its denoiser "
        f"(`pipe.transformer` or `pipe.unet`)."
    )


__all__ = [
    "BackboneAdapter",
    "DiTAdapter",
    "PixArtAdapter",
    "SD3Adapter",
    "UNetAdapter",
    "UNetExitBridges",
    "get_adapter",
    "supported_model_classes",
]
