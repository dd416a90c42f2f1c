"""`ee-diffusion demo`: full depth against early exit on the same noise, with measured timings."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .config import EarlyExitConfig


def _demo_pipeline():
    """The shipped digits model with its recommended exit config."""
    from .default_model import load_default_pipeline

    return load_default_pipeline(), "shipped digits DiT (trained)"


def _save_grid(path: Path, rows: list[tuple[str, np.ndarray]]) -> None:
    """rows: (title, images (B, H, W, C) in [0, 1]) -> one labelled PNG, one row of images per entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.9, len(rows) * 1.25), squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(images[c].squeeze(-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(out_dir: Path, num_inference_steps: int = 25, seed: int = 0, repeats: int = 3) -> int:
    """Sample one image per class at full depth and with the recommended early exit; time both (interleaved)."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    pipe, description = _demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    labels = list(range(pipe.transformer.config.num_embeds_ada_norm))
    configs = {"full depth": EarlyExitConfig(), "early exit": pipe.default_exit_config}

    def sample(config: EarlyExitConfig):
        generator = torch.Generator().manual_seed(seed)  # same noise for both
        return pipe(class_labels=labels, num_inference_steps=num_inference_steps, generator=generator,
                    exit_config=config, output_type="np")

    outputs = {name: sample(config) for name, config in configs.items()}  # also the warm-up
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, config in configs.items():
            start = time.perf_counter()
            sample(config)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    fraction = outputs["early exit"].exit_stats.depth_fraction
    num_blocks = pipe.transformer.config.num_layers

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "demo.png"
    _save_grid(path, [
        (f"full depth\n{num_blocks} blocks", outputs["full depth"].images),
        (f"early exit\n{fraction:.0%} of blocks", outputs["early exit"].images),
    ])
    print(f"model: {description}; {len(labels)} images, {num_inference_steps} steps, same noise")
    print(f"exit policy: {pipe.default_exit_config.to_dict()}")
    print(f"full depth: {median['full depth'] * 1e3:.0f} ms per batch (median of {repeats})")
    print(f"early exit: {median['early exit'] * 1e3:.0f} ms per batch, {fraction:.1%} of the block evaluations")
    print(f"measured speedup: {median['full depth'] / median['early exit']:.2f}x")
    print(f"wrote {path}")
    return 0
