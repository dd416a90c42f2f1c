"""`ee-diffusion calibrate --kind operating-point`: the search on a benchmark setting or on any pipeline folder.

- A setting (`--model digits`: the demo model; the repository's `python -m bench calibrate` adds our other models)
  is scored under the shipped feature networks of its data (`--features` picks among them) against its real images.
- A supported pipeline folder (`--model FOLDER`, ours or stock) is scored under the feature networks the user names
  (`--features inception clip`, from files the user holds) against `--real DIR` or `--real-stats FILE ...`, loaded
  and checked as `bench --pipeline` does (`eval.bench_prepare.prepare`), so bad input fails before any sampling. A
  flow-matching folder (SD3) searches its own scheduler, or with `--solvers dpmpp unipc` their flow versions.
- `--min-psnr DB` needs no real images or feature networks (and refuses them): a candidate must keep each image
  within DB of the reference's image from the same noise.

The decision is `search_operating_point`'s. The search JSON (and its Markdown) goes to `--out`; `--save-to DIR`
writes a pipeline folder of ours whose bare call runs the found point, or for a stock folder the exit config JSON
(`EarlyExitConfig.from_json`) beside the operating point's JSON (`operating_point.scheduler_of_point` rebuilds
its scheduler).
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._io import atomic_write_json, atomic_write_text
from ..results import EXIT_CONFIG_FILE, OPERATING_POINT_FILE

if TYPE_CHECKING:
    from ..default_model import Setting

#: A folder of one cached run (`eval.sample_cache.run_key`): what the end of a search deletes.
RUN_FOLDER = re.compile(r"[0-9a-f]{16}")


def setting_features(setting: str, data: str, names: list[str] | None) -> dict[str, tuple[Any, torch.Tensor]]:
    """name -> (shipped feature net, its features of the real reference images of `data`, the data the setting named
    `setting` is scored on); default: every shipped network of that data, the primary first."""
    from ..eval.features import feature_nets_of, load_feature_net
    from ..eval.quality import real_images

    names = names or list(feature_nets_of(data))
    unknown = [n for n in names if n not in feature_nets_of(data)]
    if unknown:
        raise ValueError(f"--features {unknown}: the {setting} setting is scored on {data!r} data, whose shipped "
                         f"feature networks are {list(feature_nets_of(data))}")
    real = real_images(data, "reference")[0]
    out = {}
    for name in dict.fromkeys(names):
        net = load_feature_net(name)
        with torch.no_grad():
            out[name] = (net, net(real))
    return out


def folder_features(prep: Any, batch_size: int = 64) -> dict[str, tuple[Any, Any]]:
    """name -> (images in [0, 1] -> features, real `FrechetReference`) for every feature network of a prepared
    `bench --pipeline` run: the saved statistics, or the real folder encoded once."""
    from ..eval.runner import as_uint8
    from ..eval.paired import FrechetReference

    out = {}
    for spec in prep.features:
        if spec.key in prep.real_stats:
            stats = prep.real_stats[spec.key]
            real = FrechetReference.from_moments(stats.mean, stats.cov)
        else:
            real = FrechetReference(torch.cat([spec.encode(b) for b in prep.real_folder.batches(batch_size)]))

        def encode(images: torch.Tensor, spec: Any = spec) -> torch.Tensor:
            # Generated images are scored as a saved PNG would hold them (uint8), as the real ones are.
            return spec.encode(as_uint8(images))

        out[spec.name] = (encode, real)
    return out


def check_psnr_args(args: argparse.Namespace) -> None:
    """A PSNR goal compares each image with the reference's from the same noise: the real side and feature
    networks of an FID search would be silently unused, so they are refused."""
    flags = {"--features": args.features, "--real": args.real, "--real-stats": args.real_stats,
             "--inception-weights": args.inception_weights, "--clip": args.clip}
    given = [flag for flag, value in flags.items() if value]
    if args.min_psnr is not None and given:
        raise ValueError(f"--min-psnr scores each image against the reference's image from the same noise: it takes no "
                         f"real images or feature networks, got {given}")


def load_folder(args: argparse.Namespace) -> tuple[Any, Any, float | None]:
    """(pipe, conditioning, guidance) of a pipeline folder for a PSNR goal, checked as `bench --pipeline` checks
    them, without the feature networks and real side it does not use."""
    from ..eval.bench_config import DTYPES
    from ..eval.bench_prepare import conditioning_of
    from ..pipelines.stock import default_guidance_scale, load_pipeline, pipeline_class_name

    pipeline_class_name(str(args.model))  # an unsupported class is refused before anything loads
    pipe = load_pipeline(str(args.model), torch_dtype=DTYPES[args.dtype], device=args.device)
    pipe.set_progress_bar_config(disable=True)
    conditioning = conditioning_of(args, pipe)  # reads --classes and --prompts
    if conditioning.kind == "none" and args.guidance is not None:
        raise ValueError(f"{type(pipe).__name__} is unconditional and takes no guidance scale, got {args.guidance}")
    return pipe, conditioning, args.guidance if args.guidance is not None else default_guidance_scale(pipe)


def search_space(args: argparse.Namespace, pipe: Any, target: Any) -> tuple[Any, str]:
    """The `SearchSpace` of the command's flags for this pipeline and the reference's solver, checked against its
    scheduler (`ValueError` before any sampling). No `--solvers`: DDIM and DPM-Solver++ on a DDPM-type noise
    schedule, the pipeline's own scheduler otherwise (flow matching). No `--reference`: DDIM for a pipeline of ours
    (where it runs), a stock folder's own scheduler."""
    from ..adapters import get_adapter
    from ..operating_point import noise_schedule
    from ..pipelines.stock import kind_of
    from .search_space import OWN_SCHEDULER, SearchSpace, default_reference_solver, solver_specs

    ours, adapter = kind_of(pipe).ours, get_adapter(target.denoiser)
    solvers = tuple(args.solvers or ()) or (("ddim", "dpmpp") if noise_schedule(pipe.scheduler) == "ddpm" else None)
    # No --reference: a stock folder is measured against what it ships (its own scheduler at --reference-steps);
    # our pipelines against the stock model at 25 DDIM steps, the reference of every report (docs/evaluation.md).
    reference = args.reference[0] if args.reference else \
        default_reference_solver(pipe.scheduler, solvers) if ours else OWN_SCHEDULER
    solver_specs(pipe.scheduler, [s for s in (*(solvers or ()), reference) if s != OWN_SCHEDULER])
    space = SearchSpace(solvers=solvers, steps=tuple(args.search_steps),
                        static_fractions=tuple(args.static_fractions) if adapter.sequential or ours else (),
                        ase=("released", "aggressive") if adapter.sequential or ours else (),
                        tail_thresholds=tuple(args.tail_thresholds) if adapter.sequential else (),
                        forecast_orders=tuple(args.forecast_orders or (0, 1)),
                        block_forecast_intervals=tuple(args.forecast_intervals or ()) if adapter.sequential else (),
                        block_forecast_orders=tuple(args.forecast_orders or (1,)),
                        block_forecast_windows=tuple(args.forecast_windows or ((2, True),)),
                        block_forecast_verify=(None, *(args.verify_thresholds or ())),
                        threshold_fractions=tuple(args.threshold_fractions) if target.exit_heads is not None else ())
    return space, reference


def prepare_folder(args: argparse.Namespace) -> Any:
    """The folder, its conditioning, feature networks and real side, checked as `bench --pipeline` checks them."""
    from ..eval.bench_config import BenchConfig
    from ..eval.bench_prepare import prepare

    if args.real is None and not args.real_stats:
        raise ValueError(f"--model {args.model!r} is a pipeline folder: its FID needs real images, --real DIR or "
                         f"--real-stats FILE ... (written by `bench --pipeline` as OUT/real-stats-*.safetensors)")
    config = BenchConfig(pipeline=str(args.model), real=args.real, real_stats=tuple(args.real_stats),
                         features=tuple(args.features or ("inception",)), inception_weights=args.inception_weights,
                         inception_resolution=args.inception_resolution,
                         clip=args.clip, classes=tuple(args.classes or ()),
                         prompts=None if args.prompts is None else str(args.prompts),
                         num_images=max(args.images, args.holdout_images or args.images),
                         guidance_scale=args.guidance, batch_size=args.batch_size, device=args.device,
                         dtype=args.dtype)
    return prepare(config, args.device)


def run_search(args: argparse.Namespace, pipe: Any, target: Any, space: Any, reference: str,
               features: dict | None, guidance: float | None) -> list[str]:
    """Search `space` against `reference` (both from `search_space`), write the search JSON (and Markdown), and
    with `--save-to` what a later bare call runs; returns the summary lines the command prints. `features` None:
    a PSNR goal."""
    from ..eval.solvers import solver_of
    from ..pipelines.stock import kind_of
    from . import search_operating_point, store_operating_point

    ours = kind_of(pipe).ours
    ref_steps = args.reference[1] if args.reference else args.reference_steps
    # The pipeline's current default point is measured beside the pick on the held-out images (and timed).
    current = pipe.operating_point if ours else None
    baselines = {"current default": current} if current is not None and solver_of(current.scheduler) else {}
    search = search_operating_point(
        target, space, tolerance=args.tolerance, budget=args.budget, min_psnr=args.min_psnr, features=features,
        reference_steps=ref_steps, reference_solver=reference, guidance_scale=guidance, calib_images=args.images,
        holdout_images=args.holdout_images or args.images, batch_size=args.batch_size, progress=True,
        baselines=baselines, max_confirmations=args.max_confirmations,
        cache_dir=cache_dir(args), shard_size=args.batch_size)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # every process took the same decisions; the main one writes them
        return []
    search.settings["command"] = args.command_line
    point = search.operating_point
    if args.time_batch:
        from ..eval.point_timing import time_operating_points

        points = {"searched": point}
        if baselines and current.guidance_scale == point.guidance_scale:
            points["current default"] = current
        search.timing = time_operating_points(pipe, points, ref_steps, args.time_batch, args.time_repeats,
                                              reference_solver=reference, conditioning=target.conditioning,
                                              heads=target.heads)
    search.save(args.out)
    config = None if point.exit_config is None else point.exit_config.to_dict()
    lines = [search.why, f"operating point: {point.scheduler}, {point.num_inference_steps} steps, guidance "
                         f"{point.guidance_scale:g}, exit config {config}", f"search saved to {args.out}"]
    for name, entry in search.baselines.items():
        metric = "dFID" if "dfid_chosen_minus_baseline" in entry else "dPSNR (dB)"
        d = entry["dfid_chosen_minus_baseline" if metric == "dFID" else "dpsnr_chosen_minus_baseline"]
        lines.append(f"against the {name} on the held-out images: {metric} {d['delta']:+.2f} "
                     f"[{d['low']:+.2f}, {d['high']:+.2f}]")
    for name, timed in (search.timing or {}).get("points", {}).items():
        lines.append(f"{name}: {timed['speedup']:.2f}x faster than the reference at batch {args.time_batch}")
    if args.save_to is not None:
        if ours:
            store_operating_point(pipe, search)
            pipe.save_pretrained(str(args.save_to))
            lines.append(f"pipeline with this operating point saved to {args.save_to}")
        else:
            save_point_files(search, Path(args.save_to))
            lines.append(f"exit config and operating point saved to {args.save_to} ({EXIT_CONFIG_FILE}, "
                         f"{OPERATING_POINT_FILE})")
    lines.append(drop_samples(cache_dir(args), keep=args.keep_samples))
    return lines


def drop_samples(folder: Path, keep: bool) -> str:
    """The line on the search's sample cache: its size, and whether it was kept or deleted. Only the run folders
    the engine writes (`eval.sample_cache`: one per run, named by its 16-hex run key) are deleted, never another
    file kept there; the folder too when that empties it."""
    runs = [p for p in folder.iterdir() if p.is_dir() and RUN_FOLDER.fullmatch(p.name)] if folder.is_dir() else []
    size = sum(f.stat().st_size for run in runs for f in run.rglob("*") if f.is_file())
    what = f"{size / 1e6:.1f} MB of samples in {len(runs)} runs"
    if keep:
        return f"{what} kept in {folder} (--keep-samples): a rerun reads them back"
    for run in runs:
        shutil.rmtree(run)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return f"{what} deleted from {folder} (--keep-samples keeps them for a rerun)"


def cache_dir(args: argparse.Namespace) -> Path:
    """Where the search keeps its images: `--cache-dir`, or OUT's name with '-samples', beside it."""
    return Path(args.cache_dir or args.out.with_name(f"{args.out.stem}-samples"))


def check_paths(args: argparse.Namespace) -> None:
    """The flags that conflict and the paths the search could not write, refused before anything loads."""
    from .._io import check_output_folder

    if args.reference is not None and args.reference_steps != 25:
        raise ValueError(f"give --reference {args.reference[0]}:{args.reference[1]} or --reference-steps "
                         f"{args.reference_steps}, not both")
    check_output_folder(cache_dir(args), "--cache-dir")
    if args.save_to is not None:
        if Path(args.save_to).exists():
            raise ValueError(f"--save-to {str(args.save_to)!r} exists; give a new folder")
        check_output_folder(args.save_to, "--save-to")


def save_point_files(search: Any, folder: Path) -> None:
    """For a stock pipeline: the found point's exit config (a config without a policy, which never exits, when the
    point runs full depth) and the whole point (scheduler, steps, guidance, and the options its scheduler was built
    with); `ee_diffusion.enable(pipe, folder)` on the reloaded stock folder runs it with a bare call."""
    from ..config import EarlyExitConfig

    folder.mkdir(parents=True, exist_ok=True)
    point = search.operating_point
    atomic_write_text(folder / EXIT_CONFIG_FILE, (point.exit_config or EarlyExitConfig()).to_json() + "\n")
    atomic_write_json(folder / OPERATING_POINT_FILE, point.to_dict(), indent=1)


def main(args: argparse.Namespace, setting: Setting | None) -> int:
    """`calibrate --kind operating-point` with parsed `args` on a setting (`setting`, named `args.model`) or a
    pipeline folder (`args.model`, `setting` None): bad input raises (`ValueError`, `OSError`) before any sampling
    or writing, and the command line's error boundary ends the command with its message and exit status 2."""
    from ..heads import UncertaintyHeads
    from ..pipelines.conditioning import Conditioning
    from ..pipelines.stock import kind_of
    from .common import as_target

    check_paths(args)
    check_psnr_args(args)
    psnr = args.min_psnr is not None  # no feature networks: `features` stays None
    heads = UncertaintyHeads.from_pretrained(args.heads).to(args.device) if args.heads is not None else None
    if setting:
        if args.real is not None or args.real_stats:
            raise ValueError(f"the {args.model} setting is scored against its own real images; --real and "
                             f"--real-stats are for pipeline folders")
        features = None if psnr else setting_features(args.model, setting.data, args.features)
        pipe = setting.load(args.model).to(args.device, getattr(torch, args.dtype))
        conditioning = Conditioning.from_classes(args.classes, pipe) if args.classes else None
        guidance = args.guidance
    elif psnr:
        pipe, conditioning, guidance = load_folder(args)
        features = None
    else:
        prep = prepare_folder(args)
        pipe, conditioning, guidance = prep.pipe, prep.conditioning, prep.guidance
        features = folder_features(prep, args.batch_size)
    target = as_target(pipe, conditioning, heads=heads)
    space, reference = search_space(args, pipe, target)
    if guidance is None and kind_of(pipe).ours:
        guidance = pipe.resolve_call(None, None, None).guidance_scale
    lines = run_search(args, pipe, target, space, reference, features, guidance)
    if lines:  # none on the processes of an `accelerate launch` other than the main one
        print("\n".join(lines))
    return 0
