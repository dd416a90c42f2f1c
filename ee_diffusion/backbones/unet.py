"""U-Net early exit by depth truncation: `UNet2DModel` and `UNet2DConditionModel`.

A U-Net has no flat block list: its decoder needs every encoder skip tensor, and only the last up block
matches the output head. So a U-Net "exits" by *truncating its depth*. Number the levels from the outside
in: level i is down block i, and the up block that consumes its skips, up block N-1-i (the innermost level
N-1 also holds the mid block). A row of depth d runs levels 0..d-1 and skips the inner levels d..N-1:

    conv_in -> down_0 -> ... -> down_{d-1} --bridge_{d-1}--> up_{N-d} -> ... -> up_{N-1} -> conv_out
                              (skips down_d .. down_{N-1}, mid, up_0 .. up_{N-1-d})

The skipped part's output - the input of up block N-d, a (C_{d}, H/2^(d-1), W/2^(d-1)) feature map - is
replaced by a small learned *bridge* (`UNetExitBridges`) applied to down block d-1's last feature map and the
timestep embedding. The shallow path keeps conv_in, the high-resolution skips and the model's own output
head, so the prediction keeps its fine detail; what is lost is the deep, low-resolution context, which
matters least near pure noise (ASE's observation) and which DeepCache/Clockwork show can be approximated
cheaply. The decision to truncate is made right after down block d-1, *before* the skipped computation, by
the exit policy (a static depth, an ASE timestep schedule, or a DeeDiff uncertainty head reading the same
feature map). Depth N is the stock model.

Per-row compaction works across the U: rows that truncate at depth d leave the batch after down block d-1
and rejoin it at up block N-d with their bridged features, in batch order; the rows still active at up
block N-1-i are exactly those that were active at down block i, so every skip tensor already has the right
rows. Exit statistics count levels: `blocks_run` of a row is its depth d (N = full).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .base import BackboneAdapter

#: Block classes whose call contract the engine knows: down blocks return (hidden, res_samples); up blocks
#: take `res_hidden_states_tuple`; mid blocks return the hidden state.
SUPPORTED_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D", "ResnetDownsampleBlock2D")
SUPPORTED_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D", "ResnetUpsampleBlock2D")
SUPPORTED_MID_BLOCKS = ("UNetMidBlock2D", "UNetMidBlock2DCrossAttn")


class UNetAdapter(BackboneAdapter):
    """The engine's view of a diffusers U-Net: decision points after every down block, truncation by level.

    `blocks` are the down blocks; `num_blocks` N is the number of levels. The engine hooks the down blocks,
    the mid block and the up blocks (see the module docstring for the design).

    ```py
    >>> from ee_diffusion.backbones import UNetAdapter
    >>> from ee_diffusion.testing import tiny_unet
    >>> adapter = UNetAdapter(tiny_unet())
    >>> adapter.num_blocks, adapter.level_channels(), adapter.bridge_shapes()
    (3, [8, 16, 16], [(8, 16), (16, 16)])

    ```
    """

    model_classes = (UNet2DModel, UNet2DConditionModel)
    batch_inputs = ("temb", "encoder_hidden_states", "attention_mask", "encoder_attention_mask")
    #: the engine runs U-Nets with `_UNetEngine` (truncation and rejoin) instead of the sequential engine.
    truncates = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._check_layout()
        # Parameter names of every hooked module's forward, to name positional arguments
        # (UNet2DModel calls its up and mid blocks positionally).
        self._params = {
            id(module): tuple(inspect.signature(module.forward).parameters)
            for module in (*model.down_blocks, *model.up_blocks, *([model.mid_block] if model.mid_block else []))
        }

    def _check_layout(self) -> None:
        model = self.model
        downs, ups = list(model.down_blocks), list(model.up_blocks)
        kinds = [(b, SUPPORTED_DOWN_BLOCKS) for b in downs] + [(b, SUPPORTED_UP_BLOCKS) for b in ups]
        if model.mid_block is not None:
            kinds.append((model.mid_block, SUPPORTED_MID_BLOCKS))
        for block, allowed in kinds:
            if type(block).__name__ not in allowed:
                raise TypeError(
                    f"early exit does not support U-Net blocks of type {type(block).__name__}; supported: "
                    f"{', '.join(allowed)}"
                )
        n = len(downs)
        if n < 2 or len(ups) != n:
            raise TypeError(
                f"early exit needs a U-Net with >= 2 levels and as many up as down blocks, got {n}/{len(ups)}"
            )
        for i, down in enumerate(downs):
            has_down = getattr(down, "downsamplers", None) is not None
            if has_down != (i < n - 1) or len(ups[n - 1 - i].resnets) != len(down.resnets) + 1:
                raise TypeError(
                    "early exit needs the standard U-Net layout (every down block but the last downsamples; up block "
                    f"N-1-i has one resnet more than down block i); level {i} differs"
                )

    # ------------------------------------------------------------------------------------------- structure
    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.down_blocks

    def block_params(self, module: nn.Module) -> tuple[str, ...]:
        return self._params[id(module)]

    def named_inputs(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Merge positional arguments of `module`'s forward into `kwargs` by parameter name."""
        if not args:
            return dict(kwargs)
        merged = dict(zip(self._params[id(module)], args))
        merged.update(kwargs)
        return merged

    def level_channels(self) -> list[int]:
        """Channels of every level's feature map (down block i's output before its downsampler)."""
        return [int(c) for c in self.model.config.block_out_channels]

    def bridge_shapes(self) -> list[tuple[int, int]]:
        """(in, out) channels of bridge i: level i's feature -> the input of up block N-1-i."""
        channels = self.level_channels()
        return [(channels[i], channels[i + 1]) for i in range(len(channels) - 1)]

    def feature_index(self, level: int) -> int:
        """Index, in down block `level`'s res_samples, of its last feature map before downsampling."""
        return len(self.model.down_blocks[level].resnets) - 1

    def num_res_samples(self, level: int) -> int:
        down = self.model.down_blocks[level]
        return len(down.resnets) + (0 if getattr(down, "downsamplers", None) is None else 1)

    def temb_dim(self) -> int:
        return int(self.model.down_blocks[0].resnets[0].time_emb_proj.in_features)

    def prediction_shape(self) -> tuple[int, int, int]:
        config = self.model.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (config.in_channels, height, width)

    def hidden_dim(self) -> int:
        return self.temb_dim()

    def head_config(self) -> dict[str, Any]:
        channels, height, _ = self.prediction_shape()
        return {
            "num_blocks": self.num_blocks,
            "hidden_dim": self.temb_dim(),
            "patch_size": 1,
            "out_channels": channels,
            "sample_size": height,
            "feature_channels": self.level_channels(),
        }

    # ------------------------------------------------------------------------------------------- calls
    def batch_and_timesteps(self, inputs: dict[str, Any]) -> tuple[int, torch.Tensor]:
        return super().batch_and_timesteps({**inputs, "hidden_states": inputs["sample"]})

    def is_cfg_pair_batch(self, inputs: dict, timesteps: torch.Tensor) -> bool:
        if not isinstance(self.model, UNet2DConditionModel):
            return False
        return self.latent_cfg_pair({**inputs, "hidden_states": inputs["sample"]}, timesteps)

    def check_call(self, inputs: dict[str, Any]) -> None:
        for name in ("down_block_additional_residuals", "mid_block_additional_residual",
                     "down_intrablock_additional_residuals"):
            if inputs.get(name) is not None:
                raise ValueError(
                    f"early exit on {type(self.model).__name__} does not support `{name}` (ControlNet/T2I-adapter "
                    f"residuals); call the model without it, or run with EarlyExitConfig() (no exits)"
                )

    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B,) -> (B, temb_dim): the model's time embedding (without class or text additions)."""
        model = self.model
        return model.time_embedding(model.time_proj(timestep).to(dtype=dtype))

    def exit_outputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, bridges: UNetExitBridges | None = None, **conditioning: Any
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One pass for training: every level's feature map and the eps prediction of every depth 1..N.

        The model runs once, as its own forward does (so every embedding and conditioning path is the
        model's); hooks record each block's inputs and outputs. Then, for every depth d < N, the shallow up
        path (up blocks N-d..N-1 and the output head) is run again from `bridges`' replacement of the inner
        levels. `predictions[d - 1]` equals the model under `StaticDepth(d)`; the last is the model's output.
        Gradients reach the U-Net and the bridges.
        """
        model = self.model
        n = self.num_blocks
        if bridges is None:
            raise ValueError("U-Net exits need `bridges=UNetExitBridges.from_model(model)` to replace the inner levels")
        record: dict[Any, Any] = {}

        def keep(key):
            def hook(module, args, kwargs, output):
                record[key] = (self.named_inputs(module, args, kwargs) if key != "conv_in" else None, output)

            return hook

        modules = [("conv_in", model.conv_in)] + [(("down", i), b) for i, b in enumerate(model.down_blocks)]
        modules += [(("up", j), b) for j, b in enumerate(model.up_blocks)]
        handles = [m.register_forward_hook(keep(key), with_kwargs=True) for key, m in modules]
        try:
            output = model(sample, timestep, **conditioning).sample
        finally:
            for handle in handles:
                handle.remove()
        channels = self.prediction_shape()[0]
        features = [record[("down", i)][1][1][self.feature_index(i)] for i in range(n)]  # (B, C_i, H_i, W_i)
        predictions = []
        for depth in range(1, n):
            temb = record[("down", depth - 1)][0]["temb"]
            hidden = bridges(depth - 1, features[depth - 1], temb)
            skips = [record["conv_in"][1]]
            for i in range(depth):
                skips += list(record[("down", i)][1][1])
            skips = skips[:-1]  # down block d-1's downsampled output feeds only the skipped levels
            for j in range(n - depth, n):
                up = model.up_blocks[j]
                inputs = dict(record[("up", j)][0])
                k = len(up.resnets)
                inputs["hidden_states"], inputs["res_hidden_states_tuple"] = hidden, tuple(skips[-k:])
                skips = skips[:-k]
                hidden = up(**inputs)
            prediction = model.conv_out(model.conv_act(model.conv_norm_out(hidden)))
            if isinstance(model, UNet2DModel) and model.config.time_embedding_type == "fourier":
                # UNet2DModel divides a fourier-embedded model's output by sigma (its `timestep`)
                sigma = torch.as_tensor(timestep, device=prediction.device).float()
                sigma = sigma.reshape(-1, 1, 1, 1) if sigma.ndim else sigma
                prediction = prediction / sigma
            predictions.append(prediction[:, :channels])
        predictions.append(output[:, :channels])
        return features, predictions


class UNetExitBridges(ModelMixin, ConfigMixin):
    """The learned replacement of a U-Net's skipped inner levels: one small bridge per truncation depth.

    Bridge i (used by rows of depth i+1) maps level i's feature map (B, C_i, H_i, W_i) and the timestep
    embedding (B, D_t) to the input of up block N-1-i, (B, C_{i+1}, H_i, W_i):
    `conv_out(silu(conv_in(silu(h)) + proj(silu(temb))))`, 3x3 convolutions. `conv_out` starts at zero, so
    untrained bridges replace the inner levels by zeros; fine-tune them (with the U-Net) with the ASE or
    DeeDiff losses.

    ```py
    >>> from ee_diffusion.backbones import UNetExitBridges
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
        if isinstance(temb_dim, bool) or not isinstance(temb_dim, int) or temb_dim < 1:
            raise ValueError(f"temb_dim must be a positive integer, got {temb_dim!r}")
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
