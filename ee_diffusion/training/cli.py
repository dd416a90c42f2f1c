"""`ee-diffusion train --config experiment.json --output-dir runs/x`: run an experiment config.

What is trained lives in the JSON `ExperimentConfig`; how this run executes (where, resume, CPU) are flags.
Also runnable as `python -m ee_diffusion.training.cli --config ...` (and under `accelerate launch`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `train` flags to `parser` (a subcommand parser or a fresh one)."""
    parser.add_argument("--config", required=True, help="experiment config JSON (ExperimentConfig)")
    parser.add_argument("--output-dir", required=True, help="folder for experiment.json, log.jsonl, checkpoints, pipeline/")
    parser.add_argument("--resume", default=None, help='checkpoint folder to resume from, or "latest"')
    parser.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    parser.add_argument("--init-from", default=None, help="override model.init_from (a pipeline folder)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when an accelerator is present")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Run `train` with parsed arguments; returns the process exit code."""
    from .config import ExperimentConfig
    from .trainer import train

    config = ExperimentConfig.load(args.config)
    data = config.to_dict()
    if args.max_steps is not None:
        data["train"]["max_steps"] = args.max_steps
    if args.init_from is not None:
        data["model"]["init_from"] = args.init_from
    config = ExperimentConfig.from_dict(data)
    trainer = train(config, args.output_dir, resume=args.resume, cpu=args.cpu, progress=not args.no_progress)
    if trainer.accelerator.is_main_process:
        print(f"trained {trainer.step} steps; pipeline saved to {trainer.output_dir / 'pipeline'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="ee-diffusion train", description=__doc__))
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
