"""Tiny real diffusers models for tests, examples and the untrained demo (no downloads)."""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel


def tiny_dit(
    num_layers: int = 6,
    sample_size: int = 8,
    in_channels: int = 1,
    num_classes: int = 10,
    width: int = 32,
    heads: int = 2,
    learn_sigma: bool = False,
    seed: int = 0,
) -> DiTTransformer2DModel:
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
    generator = torch.Generator().manual_seed(seed)
    model = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        in_channels=in_channels,
        out_channels=2 * in_channels if learn_sigma else in_channels,
        num_layers=num_layers,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
        norm_num_groups=1,
    )
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    for block in model.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    return model.eval()
