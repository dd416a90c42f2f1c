"""The `ee-diffusion` command line: `ee-diffusion demo | bench-engine` (see `ee-diffusion --help`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="sample digits at full depth and with early exit; write a labelled grid and print the speedup"
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (default: 25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out_dir=args.out, num_inference_steps=args.steps, seed=args.seed)


def _add_bench_engine(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench-engine", help="wall-clock of per-row compaction and hook overhead on a random 12-block DiT"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for engine_bench.json/.md")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.set_defaults(func=_run_bench_engine)


def _run_bench_engine(args: argparse.Namespace) -> int:
    from .eval import engine_bench

    argv = ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    if args.out is not None:
        argv += ["--out", str(args.out)]
    return engine_bench.main(argv)


def _add_train(subparsers) -> None:
    from .training.cli import add_train_arguments

    parser = subparsers.add_parser("train", help="train a model from an experiment config: --config experiment.json")
    add_train_arguments(parser)
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .training.cli import run_train

    return run_train(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ee-diffusion", description="Early exit for diffusers denoisers.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_demo(subparsers)
    _add_bench_engine(subparsers)
    _add_train(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
