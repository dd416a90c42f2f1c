"""Feature networks for FID/KID: small classifiers trained by the package on real data, shipped as safetensors.

Inception-v3 says little about 8x8 digits (and is not downloaded here), so the package trains a small CNN
classifier per data set and uses its penultimate layer (before the ReLU) as the feature; its logits give the class
accuracy of samples. Shipped (`ee_diffusion/assets/feature-nets/<name>.safetensors` + `.json`): `digits` and an
independent `digits-pool` (another architecture, width, seed and data order), so that no decision rests on one
network's blind spots; the repository's `bench/` registers its glyphs nets in `FEATURE_NETS` too and rebuilds
them all (`python -m bench.feature_nets --name digits`, deterministic). Inception-v3 and CLIP features from the
user's files: `standard_features.py`.

```py
>>> import torch
>>> from ee_diffusion.eval.features import load_feature_net
>>> net = load_feature_net("digits")
>>> net(torch.rand(4, 1, 8, 8)).shape, net.num_features
(torch.Size([4, 64]), 64)

```
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_save_safetensors, atomic_write_json, load_safetensors, read_json_file

FEATURE_NET_DIR = Path(__file__).resolve().parent.parent / "assets" / "feature-nets"

# name -> (the data set it is trained on, its path without suffix). A decision ("unchanged quality") must hold
# under both networks of a data set (docs/evaluation.md).
FEATURE_NETS: dict[str, tuple[str, Path]] = {n: ("digits", FEATURE_NET_DIR / n) for n in ("digits", "digits-pool")}
#: The network architectures of `FeatureNet` (`arch=`).
ARCHITECTURES = ("conv", "pool")


def feature_nets_of(dataset: str) -> tuple[str, ...]:
    """The shipped feature networks of a data set, the primary one first: ("digits", "digits-pool")."""
    names = tuple(n for n, (data, _) in FEATURE_NETS.items() if data == dataset)
    if not names:
        raise ValueError(f"no shipped feature network for data {dataset!r}; known data: "
                         f"{sorted({data for data, _ in FEATURE_NETS.values()})}")
    return names


class FeatureNet(nn.Module):
    """A small CNN classifier; `forward` returns the `feature_dim` features of images in [0, 1], (B, C, H, W).

    `logits(images)` gives the class scores. `num_features` is what torchmetrics reads to size its state.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 32, feature_dim: int = 64,
                 arch: str = "conv"):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
        self.config = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes,
                       "width": width, "feature_dim": feature_dim}
        if arch != "conv":  # configs written before `arch` existed load as "conv"
            self.config["arch"] = arch
        self.num_features = feature_dim
        if arch == "conv":
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.ReLU(),
                nn.Conv2d(2 * width, 4 * width, 3, padding=1, stride=2), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                nn.Linear(4 * width, feature_dim),
            )
        else:
            # (B, C, H, W) -> (B, 2w, H/4, W/4) -> flattened: keeps where strokes are, which global pooling drops.
            side = image_size // 4
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, width, 5, padding=2), nn.GELU(), nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(2 * width * side * side, feature_dim),
            )
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # torchmetrics hands the images over unchanged (custom network, normalize=False): floats in [0, 1].
        return self.body(images.float() * 2.0 - 1.0)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self(images)))


def save_feature_net(net: FeatureNet, meta: dict, path: str | Path) -> None:
    """Write `path.safetensors` (weights) and `path.json` (architecture + metadata)."""
    path = Path(path)
    # Weights first: the .json is what marks a network as present, so a crash in between never leaves a new
    # config without its weights.
    atomic_save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()}, path.with_suffix(".safetensors"))
    atomic_write_json(path.with_suffix(".json"), {"config": net.config, "meta": meta}, indent=2)


def load_feature_net(name_or_path: str | Path) -> FeatureNet:
    """A shipped network by name (`"digits"`, `"digits-pool"`, ...) or one saved with `save_feature_net` (path, no
    suffix)."""
    path = FEATURE_NETS[str(name_or_path)][1] if str(name_or_path) in FEATURE_NETS else Path(name_or_path)
    if not path.with_suffix(".json").is_file():
        raise FileNotFoundError(
            f"no feature network at {str(path)!r}; shipped: {sorted(FEATURE_NETS)}; "
            f"rebuild with `python -m bench.feature_nets --name NAME` from the repository"
        )
    info = read_json_file(path.with_suffix(".json"), "feature network config")
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict) or "meta" not in info:
        raise ValueError(f"{str(path.with_suffix('.json'))!r} is not a feature network config (needs 'config', 'meta')")
    net = FeatureNet(**info["config"])
    weights = load_safetensors(path.with_suffix(".safetensors"), "feature network weights")
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(
            f"{str(path.with_suffix('.safetensors'))!r} does not match {str(path.with_suffix('.json'))!r}: {error}"
        ) from None
    net.meta = info["meta"]
    return net.eval().requires_grad_(False)
