"""`python -m bench`: the benchmarks on our own models, from the repository root (not installed with the package).

`python -m bench bench | bench-engine | bench-shapes | bench-caches | bench-compile | publish | calibrate | train`
(see `python -m bench --help`); `calibrate` is `ee-diffusion calibrate` with our models' settings (`models.SETTINGS`)
beside the package's, `train` is `ee-diffusion train` with our glyphs set registered (`glyphs.py`). The GPU check, the backbones' cost and the U-Net against the DiT run as modules of their own
(`python -m bench.gpu_check`, `bench.backbones_bench`, `bench.unet_vs_dit`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ee_diffusion._command_line import add_debug, int_at_least, run_command
from ee_diffusion.cli import add_calibrate, add_run_arguments, start_run

#: The settings of `bench` and `calibrate --model` (`models.SETTINGS`), named here so that `--help` imports no torch.
SETTING_NAMES = ("digits", "glyphs", "digits-deep", "digits-deep-pretrained")


def _add_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="FID, speed and compute of every method and baseline on our models (a preset); writes "
                      "report.json/.md and pareto.png")
    parser.add_argument("--preset", choices=("ci", "full"), default="ci")
    add_run_arguments(parser)
    parser.add_argument("--settings", nargs="+", choices=SETTING_NAMES, default=None,
                        help="override the preset's settings")
    parser.add_argument("--digits-model", default=None, help="pipeline folder (default: the shipped digits model)")
    parser.add_argument("--glyphs-model", default=None, help="pipeline folder (default: bench/assets/glyphs-dit)")
    parser.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from .presets import run

    start_run(args)
    paths = {k: v for k, v in (("digits", args.digits_model), ("glyphs", args.glyphs_model)) if v}
    run(args.preset, args.out, settings=args.settings, model_paths=paths, command=args.command_line)
    return 0


def _add_bench_engine(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench-engine", help="wall-clock of per-row compaction and hook overhead on a random 12-block DiT"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for engine_bench.json/.md")
    parser.add_argument("--batch-size", type=int_at_least(1), default=64)
    parser.add_argument("--repeats", type=int_at_least(1), default=30)
    parser.set_defaults(func=_run_bench_engine)


def _run_bench_engine(args: argparse.Namespace) -> int:
    from ee_diffusion._io import check_output_folder

    from . import engine_bench

    if args.out is not None:
        check_output_folder(args.out, "--out")  # before the timing, which takes minutes
    argv = ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    if args.out is not None:
        argv += ["--out", str(args.out)]
    return engine_bench.main(argv)


def _add_benchmark(subparsers, name: str, module: str, help: str, run) -> None:
    """A benchmark command whose module (`bench.<module>`) declares its own arguments."""
    parser = subparsers.add_parser(name, help=help)
    importlib.import_module(f"bench.{module}").add_arguments(parser)
    parser.set_defaults(func=run)


def _run_bench_shapes(args: argparse.Namespace) -> int:
    from ee_diffusion._io import check_output_folder

    from .shapes_bench import run

    check_output_folder(args.out, "--out")  # before the timing, which takes minutes
    run(args, args.command_line)
    return 0


def _run_bench_caches(args: argparse.Namespace) -> int:
    from .caches_bench import main

    report = main(args, args.command_line)
    print(f"wrote {args.out / 'report.json'}, report.md, pareto.png")
    for family, summary in report["summary"].items():
        print(f"{family}: forecast wins somewhere: {summary['forecast_wins_somewhere']}; never loses at batch 1: "
              f"{summary['forecast_never_loses_at_batch_1']}")
    return 0


def _run_bench_compile(args: argparse.Namespace) -> int:
    from ee_diffusion._command_line import check_device
    from ee_diffusion._io import check_output_folder

    from .compile_bench import main, markdown

    # Checked before the model loads and compiles (minutes).
    for flag, value in (("--batch", args.batch), ("--repeats", args.repeats), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be an integer >= 1, got {value}")
    check_device(args.device)
    check_output_folder(args.out, "--out")
    print(markdown(main(args, args.command_line)), end="")
    return 0


def _add_publish(subparsers) -> None:
    parser = subparsers.add_parser(
        "publish", help="write a bench report's recommended operating point, evaluation.json and TRAINING.md into a "
                        "pipeline folder; or, with --search, a confirmed operating-point search's point")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--report", type=Path, help="report.json of `python -m bench bench` (with --setting)")
    source.add_argument("--search", type=Path, help="the JSON of `calibrate --kind operating-point` (into a folder "
                                                    "already published from a report)")
    parser.add_argument("--setting", help="the report's setting to publish (e.g. digits)")
    parser.add_argument("--model", type=Path, required=True, help="the pipeline folder to write into")
    parser.set_defaults(func=_run_publish)


def _run_publish(args: argparse.Namespace) -> int:
    from .publish import publish, publish_search

    if not (args.model / "model_index.json").is_file():
        raise FileNotFoundError(f"--model {str(args.model)!r} is not a pipeline folder (no model_index.json in it)")
    if args.search is not None:
        if args.setting is not None:
            raise ValueError(f"--setting {args.setting!r} picks a report's setting; --search publishes the search's "
                             f"one point: leave --setting out")
        evaluation = publish_search(args.search, args.model, search_ref=str(args.search))
    elif args.setting is None:
        raise ValueError("publish --report needs --setting (the report's setting to publish, e.g. digits)")
    else:
        evaluation = publish(args.report, args.model, args.setting, report_ref=str(args.report))
    point = evaluation["operating_point"]
    print(f"{args.model}: {point['scheduler']}, {point['num_inference_steps']} steps, guidance "
          f"{point['guidance_scale']}, exit config {point['exit_config']}\n{point['measured_in']}\n"
          f"{evaluation['verdict']}")
    return 0


def _add_train(subparsers) -> None:
    from ee_diffusion.training.cli import add_train_arguments, run_train

    parser = subparsers.add_parser("train", help="`ee-diffusion train` with the glyphs dataset registered")
    add_train_arguments(parser)
    parser.set_defaults(func=run_train)


def _settings() -> dict:
    from .models import SETTINGS

    return SETTINGS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="The benchmarks on our own models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_bench(subparsers)
    _add_bench_engine(subparsers)
    _add_publish(subparsers)
    add_calibrate(subparsers, SETTING_NAMES, _settings)
    _add_train(subparsers)
    _add_benchmark(subparsers, "bench-shapes", "shapes_bench", "wall-clock of early exit at DiT-XL/2, PixArt-alpha "
                   "and SD3-medium widths (random weights)", _run_bench_shapes)
    _add_benchmark(subparsers, "bench-caches", "caches_bench", "per-row tail caches (reuse and forecast) against "
                   "diffusers' caches and cache-dit at matched speed (wall-clock and DiT-XL/2-width cost), batch 1, 8 "
                   "and 64, on a pre-trained model", _run_bench_caches)
    _add_benchmark(subparsers, "bench-compile", "compile_bench", "planned exit policies under torch.compile "
                   "(inductor): graph breaks, equality with eager and wall-clock, on a shipped model", _run_bench_compile)
    add_debug(parser, subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: the process's arguments); returns the exit status."""
    return run_command(build_parser(), sys.argv[1:] if argv is None else list(argv))
