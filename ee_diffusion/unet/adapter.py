"""The engine's view of a U-Net (`UNet2DModel`, `UNet2DConditionModel`): early exit by depth truncation.

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
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import nn

from ..families.base import BackboneAdapter


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
    >>> from ee_diffusion.unet import UNetAdapter
    >>> from ee_diffusion.testing import tiny_unet
    >>> adapter = UNetAdapter(tiny_unet())
    >>> adapter.num_blocks, adapter.level_channels(), adapter.bridge_shapes()
    (3, [8, 16, 16], [(8, 16), (16, 16)])

    ```
    """

    model_classes = (UNet2DModel, UNet2DConditionModel)
    #: the arguments of the down, mid and up blocks whose first dimension is the batch (sliced to the running rows).
    batch_inputs = ("temb", "encoder_hidden_states", "attention_mask", "encoder_attention_mask")
    #: U-Nets exit by truncating their depth (`ee_diffusion.unet.truncation`), not by decoding a block's tokens.
    sequential = False
    sample_arg = "sample"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._check_layout()
        # Parameter names of every hooked module's forward, to name positional arguments
        # (UNet2DModel calls its up and mid blocks positionally). Keyed by the module itself, not its id, so that
        # copy.deepcopy maps the keys to the copy's modules.
        self._params = {
            module: tuple(inspect.signature(module.forward).parameters)
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

    def named_inputs(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Merge positional arguments of `module`'s forward into `kwargs` by parameter name."""
        if not args:
            return dict(kwargs)
        merged = dict(zip(self._params[module], args))
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

    def embedding_dim(self) -> int:
        return self.temb_dim()

    def null_class_id(self) -> int | None:
        """The last class-embedding row is the null class (guidance dropout); None without class embeddings."""
        rows = getattr(self.model.config, "num_class_embeds", None)
        return None if rows is None else int(rows) - 1

    def head_config(self) -> dict[str, Any]:
        channels, height, _ = self.prediction_shape()
        return {
            "num_blocks": self.num_blocks,
            # U-Net heads read feature maps (`feature_channels`); this width is the timestep embedding's.
            "hidden_dim": self.temb_dim(),
            "patch_size": 1,
            "out_channels": channels,
            "sample_size": height,
            "feature_channels": self.level_channels(),
        }

    # ------------------------------------------------------------------------------------------- calls
    @property
    def decoder(self) -> UNetAdapter:
        """A U-Net's view is its own decoder: its exits replay the outer levels with the learned bridges."""
        return self

    def is_cfg_pair_batch(self, inputs: dict, timesteps: torch.Tensor) -> bool:
        if not isinstance(self.model, UNet2DConditionModel):
            return False
        return super().is_cfg_pair_batch(inputs, timesteps)

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
        self, sample: torch.Tensor, timestep: torch.Tensor, bridges: nn.Module | None = None, **conditioning: Any
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One pass for training: every level's feature map and the eps prediction of every depth 1..N.

        The model runs once, as its own forward does (so every embedding and conditioning path is the
        model's); hooks record each block's inputs and outputs. Then, for every depth d < N, the shallow up
        path (up blocks N-d..N-1 and the output head) is run again from `bridges`' replacement of the inner
        levels (`bridges`: the `UNetExitBridges` made for this model). `predictions[d - 1]` equals the model under
        `StaticDepth(d)`; the last is the model's output.
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
