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
    """The shipped digits model (its folder carries the recommended operating point)."""
    from .default_model import load_default_pipeline

    return load_default_pipeline()


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


def _speedup(times: dict[str, list[float]], name: str) -> str:
    """The median speedup over the stock model, with the range of its per-round ratios (the run's timing noise)."""
    ratios = sorted(a / b for a, b in zip(times["stock"], times[name]))
    return f"{statistics.median(ratios):.2f}x (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}x)"


def run_demo(
    out_dir: str | Path, num_inference_steps: int = 25, seed: int = 0, batch_size: int = 64, repeats: int = 5
) -> list[str]:
    """The stock model at `num_inference_steps` DDIM steps (the reference, no hooks) against the pipeline's default
    operating point (a call with no steps, guidance or exit config), from the same noise, with the fewer-steps
    baseline beside it: the point's solver and steps at full depth, which is what the step cut alone buys.

    All three are timed as a user calls them, interleaved (warm-up, then `repeats` rounds in shuffled order); each
    speedup is the median of the per-round ratios, with their range. The grid shows two images per class. Returns the
    summary lines (operating point, timings, speedups, the PNG's path).
    """
    from diffusers import DDIMScheduler

    check_int(num_inference_steps, "num_inference_steps", 1, "sampling steps")
    check_int(batch_size, "batch_size", 1, "rows per batch")
    check_int(repeats, "repeats", 1, "timed rounds")
    pipe = _demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    point = pipe.operating_point
    guidance = point.guidance_scale if point is not None else pipe.default_guidance_scale
    num_classes = pipe.num_classes
    labels = [i % num_classes for i in range(batch_size)]
    default_scheduler = pipe.scheduler
    stock_scheduler = DDIMScheduler.from_config(default_scheduler.config)
    ran = pipe.resolve_call(None, None, None)

    def stock():
        pipe.scheduler = stock_scheduler
        try:
            return pipe(class_labels=labels, num_inference_steps=num_inference_steps, guidance_scale=guidance,
                        generator=torch.Generator().manual_seed(seed), exit_config=EarlyExitConfig(), output_type="np")
        finally:
            pipe.scheduler = default_scheduler

    def fewer_steps():
        return pipe(class_labels=labels, num_inference_steps=ran.num_inference_steps, guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(seed), exit_config=EarlyExitConfig(), output_type="np")

    def default():
        return pipe(class_labels=labels, generator=torch.Generator().manual_seed(seed), output_type="np")

    calls = {"stock": stock, "fewer steps": fewer_steps, "operating point": default}
    outputs = {name: call() for name, call in calls.items()}  # also the warm-up
    times = interleaved_timings(calls, repeats=repeats, warmup=0)
    median = {name: statistics.median(values) for name, values in times.items()}
    exits_alone = statistics.median(a / b for a, b in zip(times["fewer steps"], times["operating point"]))
    fraction = outputs["operating point"].exit_stats.total_blocks / outputs["stock"].exit_stats.total_blocks
    num_blocks = pipe.transformer.config.num_layers
    steps, solver = ran.num_inference_steps, type(default_scheduler).__name__

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "demo.png"
    shown = slice(0, min(batch_size, 2 * num_classes))
    _save_grid(path, [
        (f"stock\n{num_inference_steps} DDIM steps\n{num_blocks} blocks", outputs["stock"].images[shown]),
        (f"fewer steps\n{steps} steps\n{num_blocks} blocks", outputs["fewer steps"].images[shown]),
        (f"operating point\n{steps} steps\n{fraction:.0%} of blocks", outputs["operating point"].images[shown]),
    ], columns=num_classes)
    return [
        f"model: shipped digits DiT; batch {batch_size}, guidance {guidance}, same noise for all; {repeats} timed "
        f"rounds, interleaved",
        f"stock model: {num_inference_steps} DDIM steps, no hooks: {median['stock'] * 1e3:.0f} ms per batch",
        f"fewer steps: {solver}, {steps} steps, full depth: {median['fewer steps'] * 1e3:.0f} ms per batch, "
        f"{_speedup(times, 'fewer steps')}",
        f"a call without arguments ({ran.source}): {solver}, {steps} steps, exit config "
        f"{ran.exit_config.to_dict()}: {median['operating point'] * 1e3:.0f} ms per batch, {fraction:.1%} of the stock "
        f"block evaluations",
        f"measured speedup of the operating point: {_speedup(times, 'operating point')}; of its exits alone, over the "
        f"same steps at full depth: {exits_alone:.2f}x"
        + (f" (measured in {point.measured_in})" if point is not None and point.measured_in else ""),
        f"wrote {path}",
    ]
