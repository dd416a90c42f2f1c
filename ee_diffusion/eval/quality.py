"""Sample quality: FID and KID through torchmetrics with a pluggable feature network, plus class accuracy.

`QualityEvaluator` holds the real (reference) statistics once - torchmetrics' `reset_real_features=False` - and
scores any number of generated sets against them, in float64. Always read a FID next to its floor
(`evaluator.score(other_real_images)`: two real sets of the same size) and the spread between two seeds of the
full model: differences below that spread are noise.

```py
>>> import torch
>>> from ee_diffusion.eval.features import load_feature_net
>>> from ee_diffusion.eval.quality import QualityEvaluator, real_images
>>> real, labels = real_images("digits", split="reference")
>>> evaluator = QualityEvaluator(load_feature_net("digits"), real)
>>> round(evaluator.score(real)["fid"], 6)
0.0

```
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Real images of each benchmark setting: the reference draw and an independent draw for the floor (the repository's
# `bench/` adds its glyphs set).
REAL_SETS: dict[str, dict[str, Any]] = {"digits": {"dataset": "digits", "options": {}}}
_REAL_CACHE: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def real_images(setting: str, split: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) real images in [0, 1] and their labels, for `setting` and `split` ("reference" or "floor").

    digits: the 1797 images are split in two fixed disjoint halves (even / odd positions of a seeded
    permutation); another set: its two draws (`REAL_SETS[setting]["reference"|"floor"]`). Cached per process.
    """
    from ..training.data import get_dataset

    if setting not in REAL_SETS:
        raise ValueError(f"unknown setting {setting!r}; known: {sorted(REAL_SETS)}")
    if split not in ("reference", "floor"):
        raise ValueError(f"split must be 'reference' or 'floor', got {split!r}")
    key = (setting, split)
    if key not in _REAL_CACHE:
        spec = REAL_SETS[setting]
        if setting == "digits":
            ds = get_dataset("digits")
            order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
            part = order[0::2] if split == "reference" else order[1::2]
            images, labels = ds.images[part], ds.labels[part]
        else:
            ds = get_dataset(spec["dataset"], **spec[split])
            # A rendered set may go class by class or font by font; a fixed shuffle mixes it once.
            order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
            images, labels = ds.images[order], ds.labels[order]
        _REAL_CACHE[key] = ((images + 1) / 2, labels)
    return _REAL_CACHE[key]


class QualityEvaluator:
    """FID, KID and class accuracy of generated images against fixed real statistics.

    Args:
        feature_net: maps (B, C, H, W) images in [0, 1] to (B, F) features; has an int `num_features`. A
            `logits` method, when present, scores class accuracy.
        real: (N, C, H, W) real images in [0, 1] (the reference set).
        kid_subset_size: subset size of KID (clipped to the smaller set).
    """

    def __init__(self, feature_net: nn.Module, real: torch.Tensor, kid_subset_size: int = 100, batch_size: int = 500) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.feature_net = feature_net.eval()
        self.batch_size = batch_size
        self.kid_subset_size = kid_subset_size
        self.fid = FrechetInceptionDistance(feature=feature_net, reset_real_features=False, normalize=False)
        self.real_features = self.features(real)  # kept for KID
        for chunk in real.split(batch_size):
            self.fid.update(chunk.float(), real=True)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.feature_net(c.float()).double() for c in images.split(self.batch_size)])

    @torch.no_grad()
    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None, kid: bool = True) -> dict[str, float]:
        """FID (and KID mean/std, and accuracy when `labels` are given) of `images` against the reference."""
        self.fid.reset()  # fake statistics only: the real ones are kept
        for chunk in images.split(self.batch_size):
            self.fid.update(chunk.float(), real=False)
        result = {"fid": max(float(self.fid.compute()), 0.0), "num_images": int(images.shape[0])}
        if kid:
            result.update(self.kid(images))
        if labels is not None and hasattr(self.feature_net, "logits"):
            predicted = torch.cat([self.feature_net.logits(c.float()).argmax(1) for c in images.split(self.batch_size)])
            result["accuracy"] = float((predicted == labels.to(predicted.device)).float().mean())
        return result

    def kid(self, images: torch.Tensor, subsets: int = 50, seed: int = 0) -> dict[str, float]:
        """KID through torchmetrics, with a seeded choice of subsets (deterministic)."""
        from torchmetrics.image.kid import KernelInceptionDistance

        fake = self.features(images)
        size = min(self.kid_subset_size, fake.shape[0], self.real_features.shape[0])
        metric = KernelInceptionDistance(feature=_Identity(fake.shape[1]), subsets=subsets, subset_size=size)
        metric.update(self.real_features, real=True)
        metric.update(fake, real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
        return {"kid_mean": float(mean), "kid_std": float(std)}


class _Identity(nn.Module):
    """Precomputed features pass straight through torchmetrics (KID over cached features)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
