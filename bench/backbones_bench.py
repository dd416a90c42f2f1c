"""Per-backbone cost of one ASE-style exit schedule: block fraction and wall-clock ratio, batch 16, CPU.

For every supported model family, a randomly initialised model of a small but not tiny size runs the model
calls of one 10-step sampling schedule (timesteps 999 .. 0, every call at batch 16, the same latents) twice:
the stock model and the model with a `TimestepSchedule` that runs fewer blocks (transformers) or levels
(U-Nets) at noisy steps. Timing is interleaved (stock, early, stock, early, ...) after a warm-up; the ratio
is the median of per-round ratios. Random weights: this measures cost, not quality.

Run: `python -m bench.backbones_bench --out docs/backbones-cost` (about 2-4 minutes on 2 CPU
cores); writes backbones.json and backbones.md (the table, rendered from the JSON by `markdown`).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path

import torch
from diffusers import (
    DiTTransformer2DModel,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
    UNet2DModel,
)

from ee_diffusion._io import atomic_write_json, atomic_write_text
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import apply_early_exit, record_exit_stats, remove_early_exit
from ee_diffusion.eval.timing import interleaved_timings
from ee_diffusion.schedules import TimestepSchedule
from ee_diffusion.unet import UNetExitBridges

from .compute import summarize_timings

BOUNDARIES = [200, 400, 600, 800]


def build(kind: str) -> tuple[torch.nn.Module, dict, list[int]]:
    """(model, per-call kwargs without the timestep, ASE depths for the 5 timestep buckets)."""
    g = torch.Generator().manual_seed(0)
    width, heads, layers = 192, 4, 12
    transformer_depths = [12, 10, 8, 6, 4]  # the released DiT-XL/2 schedule scaled to 12 blocks (20/28 -> 0.67)
    if kind == "DiT":
        model = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=width // heads, in_channels=4,
                                      out_channels=4, num_layers=layers, sample_size=16, patch_size=2,
                                      num_embeds_ada_norm=10, norm_num_groups=1)
        return model, {"class_labels": torch.arange(16) % 10}, transformer_depths
    if kind == "PixArt":
        model = PixArtTransformer2DModel(num_attention_heads=heads, attention_head_dim=width // heads, in_channels=4,
                                         out_channels=8, num_layers=layers, cross_attention_dim=width, sample_size=16,
                                         caption_channels=64, use_additional_conditions=False)
        return model, {"encoder_hidden_states": torch.randn(16, 16, 64, generator=g)}, transformer_depths
    if kind == "SD3":
        model = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=layers,
                                      attention_head_dim=width // heads, num_attention_heads=heads,
                                      joint_attention_dim=64, caption_projection_dim=width, pooled_projection_dim=32,
                                      out_channels=4, pos_embed_max_size=16)
        return model, {"encoder_hidden_states": torch.randn(16, 16, 64, generator=g),
                       "pooled_projections": torch.randn(16, 32, generator=g)}, transformer_depths
    unet_depths = [4, 4, 3, 2, 2]  # levels kept per bucket (4 = full)
    common = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=(32, 64, 128, 128), norm_num_groups=8)
    if kind == "UNet2DModel":
        model = UNet2DModel(**common, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                            attention_head_dim=32)
        return model, {}, unet_depths
    model = UNet2DConditionModel(
        **common, cross_attention_dim=64, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    return model, {"encoder_hidden_states": torch.randn(16, 16, 64, generator=g)}, unet_depths


def bench(kind: str, batch: int, steps: int, repeats: int) -> dict:
    model, cond, depths = build(kind)
    model = model.eval()
    latent = "sample" if kind.startswith("UNet") else "hidden_states"
    channels, size = model.config.in_channels, model.config.sample_size
    x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))
    cond = {k: v[:batch] for k, v in cond.items()}
    timesteps = torch.linspace(999, 0, steps).round().long()
    extra = {"bridges": UNetExitBridges.from_model(model)} if kind.startswith("UNet") else {}
    config = EarlyExitConfig(policy=TimestepSchedule(boundaries=BOUNDARIES, depths=depths))

    def schedule():
        for t in timesteps:
            model(**{latent: x}, timestep=t.expand(batch), **cond)

    hooked = [False]

    def stock():
        if hooked[0]:
            remove_early_exit(model)
            hooked[0] = False
        schedule()

    def early():
        if not hooked[0]:
            apply_early_exit(model, config, **extra)
            hooked[0] = True
        schedule()

    with torch.no_grad():
        early()
        with record_exit_stats(model) as stats:
            schedule()
        times = interleaved_timings({"stock": stock, "early_exit": early}, repeats=repeats, warmup=1)
    if hooked[0]:
        remove_early_exit(model)
    summary = summarize_timings(times, reference="stock")
    return {
        "backbone": kind,
        "unit": "levels" if kind.startswith("UNet") else "blocks",
        "num_blocks": stats.num_blocks,
        "depths": depths,
        "block_fraction": stats.depth_fraction,
        "stock_median_s": summary["stock"]["median_s"],
        "early_exit_median_s": summary["early_exit"]["median_s"],
        "wall_clock_ratio": summary["early_exit"]["ratio_to_reference"],
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def markdown(report: dict) -> str:
    """The table of a saved report (backbones.json)."""
    lines = [f"Command: `{report.get('command', '')}`; torch {report['torch']}, {report['threads']} thread(s), batch "
             f"{report['batch']}, {report['steps']}-step schedule, {report['repeats']} interleaved rounds after a warm-up "
             f"(random weights: cost only).", "",
             "| Backbone | Fraction of blocks (levels) run | Wall-clock ratio | Stock, s per schedule |",
             "|---|---|---|---|"]
    for row in report["results"]:
        unit = " (levels)" if row["unit"] == "levels" else ""
        lines.append(f"| {row['backbone']} | {row['block_fraction']:.3f}{unit} | {row['wall_clock_ratio']:.3f} | "
                     f"{row['stock_median_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backbones", nargs="*",
                        default=["DiT", "PixArt", "SD3", "UNet2DModel", "UNet2DConditionModel"])
    parser.add_argument("--out", type=Path, default=None, help="folder for backbones.json and backbones.md")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for kind in args.backbones:
        row = bench(kind, args.batch, args.steps, args.repeats)
        rows.append(row)
        print(f"{kind:22s} {row['unit']:6s} fraction {row['block_fraction']:.3f}  wall-clock ratio "
              f"{row['wall_clock_ratio']:.3f}  (stock {row['stock_median_s']:.3f} s, "
              f"early {row['early_exit_median_s']:.3f} s "
              f"per {args.steps}-step schedule, {row['parameters_m']:.1f}M params)", flush=True)
    report = {"command": "python -m bench.backbones_bench " + shlex.join(argv),
              "batch": args.batch, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
              "torch": torch.__version__, "machine": platform.platform(), "results": rows}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "backbones.json", report, indent=2)
        atomic_write_text(args.out / "backbones.md", markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
