"""The digits U-Net (depth truncation + bridges) against the shipped digits DiT, on one protocol.

Both models draw the same images: image i has class i % 10 and the initial noise of generator (seed, i);
DDIM, `--steps` steps, guidance 1.0. Every method is scored with the digits feature net against the
reference half of the digits (FID, class accuracy), its fraction of full depth (DiT: blocks; U-Net: levels)
and its wall-clock time relative to the same model at full depth (interleaved repeats of one batch, medians).

    python -m bench.unet_vs_dit --num-images 300 --out runs/unet_vs_dit

writes `results.json` and `table.md` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ee_diffusion._io import atomic_write_text
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.eval.pipeline_sampling import sample_pipeline
from ee_diffusion.eval.timing import interleaved_timings
from ee_diffusion.pipelines.conditioning import Conditioning
from ee_diffusion.schedules import StaticDepth, TimestepSchedule

from .compute import summarize_timings

DIT_METHODS = {
    "full (8 blocks)": None,
    "StaticDepth(6)": StaticDepth(6),
    "TimestepSchedule [8,7,6,5,4] @ 200/400/600/800": TimestepSchedule([200, 400, 600, 800], [8, 7, 6, 5, 4]),
}
DIGITS = Conditioning("classes", class_ids=list(range(10)))
UNET_METHODS = {
    "full (3 levels)": None,
    "StaticDepth(2)": StaticDepth(2),
    "TimestepSchedule [3,2] @ 500": TimestepSchedule([500], [3, 2]),
    "TimestepSchedule [3,2,1] @ 300/700": TimestepSchedule([300, 700], [3, 2, 1]),
}


def _config(policy: Any) -> EarlyExitConfig | None:
    return None if policy is None else EarlyExitConfig(policy=policy)


def _sample(pipe: Any, indices: list[int], policy: Any, steps: int, seed: int, batch_size: int):
    """Images i of `indices` (class i % 10, noise (seed, i)) at guidance 1.0 with `policy`, through the package's
    one sampling loop; returns the `SampleRun` (its exit statistics give the fraction of full depth)."""
    return sample_pipeline(pipe, indices, DIGITS, exit_config=_config(policy), num_inference_steps=steps,
                           guidance_scale=1.0, seed=seed, batch_size=batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unet", default=None,
                        help="EarlyExitUNetPipeline folder (default: the shipped digits U-Net)")
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--timing-repeats", type=int, default=5)
    parser.add_argument("--out", default="runs/unet_vs_dit")
    args = parser.parse_args(argv)

    from diffusers import DDIMScheduler

    from ee_diffusion.default_model import load_default_pipeline
    from .models import load_digits_unet
    from ee_diffusion.pipelines import EarlyExitUNetPipeline
    from ee_diffusion.eval.features import load_feature_net
    from ee_diffusion.eval.quality import QualityEvaluator, real_images

    torch.manual_seed(0)
    evaluator = QualityEvaluator(load_feature_net("digits"), real_images("digits")[0])
    floor_images, floor_labels = real_images("digits", "floor")
    floor = evaluator.score(floor_images[: args.num_images], floor_labels[: args.num_images], kid=False)
    indices = list(range(args.num_images))
    pipe = load_default_pipeline()
    # The shipped DiT's folder carries its operating point's solver; this comparison is at DDIM for both models.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    unet_pipe = load_digits_unet() if args.unet is None else EarlyExitUNetPipeline.from_pretrained(args.unet)
    unet_pipe.set_progress_bar_config(disable=True)
    params = {
        "DiT": sum(p.numel() for p in pipe.transformer.parameters()),
        "U-Net": sum(p.numel() for p in unet_pipe.unet.parameters())
        + sum(p.numel() for p in unet_pipe.exit_bridges.parameters()),
    }
    rows: list[dict[str, Any]] = []
    timed: dict[str, Any] = {}
    timing_batch = list(range(min(args.batch_size, args.num_images)))
    for backbone, model, methods in (("DiT", pipe, DIT_METHODS), ("U-Net", unet_pipe, UNET_METHODS)):
        for name, policy in methods.items():
            started = time.perf_counter()
            run = _sample(model, indices, policy, args.steps, args.seed, args.batch_size)
            seconds = time.perf_counter() - started
            score = evaluator.score(run.images, run.labels, kid=False)
            rows.append({"backbone": backbone, "method": name,
                         "policy": None if policy is None else policy.to_dict(),
                         "depth_fraction": run.extra["exit_stats"].depth_fraction, "generate_s": seconds, **score})
            timed[f"{backbone}/{name}"] = (lambda m=model, p=policy: _sample(
                m, timing_batch, p, args.steps, args.seed, args.batch_size))
    times = interleaved_timings(timed, repeats=args.timing_repeats, warmup=1)
    for backbone, methods in (("DiT", DIT_METHODS), ("U-Net", UNET_METHODS)):
        keys = [f"{backbone}/{m}" for m in methods]
        summary = summarize_timings({k: times[k] for k in keys}, reference=keys[0])
        for row in rows:
            key = f"{row['backbone']}/{row['method']}"
            if key in summary:
                row["median_s"] = summary[key]["median_s"]
                row["wall_ratio"] = summary[key]["ratio_to_reference"]
    result = {
        "command": "python -m bench.unet_vs_dit " + shlex.join(
            sys.argv[1:] if argv is None else argv),
        "protocol": {"num_images": args.num_images, "steps": args.steps, "scheduler": "DDIM", "guidance_scale": 1.0,
                     "seed": args.seed, "timing_batch": len(timing_batch), "timing_repeats": args.timing_repeats,
                     "torch_threads": torch.get_num_threads(), "unet": str(args.unet or "shipped digits U-Net")},
        "parameters": params,
        "real_floor": floor,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    atomic_write_text(out / "table.md", table)
    print(table)
    return 0


def markdown_table(result: dict[str, Any]) -> str:
    protocol = result["protocol"]
    lines = [
        f"Command: `{result.get('command', '')}`; {protocol['num_images']} images, {protocol['scheduler']} "
        f"{protocol['steps']} steps, {protocol['torch_threads']} thread(s).", "",
        "| backbone | method | depth fraction | FID | accuracy | wall-clock vs own full | s per batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['backbone']} | {row['method']} | {row['depth_fraction']:.3f} | {row['fid']:.2f} | "
            f"{row.get('accuracy', float('nan')):.3f} | {row.get('wall_ratio', float('nan')):.2f} | "
            f"{row.get('median_s', float('nan')):.2f} |"
        )
    floor = result["real_floor"]
    lines.append(f"| real digits (floor) | held-out half | - | {floor['fid']:.2f} | {floor.get('accuracy', float('nan')):.3f} | - | - |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
