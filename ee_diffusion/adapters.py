"""Which engine view serves which diffusers model: `get_adapter(model)`.

A declared transformer family (`ee_diffusion.families`) or a U-Net (`ee_diffusion.unet`, which builds on
`families.base`): this lookup sits above both so that neither imports the other.
"""

from __future__ import annotations

from torch import nn

from .families import FAMILIES, BackboneAdapter, FamilyAdapter, ModelFamily
from .unet.adapter import UNetAdapter


def supported_model_classes() -> list[str]:
    """Names of every model class `apply_early_exit` accepts."""
    return [cls.__name__ for family in FAMILIES for cls in family.model_classes] + [
        cls.__name__ for cls in UNetAdapter.model_classes
    ]


def get_family(model: nn.Module) -> ModelFamily | None:
    """The declared family of `model`, or None (U-Nets and unsupported classes)."""
    return next((family for family in FAMILIES if isinstance(model, family.model_classes)), None)


def get_adapter(model: nn.Module) -> BackboneAdapter:
    """Return the engine's view of `model`, or raise a `TypeError` that names the supported classes.

    ```py
    >>> from ee_diffusion.testing import tiny_dit
    >>> get_adapter(tiny_dit(num_layers=2)).family.name
    'DiT'

    ```
    """
    family = get_family(model)
    if family is not None:
        return FamilyAdapter(model, family)
    if isinstance(model, UNetAdapter.model_classes):
        return UNetAdapter(model)
    raise TypeError(
        f"early exit does not support {type(model).__name__}; supported model classes: "
        f"{', '.join(supported_model_classes())}. If you hold a pipeline, pass its denoiser "
        f"(`pipe.transformer` or `pipe.unet`). To add a family, see docs/add-a-family.md."
    )
