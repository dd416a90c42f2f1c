"""The `ee-diffusion` command line: `ee-diffusion demo | prepare-latents | train | bench | calibrate` (see
`ee-diffusion --help`). The benchmarks on our own models (`bench-caches`, `bench-shapes`, ...) are the repository's
`python -m bench`, which is not installed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ._command_line import add_debug, check_device, int_at_least, number_in, run_command, warn_half_on_cpu
from ._validation import CALL_OPTIONS

if TYPE_CHECKING:
    from .default_model import Setting

#: The settings of `calibrate --model` (`ee_diffusion.default_model.SETTINGS`), named here so that `--help` imports
#: no torch.
SETTING_NAMES = ("digits",)
#: The solvers the operating-point search offers (`ee_diffusion.eval.solvers.SEARCH_SOLVERS`), named here too.
SEARCH_SOLVER_NAMES = ("ddim", "dpmpp", "unipc")


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="sample digits at full depth and with early exit; write a labelled grid and print the speedup"
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--steps", type=int_at_least(1), default=25, help="sampling steps (default: 25)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=64, help="rows per batch (default: 64)")
    parser.add_argument("--seed", type=int_at_least(0), default=0)
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ._io import check_output_folder
    from .demo import run_demo

    check_output_folder(args.out, "--out")
    lines = run_demo(out_dir=args.out, num_inference_steps=args.steps, seed=args.seed, batch_size=args.batch_size)
    print("\n".join(lines))
    return 0


def _add_train(subparsers) -> None:
    from .training.cli import add_train_arguments, epilog

    parser = subparsers.add_parser("train", help="train a model from an experiment config: --config experiment.json",
                                   epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .training.cli import run_train

    return run_train(args)


def _add_prepare_latents(subparsers) -> None:
    from .training.cli import add_pipeline_arguments, epilog

    parser = subparsers.add_parser(
        "prepare-latents", help="encode a stock pipeline run's images and prompts into its latent cache (resumable)",
        epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_arguments(parser)
    parser.set_defaults(func=_run_prepare_latents)


def _run_prepare_latents(args: argparse.Namespace) -> int:
    from .training.cli import run_prepare

    return run_prepare(args)


def _add_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="FID, speed and compute of every method and baseline on your pipeline folder and images; writes "
                      "report.json/.md and pareto.png")
    add_run_arguments(parser)
    from .eval.bench_cli import add_pipeline_arguments

    add_pipeline_arguments(parser)
    parser.set_defaults(func=_run_bench)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """`--out` and `--threads` of a bench command (`start_run` applies the threads)."""
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--threads", type=int_at_least(1), default=2,
                        help="torch CPU threads, fixed for the whole run and recorded in the report (default: 2)")


def start_run(args: argparse.Namespace) -> None:
    """Fix torch's CPU threads for the whole run (`--threads`) and refuse an `--out` that is not a folder."""
    import torch

    from ._io import check_output_folder

    check_output_folder(args.out, "--out")
    torch.set_num_threads(args.threads)


def _run_bench(args: argparse.Namespace) -> int:
    from .eval.bench_cli import run_pipeline_bench

    start_run(args)
    return run_pipeline_bench(args)


def add_calibrate(subparsers, setting_names: tuple[str, ...] = SETTING_NAMES,
                  settings: Callable[[], dict[str, Setting]] | None = None) -> None:
    """The `calibrate` command; `--model` takes a pipeline folder or one of `setting_names`, which `settings()`
    (default: the package's `default_model.SETTINGS`) maps to their `Setting`s when the command runs."""
    from .calibration.run import KINDS

    parser = subparsers.add_parser(
        "calibrate", help="choose an exit policy for a compute budget, a quality tolerance or a PSNR goal, on our "
                          "models or any supported pipeline folder; writes an EarlyExitConfig JSON (operating-point: "
                          "the search JSON, and with --save-to a pipeline folder that runs the found point)")
    parser.add_argument("--model", default="digits",
                        help=f"a setting ({', '.join(setting_names)}) or a local pipeline folder of a "
                             "supported class (ours, DiTPipeline, PixArtAlphaPipeline, StableDiffusion3Pipeline, "
                             "FluxPipeline, ChromaPipeline, QwenImagePipeline, SanaPipeline, CogView4Pipeline, "
                             "AuraFlowPipeline, HunyuanDiTPipeline, HiDreamImagePipeline, Lumina2Pipeline, "
                             "StableDiffusionPipeline, DDPMPipeline)")
    parser.add_argument("--kind", choices=(*KINDS, "operating-point"), default="schedule",
                        help="schedule: a TimestepSchedule (layer-wise-trained models); thresholds and distil: "
                             "DeeDiff heads; tail-cache: the training-free residual-change threshold (stock models); "
                             "block-forecast: the training-free BlockForecast interval, order and window at the "
                             "pipeline's scheduler and --steps; "
                             "operating-point: solver, steps and exit config searched together (benchmark settings), "
                             "confirmed on held-out seeds")
    goal = parser.add_mutually_exclusive_group(required=True)
    goal.add_argument("--budget", type=number_in(0.0, 1.0),
                      help="fraction of full-depth block evaluations, in (0, 1] (operating-point: of the reference's "
                           "blocks, the reference being full depth at --reference-steps DDIM steps)")
    goal.add_argument("--tolerance", type=number_in(0.0, low_open=False),
                      help="schedule: allowed sample deviation, as a fraction of the typical distance between two "
                           "full-model samples; operating-point: relative FID tolerance of unchanged quality (the "
                           "paired dFID interval against the reference includes 0, or lies below +TOLERANCE x the "
                           "reference FID; 0.1 is the benchmark's)")
    goal.add_argument("--min-psnr", type=number_in(0.0, 100.0, low_open=False),
                      help="schedule, tail-cache and block-forecast: mean per-image PSNR (dB) against the full "
                           "model's images; operating-point: against the reference's image from the same noise, "
                           "needing no real images or feature networks (--real, --real-stats, --features refused)")
    conditioning = parser.add_mutually_exclusive_group()
    conditioning.add_argument("--classes", nargs="+", help="class ids or names of the calibration images "
                                                           "(class-conditional pipelines; ours default to all)")
    conditioning.add_argument("--prompts", type=Path, help="prompt file (text-to-image pipelines): one prompt per "
                                                           "line, or JSONL {\"prompt\": ..., \"seed\": ...}")
    parser.add_argument("--heads", type=Path, default=None,
                        help="an UncertaintyHeads folder for a stock pipeline (thresholds, distil)")
    parser.add_argument("--threshold", type=number_in(0.0, 1.0), default=0.9,
                        help="distil: the DeeDiff threshold to observe")
    parser.add_argument("--forecast-orders", type=int, nargs="+", choices=(0, 1, 2), default=None,
                        help="forecast orders to try, the cheapest that meets the goal wins (default: tail-cache and "
                             "the search's tail thresholds 0 1; block-forecast 1 2; the search's BlockForecasts 1)")
    parser.add_argument("--forecast-intervals", type=int_at_least(2), nargs="+", default=None,
                        help="BlockForecast intervals to try (a row computes every interval-th call; default: "
                             "block-forecast 2 3 4; operating-point: none)")
    parser.add_argument("--forecast-windows", type=_forecast_window, nargs="+", default=None, metavar="W[L]",
                        help="BlockForecast windows: the first W timesteps computed, L: the last one too (default: "
                             "block-forecast 1 2 2L 3L; operating-point 2L)")
    parser.add_argument("--verify-thresholds", type=number_in(0.0), nargs="+", default=None, metavar="TAU",
                        help="BlockForecast's per-row change criterion: these thresholds are tried beside none (a "
                             "row computes when its forecast of block 0's attention misses by more than TAU)")
    parser.add_argument("--forecast-computes", type=int_at_least(1), nargs="+", default=None, metavar="K",
                        help="block-forecast: also search where K timesteps are computed (any placement, the first "
                             "always; a local search by PSNR against the full model), for each K given")
    parser.add_argument("--solver", choices=("ddim", "dpmpp"), default=None,
                        help="sample with this solver, made from the pipeline's scheduler config (default: the "
                             "pipeline's own scheduler; not operating-point, which takes --solvers)")
    parser.add_argument("--images", type=int_at_least(2), default=40,
                        help="calibration images (seeds disjoint from bench)")
    parser.add_argument("--steps", type=int_at_least(1), default=None,
                        help="sampling steps (default: the pipeline's operating point, else 20)")
    parser.add_argument("--guidance", type=number_in(0.0, low_open=False), default=None,
                        help="guidance scale (default: the operating point's, else the pipeline's default)")
    parser.add_argument("--buckets", type=int_at_least(1), default=4, help="timestep buckets of the schedule")
    size = parser.add_argument_group("size (default: the pipeline's own; video pipelines default to hundreds of "
                                     "pixels and dozens of frames)")
    for flag in (f"--{name.replace('_', '-')}" for name in CALL_OPTIONS):
        size.add_argument(flag, type=int_at_least(1), default=None,
                          help=f"{flag[2:].replace('-', ' ')} of every pipeline call; recorded, and a loaded "
                               f"result's default")
    parser.add_argument("--batch-size", type=int_at_least(1), default=16, help="images per pipeline call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--out", type=Path, default=Path("policy.json"),
                        help="the calibration JSON (operating-point: the whole search)")
    search = parser.add_argument_group("operating-point")
    search.add_argument("--solvers", nargs="+", choices=SEARCH_SOLVER_NAMES, default=None,
                        help="solvers built from the pipeline's scheduler config (default: ddim dpmpp; a "
                             "flow-matching folder: its own scheduler, or dpmpp unipc in their flow-matching modes)")
    search.add_argument("--search-steps", type=int_at_least(1), nargs="+", default=[8, 10, 12, 15, 20],
                        help="step counts")
    search.add_argument("--static-fractions", type=number_in(0.0, 1.0), nargs="*", default=[0.5, 0.75],
                        help="StaticDepth candidates, as fractions of the blocks")
    search.add_argument("--tail-thresholds", type=number_in(0.0), nargs="*", default=[0.1, 0.2],
                        help="CachedTailResidual thresholds (transformers), each at every --forecast-orders")
    search.add_argument("--threshold-fractions", type=number_in(0.0, 1.0), nargs="*", default=[0.5, 0.75],
                        help="DeeDiff thresholds calibrated to these block fractions (models with exit heads)")
    search.add_argument("--reference-steps", type=int_at_least(1), default=25,
                        help="steps of the reference: DDIM for our pipelines and settings, a stock folder's own "
                             "scheduler (default: 25)")
    search.add_argument("--reference", type=_reference, default=None, metavar="SOLVER:STEPS",
                        help="the reference named in full: ddim:25, dpmpp:20, unipc:20, or own:28 (the folder's own "
                             "scheduler, e.g. flow matching); instead of --reference-steps")
    search.add_argument("--features", nargs="+", default=None, metavar="NET",
                        help="feature networks quality must hold under, the primary first: a setting's shipped ones "
                             "(default: both of its data, e.g. digits digits-pool); for a folder inception, clip, or "
                             "a saved net (default: inception)")
    search.add_argument("--real", default=None, metavar="DIR",
                        help="a folder's real images (resized and center-cropped to the model's resolution)")
    search.add_argument("--real-stats", nargs="+", default=[], metavar="FILE",
                        help="a folder's real statistics, one file per feature network (`bench --pipeline` writes them)")
    search.add_argument("--inception-weights", default=None, metavar="PATH",
                        help="the FID Inception-v3 weights file (pt_inception-2015-12-05-6726825d.pth)")
    search.add_argument("--inception-resolution", type=int_at_least(75), default=299,
                        help="Inception input side (default 299, what the field reports)")
    search.add_argument("--clip", default=None, metavar="FOLDER", help="a local transformers CLIP folder")
    search.add_argument("--holdout-images", type=int_at_least(2), default=None,
                        help="held-out images that confirm the pick (default: as many as --images)")
    search.add_argument("--max-confirmations", type=int_at_least(1), default=3,
                        help="calibration picks tried on the held-out images, cheapest first, before giving up")
    search.add_argument("--time-batch", type=int_at_least(0), default=0,
                        help="also time the found point, and the pipeline's current default point, against the "
                             "reference: one call on this many images, interleaved, medians (0: do not time)")
    search.add_argument("--time-repeats", type=int_at_least(1), default=5, help="timed rounds (--time-batch)")
    search.add_argument("--save-to", type=Path, default=None,
                        help="write a copy of the pipeline folder whose default is the found operating point")
    search.add_argument("--cache-dir", type=Path, default=None,
                        help="where every run's images are kept as shards while the search runs: an interrupted "
                             "search resumes from them, and `accelerate launch` processes share them (default: OUT's "
                             "name with '-samples', beside it); deleted at the end unless --keep-samples")
    search.add_argument("--keep-samples", action="store_true",
                        help="keep the sample shards when the search ends (a rerun then samples nothing; about 0.8 GB "
                             "a candidate at DiT-XL/2 size)")
    parser.set_defaults(func=_run_calibrate, settings=settings)


def _reference(text: str) -> tuple[str, int]:
    """"dpmpp:20" -> ("dpmpp", 20): the search's reference solver and steps."""
    solver, _, steps = text.partition(":")
    allowed = (*SEARCH_SOLVER_NAMES, "own")
    if solver not in allowed or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"a reference is SOLVER:STEPS with SOLVER one of {allowed} and STEPS >= 1, "
                                         f"e.g. ddim:25; got {text!r}")
    return solver, int(steps)


def _forecast_window(text: str) -> tuple[int, bool]:
    """"2L" -> (2, True): the first 2 timesteps computed, and the last one."""
    last = text.upper().endswith("L")
    digits = text[:-1] if last else text
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"a window is W or WL with W >= 1 first timesteps computed (L: and the "
                                         f"last one), e.g. 2L; got {text!r}")
    return int(digits), last


def _forecast_grid(args: argparse.Namespace) -> dict:
    """The BlockForecast grid arguments of `run_calibration` that were given (the rest keep their defaults)."""
    grid = {"forecast_intervals": args.forecast_intervals, "forecast_windows": args.forecast_windows,
            "verify_thresholds": None if args.verify_thresholds is None else [None, *args.verify_thresholds],
            "forecast_computes": args.forecast_computes}
    return {k: tuple(v) for k, v in grid.items() if v is not None}


def _run_calibrate(args: argparse.Namespace) -> int:
    import torch

    from .calibration import as_target, run_calibration, save_calibration
    from .default_model import SETTINGS
    from .eval.features import load_feature_net
    from .heads import UncertaintyHeads
    from .pipelines.conditioning import Conditioning
    from .pipelines.stock import kind_of, load_pipeline

    settings = SETTINGS if args.settings is None else args.settings()
    setting = settings.get(args.model)
    check_calibrate_args(args, setting is not None, tuple(settings))
    if args.kind == "operating-point":
        from .calibration.search_command import main as search_main

        return search_main(args, setting)
    dtype = getattr(torch, args.dtype)
    if setting:
        pipe = setting.load(args.model).to(args.device, dtype)
    else:
        pipe = load_pipeline(args.model, torch_dtype=dtype, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    if args.solver is not None:
        from .eval.solvers import make_schedulers

        if not hasattr(pipe.scheduler, "alphas_cumprod"):
            raise ValueError(f"--solver {args.solver} needs a DDPM-type noise schedule; "
                             f"{type(pipe.scheduler).__name__} is a flow-matching scheduler: leave --solver out to "
                             f"use it")
        pipe.scheduler = make_schedulers(pipe.scheduler)[args.solver]
    conditioning = None
    if args.prompts is not None:
        conditioning = Conditioning.from_prompt_file(args.prompts)
    elif args.classes:
        conditioning = Conditioning.from_classes(args.classes, pipe)
    heads = UncertaintyHeads.from_pretrained(args.heads).to(args.device) if args.heads is not None else None
    target = as_target(pipe, conditioning, heads=heads)
    point = pipe.operating_point if kind_of(pipe).ours else None
    steps = args.steps or (point.num_inference_steps if point is not None else 20)
    guidance = args.guidance
    if guidance is None and kind_of(pipe).ours:
        guidance = pipe.resolve_call(None, None, None).guidance_scale
    result = run_calibration(target, kind=args.kind, budget=args.budget, tolerance=args.tolerance,
                             min_psnr=args.min_psnr, threshold=args.threshold, num_images=args.images, steps=steps,
                             guidance_scale=guidance, num_buckets=args.buckets, batch_size=args.batch_size,
                             forecast_orders=None if args.forecast_orders is None else tuple(args.forecast_orders),
                             call_options={name: getattr(args, name) for name in CALL_OPTIONS
                                           if getattr(args, name) is not None},
                             **_forecast_grid(args), progress=True,
                             feature_net=load_feature_net(setting.data) if setting else None)
    save_calibration(result, args.out)
    info = result.info
    psnr = f"; mean PSNR {info['psnr_db_mean']:.2f} dB" if "psnr_db_mean" in info else ""
    print(f"{result.exit_config.to_json()}\nblock fraction {info.get('block_fraction'):.3f}{psnr} on "
          f"{args.images} calibration images at {steps} steps; saved to {args.out}")
    return 0


def check_calibrate_args(args: argparse.Namespace, is_setting: bool, setting_names: tuple[str, ...]) -> None:
    """What `calibrate` refuses before it loads anything: a model that is neither a setting nor a folder, a goal
    its kind does not take, flags of another kind, missing input files and an `--out` it could not write."""
    from ._io import check_output_file
    from .calibration.run import GOALS, goal_error
    from .pipelines.stock import VIDEO_PIPELINES, pipeline_class_name

    if not is_setting and not Path(args.model).is_dir():
        raise ValueError(f"--model {args.model!r} is neither a setting ({', '.join(setting_names)}) nor a pipeline "
                         f"folder (a local folder with a model_index.json; nothing is downloaded)")
    goals = {"budget": args.budget, "tolerance": args.tolerance, "min_psnr": args.min_psnr}
    if args.kind in GOALS and goal_error(args.kind, goals):
        allowed = " or ".join("--" + g.replace("_", "-") for g in GOALS[args.kind])
        given = next("--" + g.replace("_", "-") for g, v in goals.items() if v is not None)
        raise ValueError(f"--kind {args.kind} takes {allowed} as its goal, got {given}")
    if args.forecast_computes and args.kind != "block-forecast":
        raise ValueError(f"--forecast-computes places a BlockForecast's computed timesteps: it needs --kind "
                         f"block-forecast, got --kind {args.kind}")
    if args.solver is not None and args.kind == "operating-point":
        raise ValueError(f"--solver {args.solver} is for the other kinds; the operating-point search takes --solvers")
    sizes = [f"--{name.replace('_', '-')}" for name in CALL_OPTIONS if getattr(args, name)]
    if sizes and is_setting:
        raise ValueError(f"{' '.join(sizes)} set the size of a pipeline folder's calls; the {args.model} setting "
                         f"samples at its model's own size")
    if sizes and args.kind == "operating-point":
        raise ValueError(f"{' '.join(sizes)} set the size of the calibrations' calls; the operating-point search "
                         f"samples at the pipeline's own size, and an operating point records none")
    if args.kind == "operating-point" and not is_setting and pipeline_class_name(args.model) in VIDEO_PIPELINES:
        raise ValueError(f"the operating-point search scores images (FID, PSNR against a reference image), and "
                         f"{pipeline_class_name(args.model)} makes videos: calibrate it with --kind block-forecast, "
                         f"tail-cache or schedule, which score every frame and take --height/--width/--num-frames")
    if args.heads is not None and not (args.heads / "config.json").is_file():
        raise FileNotFoundError(f"--heads {str(args.heads)!r} is not an UncertaintyHeads folder (no config.json "
                                f"in it; `UncertaintyHeads.save_pretrained` writes one)")
    if args.prompts is not None and not args.prompts.is_file():
        raise FileNotFoundError(f"--prompts {str(args.prompts)!r} does not exist (expected a prompt file: one prompt "
                                f"per line, or JSONL)")
    check_output_file(args.out, "--out")
    check_device(args.device)
    warn_half_on_cpu(args.dtype, args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ee-diffusion", description="Early exit for diffusers denoisers.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_demo(subparsers)
    _add_train(subparsers)
    _add_prepare_latents(subparsers)
    _add_bench(subparsers)
    add_calibrate(subparsers)
    add_debug(parser, subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: the process's arguments); returns the exit status."""
    return run_command(build_parser(), sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
