"""Tiny random stand-ins of the first families (DiT, PixArt, SD3) and of the U-Nets, in eval mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from diffusers import (
    DiTTransformer2DModel,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
    UNet2DModel,
)

if TYPE_CHECKING:
    from ..unet import UNetExitBridges


def _randomise(model: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    """Overwrite every parameter with N(0, scale^2): no zero-initialised gate makes a block the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale)


def _stand_in(model_class: type, seed: int, scale: float = 0.2, **config: Any) -> Any:
    """`model_class(**config)` with width 16 as 2 heads of 8, randomised (N(0, scale^2)), in eval mode."""
    model = model_class(num_attention_heads=2, attention_head_dim=8, **config)
    _randomise(model, seed, scale)
    return model.eval()


def tiny_dit(num_layers: int = 6, sample_size: int = 8, in_channels: int = 1, num_classes: int = 10, width: int = 32,
             heads: int = 2, learn_sigma: bool = False, seed: int = 0) -> DiTTransformer2DModel:
    """A randomly initialised class-conditional DiT in eval mode, small enough for unit tests.

    The adaLN-zero projections are re-initialised to small random values (diffusers starts them at zero,
    which would make every block the identity and every exit look perfect).

    ```py
    >>> model = tiny_dit(num_layers=4)
    >>> len(model.transformer_blocks), model.training
    (4, False)

    ```
    """
    if width % heads:
        raise ValueError(f"width must be divisible by heads, got width={width}, heads={heads}")
    model = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=width // heads, in_channels=in_channels,
        out_channels=2 * in_channels if learn_sigma else in_channels, num_layers=num_layers, sample_size=sample_size,
        patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=1,
    )
    _randomise(model, seed)
    for block in model.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    return model.eval()


def tiny_pixart(num_layers: int = 4, sample_size: int = 8, in_channels: int = 4, caption_channels: int = 16,
                seed: int = 0) -> PixArtTransformer2DModel:
    """A randomly initialised PixArt transformer (width 16, 2 heads, patch 2) in eval mode.

    Text embeddings have `caption_channels` features; the output has `2 * in_channels` channels (learned
    variance, as PixArt-alpha).

    ```py
    >>> model = tiny_pixart(num_layers=2)
    >>> len(model.transformer_blocks), model.config.out_channels
    (2, 8)

    ```
    """
    return _stand_in(
        PixArtTransformer2DModel, seed, in_channels=in_channels, out_channels=2 * in_channels, num_layers=num_layers,
        norm_num_groups=1, cross_attention_dim=16, sample_size=sample_size, patch_size=2,
        caption_channels=caption_channels, use_additional_conditions=False,
    )


def tiny_sd3(num_layers: int = 4, sample_size: int = 8, in_channels: int = 4, text_dim: int = 16, pooled_dim: int = 8,
             seed: int = 0) -> SD3Transformer2DModel:
    """A randomly initialised SD3 MMDiT (width 16, 2 heads, patch 2) in eval mode.

    Text tokens have `text_dim` features (`joint_attention_dim`), the pooled text embedding `pooled_dim`.

    ```py
    >>> model = tiny_sd3(num_layers=2)
    >>> [block.context_pre_only for block in model.transformer_blocks]
    [False, True]

    ```
    """
    return _stand_in(
        SD3Transformer2DModel, seed, sample_size=sample_size, patch_size=2, in_channels=in_channels,
        num_layers=num_layers, joint_attention_dim=text_dim, caption_projection_dim=16,
        pooled_projection_dim=pooled_dim, out_channels=in_channels, pos_embed_max_size=sample_size,
    )


def tiny_unet(sample_size: int = 8, in_channels: int = 1, num_class_embeds: int | None = None, seed: int = 0
              ) -> UNet2DModel:
    """A randomly initialised 3-level `UNet2DModel` (channels 8/16/16, attention on level 1) in eval mode.

    ```py
    >>> model = tiny_unet()
    >>> [type(b).__name__ for b in model.down_blocks]
    ['DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D']

    ```
    """
    model = UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=(8, 16, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8,
        num_class_embeds=num_class_embeds,
    )
    _randomise(model, seed)
    return model.eval()


def tiny_unet_condition(sample_size: int = 8, in_channels: int = 4, cross_attention_dim: int = 16, seed: int = 0
                        ) -> UNet2DConditionModel:
    """A randomly initialised 3-level text-conditioned `UNet2DConditionModel` (Stable Diffusion layout) in eval mode.

    ```py
    >>> model = tiny_unet_condition()
    >>> [type(b).__name__ for b in model.up_blocks]
    ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D']

    ```
    """
    model = UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=(8, 16, 16), norm_num_groups=4, cross_attention_dim=cross_attention_dim,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4,
    )
    _randomise(model, seed)
    return model.eval()


def random_bridges(model: torch.nn.Module, seed: int = 1) -> "UNetExitBridges":
    """`UNetExitBridges` for `model` with random (not zero) weights, so that tests see what a bridge adds."""
    from ..unet import UNetExitBridges

    bridges = UNetExitBridges.from_model(model)
    _randomise(bridges, seed, scale=0.1)
    return bridges.eval()
