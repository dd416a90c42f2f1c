"""The `--pipeline` flags of `ee-diffusion bench` (the user's model, data and feature networks; `pipeline_bench.py`).

`add_pipeline_arguments` derives the choices, defaults and integer ranges from `BenchConfig`, so the flags and the
config cannot drift apart; `run_pipeline_bench` turns the parsed flags into a `BenchConfig` and runs it. Bad input
(a `ValueError` from the config or from `bench_prepare.prepare`, raised before any sampling) ends the command in
the command line's error boundary (`ee_diffusion.cli.run_command`): its message and exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from .._command_line import check_device, int_at_least, number_in, warn_half_on_cpu
from .bench_config import DTYPES, INT_LOWS, SOLVER_CHOICES, BenchConfig

_DEFAULTS = {f.name: f.default for f in fields(BenchConfig)}


def _count(name: str) -> Callable[[str], int]:
    """The argparse type of the integer field `name`: refused below its least value, naming the flag."""
    return int_at_least(INT_LOWS[name])


def _add_count(group: Any, name: str, help: str | None = None) -> None:
    """The flag of the integer field `name` (`--num-images` for `num_images`), with its least value and default."""
    group.add_argument(f"--{name.replace('_', '-')}", type=_count(name), default=_DEFAULTS[name], help=help)


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `bench --pipeline FOLDER` (each one a `BenchConfig` field)."""
    group = parser.add_argument_group(
        "your own model (--pipeline)", "benchmark any supported pipeline folder on your images (nothing downloaded)")
    group.add_argument("--pipeline", required=True, metavar="FOLDER",
                       help="a local pipeline folder (DiT, PixArt-alpha, SD3, SD, DDPM or ours)")
    group.add_argument("--real", default=None, metavar="DIR",
                       help="real images (resized and center-cropped to the model's resolution)")
    group.add_argument("--real-stats", nargs="+", default=[], metavar="FILE",
                       help="precomputed real statistics (written by an earlier run as OUT/real-stats-*.safetensors)")
    group.add_argument("--features", nargs="+", default=list(_DEFAULTS["features"]), metavar="NET",
                       help="feature networks: inception, clip, digits, digits-pool or a saved net (default: inception)")
    group.add_argument("--inception-weights", default=None, metavar="PATH",
                       help="the FID Inception-v3 weights file (pt_inception-2015-12-05-6726825d.pth)")
    _add_count(group, "inception_resolution", "Inception input side (default 299, what the field reports)")
    group.add_argument("--clip", default=None, metavar="FOLDER", help="a local transformers CLIP folder")
    group.add_argument("--methods", nargs="+", default=[], metavar="SPEC",
                       help="steps:K, SOLVER:K (e.g. dpmpp:10), static:D, ase:released, fbc:T, taylorseer:I, sea:T "
                            "or exit-config .json files, each optionally @STEPS or @SOLVER:STEPS")
    _add_count(group, "steps", "the reference's sampling steps")
    group.add_argument("--frontier-steps", nargs="+", type=_count("steps"), default=[],
                       help="fewer-steps points (default: 40%%, 60%%, 80%% of --steps)")
    group.add_argument("--no-match-frontier", action="store_true",
                       help="do not add fewer-steps points at the other methods' block costs")
    group.add_argument("--solver", choices=SOLVER_CHOICES, default=_DEFAULTS["solver"],
                       help="the reference's solver: the pipeline's own scheduler, or DDIM / DPM-Solver++ / UniPC "
                            "built from its config (on flow matching: DPM-Solver++ / UniPC in their flow modes)")
    group.add_argument("--classes", nargs="+", default=[], help="class ids or names (default: every class)")
    group.add_argument("--prompts", default=None, metavar="FILE", help="one prompt per line, or JSONL with a seed")
    _add_count(group, "num_images", "images per method")
    group.add_argument("--guidance", type=number_in(0.0, low_open=False), default=None,
                       help="guidance scale (default: the pipeline's)")
    _add_count(group, "seed")
    _add_count(group, "batch_size")
    _add_count(group, "shard_size", "images per cached shard")
    group.add_argument("--device", default=_DEFAULTS["device"], help="cpu, cuda, cuda:1, ...")
    group.add_argument("--dtype", choices=tuple(DTYPES), default=_DEFAULTS["dtype"])
    group.add_argument("--cache-dir", default=None, help="where generated shards are cached (default: OUT/samples)")
    _add_count(group, "bootstrap", "bootstrap resamples")
    _add_count(group, "timing_repeats", "interleaved timing rounds (0: no wall-clock)")
    group.add_argument("--timing-batch", type=_count("timing_batch"), default=None,
                       help="images per timed call (default: --batch-size)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The `BenchConfig` of the parsed flags: each flag fills the field of its name (`__post_init__` makes lists
    tuples), but `--guidance` (guidance_scale) and `--no-match-frontier`."""
    values = {f.name: getattr(args, f.name) for f in fields(BenchConfig) if hasattr(args, f.name)}
    return BenchConfig(**values, guidance_scale=args.guidance, match_frontier=not args.no_match_frontier)


def run_pipeline_bench(args: argparse.Namespace) -> int:
    """`bench --pipeline`: 0 when the report is written (bad input raises, before any sampling)."""
    from .._io import check_output_folder
    from .pipeline_bench import run

    if args.cache_dir is not None:
        check_output_folder(args.cache_dir, "--cache-dir")
    check_device(args.device)
    warn_half_on_cpu(args.dtype, args.device)
    report = run(config_from_args(args), args.out, command=args.command_line)
    if report is not None:
        for entry in report["settings"]:
            print(f"{entry['setting']}: {entry['decisions']['verdict']}")
        print(f"wrote {args.out / 'report.json'}, report.md, pareto.png")
    return 0
