"""How far CachedTailResidual's samples land from the full model's, by forecast order, on the pre-trained digits DiT.

python -m bench.scripts.forecast.deviation --out docs/tail-cache/forecast_deviation.json

Same noise and labels for every method; DDIM at several step counts. Per (steps, skip rule, order): the relative
RMS distance of the final samples to the full model's, and the fraction of block evaluations that ran. Skip rules:
`every_2nd` / `every_3rd` (a row skips whenever `max_cached_calls` = 1 / 2 lets it: a fixed cadence, the same
for every order) and `residual_<tau>` (the default criterion at threshold tau: the cadence follows the rows).
A distance, not a quality score: FID at matched wall-clock is the full benchmark's business.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import diffusers
import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel

from ee_diffusion import EarlyExitConfig, apply_early_exit, record_exit_stats, remove_early_exit
from bench.models import PRETRAINED_MODEL_DIR
from ee_diffusion.schedules import CachedTailResidual

RULES = {"every_2nd": {"threshold": 1e9, "max_cached_calls": 1}, "every_3rd": {"threshold": 1e9, "max_cached_calls": 2},
         "residual_0.2": {"threshold": 0.2}, "residual_0.5": {"threshold": 0.5}}


@torch.no_grad()
def sample(model: torch.nn.Module, scheduler: DDIMScheduler, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A plain DDIM loop from noise `x` (B, 1, 8, 8); returns the final samples."""
    for t in scheduler.timesteps:
        eps = model(x, timestep=t.expand(x.shape[0]), class_labels=labels).sample
        x = scheduler.step(eps, t, x).prev_sample
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[15, 25, 50])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = DiTTransformer2DModel.from_pretrained(PRETRAINED_MODEL_DIR / "transformer").eval()
    config = DDIMScheduler.from_pretrained(PRETRAINED_MODEL_DIR / "scheduler").config
    x = torch.randn(args.rows, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(args.rows) % 10
    results = {}
    for steps in args.steps:
        scheduler = DDIMScheduler.from_config(config)
        scheduler.set_timesteps(steps)
        full = sample(model, scheduler, x, labels)
        for rule, options in RULES.items():
            for order in (0, 1, 2):
                apply_early_exit(model, EarlyExitConfig(CachedTailResidual(forecast_order=order, **options)))
                with record_exit_stats(model) as stats:
                    out = sample(model, scheduler, x, labels)
                remove_early_exit(model)
                distance = ((out - full).pow(2).mean() / full.pow(2).mean()).sqrt().item()
                results[f"ddim{steps}|{rule}|order{order}"] = {
                    "relative_rms_distance": round(distance, 5), "block_fraction": round(stats.depth_fraction, 4)}
                print(f"ddim{steps} {rule} order {order}: {results[f'ddim{steps}|{rule}|order{order}']}", flush=True)
    report = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "model": str(PRETRAINED_MODEL_DIR.name), "rows": args.rows, "threads": args.threads,
              "torch": torch.__version__, "diffusers": diffusers.__version__, "machine": platform.machine(),
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
