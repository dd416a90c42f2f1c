"""Per-row cached tail residuals against diffusers' FirstBlockCache, on a plain pre-trained model.

Setting: the shipped digits DiT after pre-training only (`load_pretrained_pipeline()`: no exit heads, no
layer-wise fine-tuning), DDIM, no guidance, the same initial noise for every method. Methods:

- `full`: the stock model;
- `ours@τ`: `CachedTailResidual(threshold=τ)` - per-row decisions and per-row caches;
- `fbc@τ`: diffusers' `FirstBlockCache(threshold=τ)` on the same transformer - one decision for the batch
  (DiT opens no cache context, so one is set around every pipeline call; see `eval/baselines.py`).

Quality (FID, KID, class accuracy with the shipped digits feature network; floor = real vs real at the same
count; spread = full model, two seeds) is measured at the batch sizes in `--quality-batch-sizes`; FirstBlockCache's
images depend on the batch size, ours do not (per row). Wall-clock per image is measured at every batch size
in `--batch-sizes`, interleaved, medians, as a ratio to the full model at the same batch size.

Run: `python -m ee_diffusion.benchmarks.tail_cache_bench --out bench_out/tail_cache`
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._io import atomic_write_json, atomic_write_text
from ..config import EarlyExitConfig
from ..eval.baselines import CacheBaseline, diffusers_cache
from ..eval.features import load_feature_net
from ..eval.quality import QualityEvaluator, real_images
from ..eval.sampling import generate
from ..eval.timing import interleaved_timings
from ..schedules import CachedTailResidual

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)


def _methods(thresholds: tuple[float, ...], join_ratios: tuple[float, ...] = (),
             max_cached_calls: int = 3) -> dict[str, tuple[EarlyExitConfig | None, float | None]]:
    """name -> (exit config, FirstBlockCache threshold). `ours+join{r}@τ` sets join_threshold = r * τ."""
    methods: dict[str, tuple[EarlyExitConfig | None, float | None]] = {"full": (None, None)}
    for tau in thresholds:
        methods[f"ours@{tau}"] = (
            EarlyExitConfig(policy=CachedTailResidual(threshold=tau, max_cached_calls=max_cached_calls)), None)
        for r in join_ratios:
            policy = CachedTailResidual(threshold=tau, max_cached_calls=max_cached_calls, join_threshold=r * tau)
            methods[f"ours+join{r}@{tau}"] = (EarlyExitConfig(policy=policy), None)
        methods[f"fbc@{tau}"] = (None, tau)
    return methods


def _sample(pipe, indices, config, fbc, steps, batch_size, seed=0):
    cache = CacheBaseline("first_block_cache", {"threshold": fbc}) if fbc is not None else None
    wrapper = (lambda: diffusers_cache(pipe.transformer, cache, pipe.scheduler, steps)) if cache is not None else None
    return generate(pipe, indices, exit_config=config, num_inference_steps=steps, guidance_scale=1.0, seed=seed,
                    batch_size=batch_size, call_wrapper=wrapper)


def run(num_images: int = 500, steps: int = 25, batch_sizes: tuple[int, ...] = (1, 8, 64),
        quality_batch_sizes: tuple[int, ...] = (8, 64), thresholds: tuple[float, ...] = THRESHOLDS,
        repeats: int = 5, timing_images: int = 8, join_ratios: tuple[float, ...] = (), max_cached_calls: int = 3) -> dict:
    from ..default_model import load_pretrained_pipeline

    pipe = load_pretrained_pipeline()
    pipe.set_progress_bar_config(disable=True)
    num_blocks = pipe.transformer.config.num_layers
    methods = _methods(thresholds, join_ratios, max_cached_calls)
    real, _ = real_images("digits", "reference")
    evaluator = QualityEvaluator(load_feature_net("digits"), real)
    floor_images, _ = real_images("digits", "floor")
    count = min(num_images, floor_images.shape[0])
    floor = evaluator.score(floor_images[:count], kid=False)["fid"]

    indices = range(num_images)
    quality: dict[str, dict] = {}
    # Per-row decisions make `ours` independent of the batch size, except with join_threshold.
    jobs = [(bs, name) for bs in quality_batch_sizes for name in methods
            if not (name.startswith("ours@") and bs != max(quality_batch_sizes))]
    for bs, name in tqdm(jobs, desc="quality"):
        config, fbc = methods[name]
        run_ = _sample(pipe, indices, config, fbc, steps, bs)
        row = evaluator.score(run_.images, run_.labels)
        row["block_fraction"] = run_.block_evals / (run_.model_rows * num_blocks)
        quality[f"{name}|bs={bs}"] = row
    spread_run = _sample(pipe, indices, None, None, steps, max(quality_batch_sizes), seed=1)
    seed_spread = abs(evaluator.score(spread_run.images, kid=False)["fid"]
                      - quality[f"full|bs={max(quality_batch_sizes)}"]["fid"])

    speed: dict[str, dict] = {}
    for bs in tqdm(batch_sizes, desc="speed"):
        chunk = range(max(bs, timing_images))  # batch 1: several calls, so one timing is not a single call
        calls = {name: (lambda c=cfg, f=fbc: _sample(pipe, chunk, c, f, steps, bs)) for name, (cfg, fbc) in methods.items()}
        times = interleaved_timings(calls, repeats=repeats, warmup=1)
        full = statistics.median(times["full"])
        for name, values in times.items():
            speed[f"{name}|bs={bs}"] = {
                "seconds_per_image": statistics.median(values) / len(chunk),
                "ratio_to_full": statistics.median([v / f for v, f in zip(values, times["full"])]),
                "speedup": full / statistics.median(values),
            }
    return {
        "setting": {"model": "digits-dit-pretrained (no heads, no layer-wise fine-tuning)", "scheduler": "DDIM",
                    "steps": steps, "guidance_scale": 1.0, "num_images": num_images, "num_blocks": num_blocks,
                    "batch_sizes": list(batch_sizes), "quality_batch_sizes": list(quality_batch_sizes),
                    "repeats": repeats, "timing_images": timing_images, "torch_threads": torch.get_num_threads(),
                    "join_ratios": list(join_ratios), "max_cached_calls": max_cached_calls},
        "floor_fid": floor,
        "seed_spread_fid": seed_spread,
        "quality": quality,
        "speed": speed,
        "configs": {name: (cfg.to_dict() if cfg is not None else {"first_block_cache_threshold": fbc})
                    for name, (cfg, fbc) in methods.items()},
    }


def markdown(report: dict) -> str:
    s = report["setting"]
    lines = [
        f"Command: `{report.get('command', '')}`; {report.get('threads', '?')} thread(s), {report.get('wall_seconds', 0):.0f} s.",
        "",
        f"Plain pre-trained digits DiT, DDIM {s['steps']} steps, {s['num_images']} images. FID floor (real vs real): "
        f"{report['floor_fid']:.2f}; seed spread of the full model: {report['seed_spread_fid']:.2f}.",
        "",
        "| method | batch | FID | accuracy | blocks run | wall-clock vs full (bs " + ", ".join(map(str, s["batch_sizes"])) + ") |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, row in report["quality"].items():
        name, bs = key.split("|bs=")
        shown_bs = "any" if name.startswith("ours@") else bs
        ratios = ", ".join(f"{report['speed'][f'{name}|bs={b}']['ratio_to_full']:.2f}" for b in s["batch_sizes"])
        lines.append(f"| {name} | {shown_bs} | {row['fid']:.2f} | {row.get('accuracy', float('nan')):.3f} | "
                     f"{row['block_fraction']:.2f} | {ratios} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--quality-batch-sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--join-ratios", type=float, nargs="*", default=[],
                        help="also run ours with join_threshold = ratio * threshold (rows due soon join the tail)")
    parser.add_argument("--max-cached-calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 is steadier on a shared machine); default: torch's choice")
    parser.add_argument("--out", type=Path, default=Path("bench_out/tail_cache"))
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = run(args.num_images, args.steps, tuple(args.batch_sizes), tuple(args.quality_batch_sizes),
                 tuple(args.thresholds), args.repeats, join_ratios=tuple(args.join_ratios),
                 max_cached_calls=args.max_cached_calls)
    report["wall_seconds"] = time.perf_counter() - start
    report["command"] = "python -m ee_diffusion.benchmarks.tail_cache_bench " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    report["threads"] = torch.get_num_threads()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "tail_cache.json", report, indent=2)
    table = markdown(report)
    atomic_write_text(args.out / "tail_cache.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
