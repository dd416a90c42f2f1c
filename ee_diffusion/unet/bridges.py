"""`UNetExitBridges`: the learned replacement of the inner U-Net levels that a truncated row skips."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .._validation import check_int
from .adapter import UNetAdapter


class UNetExitBridges(ModelMixin, ConfigMixin):
    """The learned replacement of a U-Net's skipped inner levels: one small bridge per truncation depth.

    Bridge i (used by rows of depth i+1) maps level i's feature map (B, C_i, H_i, W_i) and the timestep
    embedding (B, D_t) to the input of up block N-1-i, (B, C_{i+1}, H_i, W_i):
    `conv_out(silu(conv_in(silu(h)) + proj(silu(temb))))`, 3x3 convolutions. `conv_out` starts at zero, so
    untrained bridges replace the inner levels by zeros; fine-tune them (with the U-Net) with the ASE or
    DeeDiff losses.

    ```py
    >>> from ee_diffusion.unet import UNetExitBridges
    >>> from ee_diffusion.testing import tiny_unet
    >>> bridges = UNetExitBridges.from_model(tiny_unet())
    >>> len(bridges.bridges), bridges.config.level_channels
    (2, [8, 16, 16])

    ```
    """

    @register_to_config
    def __init__(self, level_channels: list[int], temb_dim: int, model_class: str = "UNet2DModel") -> None:
        super().__init__()
        if (
            not isinstance(level_channels, (list, tuple))
            or len(level_channels) < 2
            or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in level_channels)
        ):
            raise ValueError(f"level_channels must be a list of >= 2 positive integers, got {level_channels!r}")
        check_int(temb_dim, "temb_dim", 1)
        self.bridges = nn.ModuleList(
            _Bridge(level_channels[i], level_channels[i + 1], temb_dim) for i in range(len(level_channels) - 1)
        )

    @classmethod
    def from_model(cls, model: nn.Module) -> "UNetExitBridges":
        """Bridges shaped for `model` (a `UNet2DModel` or `UNet2DConditionModel`), on its device and dtype."""
        if not isinstance(model, UNetAdapter.model_classes):
            raise TypeError(
                f"UNetExitBridges are made for UNet2DModel or UNet2DConditionModel, got {type(model).__name__}"
            )
        adapter = UNetAdapter(model)
        bridges = cls(adapter.level_channels(), adapter.temb_dim(), type(model).__name__)
        param = next(model.parameters())
        bridges = bridges.to(param.device)
        return bridges if param.dtype == torch.float32 else bridges.to(param.dtype)

    def check_model(self, model: nn.Module) -> None:
        """Raise `ValueError` naming every field where `model` differs from the model these bridges fit."""
        adapter = UNetAdapter(model)
        expected = {
            "model_class": type(model).__name__,
            "level_channels": adapter.level_channels(),
            "temb_dim": adapter.temb_dim(),
        }
        wrong = [f"{k}: bridges have {self.config[k]!r}, model has {v!r}" for k, v in expected.items()
                 if list_or_value(self.config[k]) != v]
        if wrong:
            raise ValueError("these U-Net bridges were made for a different model (" + "; ".join(wrong) + ")")

    def forward(self, level: int, feature: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Bridge of depth `level + 1`: (B, C_i, H_i, W_i) feature, (B, D_t) temb -> (B, C_{i+1}, H_i, W_i)."""
        if not 0 <= level < len(self.bridges):
            raise ValueError(f"level must be in 0..{len(self.bridges) - 1}, got {level}")
        return self.bridges[level](feature, temb)


def list_or_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class _Bridge(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_dim: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_proj = nn.Linear(temb_dim, out_channels)
        self.conv_out = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, feature: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        hidden = self.conv_in(F.silu(feature)) + self.time_proj(F.silu(temb.to(feature.dtype)))[:, :, None, None]
        return self.conv_out(F.silu(hidden))
