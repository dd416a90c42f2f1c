"""Test stand-ins for the files a user holds: random-weight FID Inception weights, a tiny CLIP folder."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ee_diffusion.eval.standard_features import FIDInceptionV3


def random_inception_weights(path: Path, seed: int = 0, resolution: int = 75) -> Path:
    """An Inception-shaped state dict with random weights, saved as safetensors, whose features vary with the image.

    Random convolutions over identity batch norms shrink the signal block by block (features ~1e-6); the batch
    norms' running statistics are set from one pass over random images in training mode (cumulative average), as
    a trained network's are, so every layer passes on unit-scale activations.
    """
    torch.manual_seed(seed)
    net = FIDInceptionV3(resolution)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.randint(0, 256, (8, 3, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path
