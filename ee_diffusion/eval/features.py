"""Feature networks for FID/KID: small classifiers trained by the package on real data, shipped as safetensors.

FID needs a network that maps images to feature vectors. The standard one (Inception-v3) cannot be downloaded
here and says little about 8x8 digits, so the package trains a small CNN classifier per data set on its real
images and uses its penultimate layer (before the ReLU) as the feature. Its class logits give the "accuracy of
samples against their conditioning labels". FID values are only comparable under the same feature network.

Shipped networks (`ee_diffusion/assets/feature-nets/<name>.safetensors` + `.json`): `digits` (scikit-learn's
8x8 digits) and `glyphs` (the 8x8 upper-case font glyphs of `ee_diffusion.training.datasets_glyphs`), and for each a
second, independent one (`digits-pool`, `glyphs-pool`: another architecture and width, another seed and data
order), so that no decision rests on one network's blind spots. Rebuild them with
`python -m ee_diffusion.eval.features --name digits` (deterministic: fixed seed, fixed data order, one thread).

Inception-v3 and CLIP features from files the user holds: `ee_diffusion.eval.standard_features` (what
`ee-diffusion bench --pipeline` uses).

```py
>>> import torch
>>> from ee_diffusion.eval.features import load_feature_net
>>> net = load_feature_net("digits")
>>> net(torch.rand(4, 1, 8, 8)).shape, net.num_features
(torch.Size([4, 64]), 64)

```
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_save_safetensors, atomic_write_json, load_safetensors, read_json_file

FEATURE_NET_DIR = Path(__file__).resolve().parent.parent / "assets" / "feature-nets"

# What each shipped network is trained on: dataset name, options of the training draw and of a held-out draw
# (None: a 25% split of the training set), the number of optimizer steps, the architecture (`ARCHITECTURES`) and
# the seed of the initialisation, batches and split. Each data set has two independent networks: "<data>" (strided
# convolutions, global average pooling, 64 features) and "<data>-pool" (5x5 and 3x3 convolutions with GELU and max
# pooling, the spatial map flattened, 96 features), trained from another seed and so another data order: a
# decision ("unchanged quality") must hold under both (docs/evaluation.md).
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"dataset": "digits", "train_options": {}, "test_options": None, "steps": 1500, "lr": 2e-3, "pct_start": 0.3},
    "glyphs": {
        "dataset": "glyphs",
        "train_options": {"image_size": 8, "per_font": 16, "charset": "upper", "seed": 100},
        "test_options": {"image_size": 8, "per_font": 4, "charset": "upper", "seed": 101},
        "steps": 3000,
        "lr": 3e-3,
        "pct_start": 0.15,
    },
}
RECIPES["digits-pool"] = {**RECIPES["digits"], "arch": "pool", "width": 48, "feature_dim": 96, "seed": 7}
RECIPES["glyphs-pool"] = {**RECIPES["glyphs"], "arch": "pool", "width": 48, "feature_dim": 96, "seed": 7}
#: The network architectures of `FeatureNet` (`arch=`).
ARCHITECTURES = ("conv", "pool")


def feature_nets_of(dataset: str) -> tuple[str, ...]:
    """The shipped feature networks of a data set, the primary one first: ("digits", "digits-pool")."""
    names = tuple(n for n, r in RECIPES.items() if r["dataset"] == dataset)
    if not names:
        raise ValueError(f"no shipped feature network for data {dataset!r}; known data: "
                         f"{sorted({r['dataset'] for r in RECIPES.values()})}")
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


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return (images + 1.0) / 2.0  # datasets hold [-1, 1]; feature nets take [0, 1]


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts by up to one pixel and mild pixel noise, so features are robust to sampler artefacts."""
    b = images.shape[0]
    padded = F.pad(images, (1, 1, 1, 1), value=0.0)
    dx, dy = torch.randint(0, 3, (2,), generator=generator).tolist()
    size = images.shape[-1]
    shifted = padded[..., dy : dy + size, dx : dx + size]
    noise = torch.randn(shifted.shape, generator=generator) * 0.05 * torch.rand((b, 1, 1, 1), generator=generator)
    return (shifted + noise).clamp(0, 1)


def train_feature_net(name: str, steps: int | None = None, seed: int | None = None,
                      progress: bool = False) -> tuple[FeatureNet, dict]:
    """Train the feature network of recipe `name` from scratch; returns it and its metadata (accuracy etc.).

    Deterministic for a given seed on one machine: the initialisation, batches and augmentation come from
    seeded generators and training runs on one intra-op thread.
    """
    from ..training.data import get_dataset

    if name not in RECIPES:
        raise ValueError(f"unknown feature net recipe {name!r}; known: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    steps = recipe["steps"] if steps is None else steps
    seed = recipe.get("seed", 0) if seed is None else seed
    train_set = get_dataset(recipe["dataset"], **recipe["train_options"])
    x, y = _to_unit(train_set.images), train_set.labels
    if recipe["test_options"] is None:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        cut = len(y) * 3 // 4
        x_test, y_test = x[order[cut:]], y[order[cut:]]
        x, y = x[order[:cut]], y[order[:cut]]
    else:
        test_set = get_dataset(recipe["dataset"], **recipe["test_options"])
        x_test, y_test = _to_unit(test_set.images), test_set.labels

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = FeatureNet(train_set.channels, train_set.image_size, train_set.num_classes,
                             width=recipe.get("width", 32), feature_dim=recipe.get("feature_dim", 64),
                             arch=recipe.get("arch", "conv"))
        generator = torch.Generator().manual_seed(seed + 1)
        optimizer = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe["lr"], total_steps=steps,
                                                       pct_start=recipe["pct_start"])
        net.train()
        for step in range(steps):
            index = torch.randint(0, len(y), (128,), generator=generator)
            loss = F.cross_entropy(net.logits(_augment(x[index], generator)), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if progress and step % 250 == 0:
                print(f"step {step} loss {loss.item():.3f}", flush=True)
        net.eval()
        with torch.no_grad():
            accuracy = float((net.logits(x_test).argmax(1) == y_test).float().mean())
    finally:
        torch.set_num_threads(threads)
    meta = {"recipe": name, **recipe, "steps": steps, "seed": seed, "held_out_accuracy": accuracy,
            "num_classes": train_set.num_classes, "class_names": train_set.class_names}
    return net, meta


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
    path = Path(name_or_path)
    if str(name_or_path) in RECIPES:
        path = FEATURE_NET_DIR / str(name_or_path)
    if not path.with_suffix(".json").is_file():
        raise FileNotFoundError(
            f"no feature network at {str(path)!r}; shipped: {sorted(RECIPES)}; "
            f"rebuild with `python -m ee_diffusion.eval.features --name NAME`"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and save a shipped feature network.")
    parser.add_argument("--name", choices=sorted(RECIPES), required=True)
    parser.add_argument("--out", type=Path, default=None, help="path without suffix (default: the shipped asset)")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    net, meta = train_feature_net(args.name, steps=args.steps, progress=True)
    out = args.out if args.out is not None else FEATURE_NET_DIR / args.name
    out.parent.mkdir(parents=True, exist_ok=True)
    save_feature_net(net, meta, out)
    print(f"{args.name}: held-out accuracy {meta['held_out_accuracy']:.4f}; saved to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
