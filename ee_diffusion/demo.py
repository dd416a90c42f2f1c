"""`ee-diffusion demo`: full depth against early exit on the same noise, with measured timings."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_save_figure
from ._validation import check_int
from .config import EarlyExitConfig
from .eval.timing import interleaved_timings


def _demo_pipeline():
    """The shipped digits model with its recommended exit config, and the guidance scale it is sampled with."""
    from .default_model import DEFAULT_GUIDANCE_SCALE, load_default_pipeline

    return load_default_pipeline(), DEFAULT_GUIDANCE_SCALE


def _save_grid(path: Path, groups: list[tuple[str, np.ndarray]], columns: int) -> None:
    """groups: (title, images (B, H, W, C) in [0, 1]) -> one labelled PNG; each group fills rows of `columns`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_per_group = -(-groups[0][1].shape[0] // columns)
    fig, axes = plt.subplots(len(groups) * rows_per_group, columns,
                             figsize=(columns * 0.9, len(groups) * rows_per_group * 1.0), squeeze=False)
    for g, (title, images) in enumerate(groups):
        for i in range(rows_per_group * columns):
            ax = axes[g * rows_per_group + i // columns][i % columns]
            if i < images.shape[0]:
                ax.imshow(images[i].squeeze(-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[g * rows_per_group][0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def run_demo(
    out_dir: str | Path, num_inference_steps: int = 25, seed: int = 0, batch_size: int = 64, repeats: int = 3
) -> list[str]:
    """Sample a batch (classes in turn) at full depth and with the recommended early exit, from the same noise.

    Both are timed interleaved (warm-up, then `repeats` rounds, medians); the grid shows two images per class.
    Returns the summary lines (model, policy, timings, measured speedup, the PNG's path).
    """
    check_int(num_inference_steps, "num_inference_steps", 1, "sampling steps")
    check_int(batch_size, "batch_size", 1, "rows per batch")
    check_int(repeats, "repeats", 1, "timed rounds")
    pipe, guidance_scale = _demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    num_classes = pipe.num_classes
    labels = [i % num_classes for i in range(batch_size)]
    configs = {"full depth": EarlyExitConfig(), "early exit": pipe.default_exit_config}

    def sample(config: EarlyExitConfig):
        generator = torch.Generator().manual_seed(seed)  # same noise for both
        return pipe(class_labels=labels, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                    generator=generator, exit_config=config, output_type="np")

    outputs = {name: sample(config) for name, config in configs.items()}  # also the warm-up
    times = interleaved_timings({name: lambda c=config: sample(c) for name, config in configs.items()},
                                repeats=repeats, warmup=0)
    median = {name: statistics.median(values) for name, values in times.items()}
    fraction = outputs["early exit"].exit_stats.depth_fraction
    num_blocks = pipe.transformer.config.num_layers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "demo.png"
    shown = slice(0, min(batch_size, 2 * num_classes))
    _save_grid(path, [
        (f"full depth\n{num_blocks} blocks", outputs["full depth"].images[shown]),
        (f"early exit\n{fraction:.0%} of blocks", outputs["early exit"].images[shown]),
    ], columns=num_classes)
    return [
        f"model: shipped digits DiT; batch {batch_size}, {num_inference_steps} steps, guidance {guidance_scale}, "
        f"same noise for both",
        f"exit policy: {pipe.default_exit_config.to_dict()}",
        f"full depth: {median['full depth'] * 1e3:.0f} ms per batch (median of {repeats})",
        f"early exit: {median['early exit'] * 1e3:.0f} ms per batch, {fraction:.1%} of the block evaluations",
        f"measured speedup: {median['full depth'] / median['early exit']:.2f}x",
        f"wrote {path}",
    ]
