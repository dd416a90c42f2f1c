"""The shipped feature networks' training (`RECIPES`): how the assets in `ee_diffusion/assets/feature-nets/` (and
the glyphs nets in `bench/assets/feature-nets/`) are rebuilt, `python -m bench.feature_nets --name digits`
(deterministic: fixed seed, fixed data order, one thread). Where each is saved: `ee_diffusion.eval.features.FEATURE_NETS`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ee_diffusion.eval.features import FEATURE_NETS, FeatureNet, save_feature_net
from ee_diffusion.training.data import get_dataset

# What each network is trained on: dataset name, options of the training draw and of a held-out draw (None: a 25%
# split of the training set), the number of optimizer steps, the architecture (`FeatureNet`'s `arch`) and the seed
# of the initialisation, batches and split; "<data>-pool" is the second, independent net of each data set.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and save a shipped feature network.")
    parser.add_argument("--name", choices=sorted(RECIPES), required=True)
    parser.add_argument("--out", type=Path, default=None, help="path without suffix (default: the shipped asset)")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    net, meta = train_feature_net(args.name, steps=args.steps, progress=True)
    out = args.out if args.out is not None else FEATURE_NETS[args.name][1]
    out.parent.mkdir(parents=True, exist_ok=True)
    save_feature_net(net, meta, out)
    print(f"{args.name}: held-out accuracy {meta['held_out_accuracy']:.4f}; saved to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
