"""Which adapter serves which diffusers model: `get_adapter(model)`.

It sits apart from `ee_diffusion.backbones/__init__` because it also knows the U-Net adapter, whose package
(`ee_diffusion.unet`) builds on `backbones.base`.
"""

from __future__ import annotations

from torch import nn

from ..unet.adapter import UNetAdapter
from .base import BackboneAdapter
from .dit import DiTAdapter
from .pixart import PixArtAdapter
from .sd3 import SD3Adapter

ADAPTERS: tuple[type[BackboneAdapter], ...] = (DiTAdapter, PixArtAdapter, SD3Adapter, UNetAdapter)


def supported_model_classes() -> list[str]:
    return [cls.__name__ for adapter in ADAPTERS for cls in adapter.model_classes]


def get_adapter(model: nn.Module) -> BackboneAdapter:
    """Return the adapter for `model`, or raise a `TypeError` that names the supported classes.

    ```py
    >>> from ee_diffusion.testing import tiny_dit
    >>> type(get_adapter(tiny_dit(num_layers=2))).__name__
    'DiTAdapter'

    ```
    """
    for adapter in ADAPTERS:
        if isinstance(model, adapter.model_classes):
            return adapter(model)
    raise TypeError(
        f"early exit does not support {type(model).__name__}; supported model classes: "
        f"{', '.join(supported_model_classes())}. If you hold a pipeline, pass its denoiser "
        f"(`pipe.transformer` or `pipe.unet`)."
    )
