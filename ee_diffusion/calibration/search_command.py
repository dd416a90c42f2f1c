"""`ee-diffusion calibrate --kind operating-point`: the search on a benchmark setting or on any pipeline folder.

- A benchmark setting (`--model digits`, `glyphs`, `digits-deep`, ...) is scored under both shipped feature networks of
  its data (`--features` picks among them) against its real reference images.
- Any supported pipeline folder (`--model FOLDER`: ours, `DiTPipeline`, `PixArtAlphaPipeline`,
  `StableDiffusion3Pipeline`, `StableDiffusionPipeline`, U-Net pipelines) is scored under the feature networks the
  user names (`--features inception clip`, from files the user holds: `--inception-weights`, `--clip`) against
  `--real DIR` or `--real-stats FILE ...`, loaded and checked exactly as `bench --pipeline` does
  (`benchmarks.user_prepare.prepare`), so bad input fails before any image is sampled. A flow-matching folder (SD3)
  searches its own scheduler.

Either way the decision is `search_operating_point`'s: quality must hold under every named network. The search JSON
(and its Markdown) goes to `--out`; `--save-to DIR` writes a pipeline folder of ours whose bare call runs the found
point, and for a stock pipeline folder the exit config as a JSON file the hook API loads
(`EarlyExitConfig.from_json`) beside the operating point's JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_json, atomic_write_text

#: What `--save-to` writes for a stock pipeline folder (no pipeline class of ours stores the point there).
EXIT_CONFIG_FILE = "exit_config.json"
OPERATING_POINT_FILE = "operating_point.json"


def setting_features(setting: str, names: list[str] | None) -> dict[str, tuple[Any, torch.Tensor]]:
    """name -> (shipped feature net, its features of the setting's real reference images); default: every
    shipped network of the setting's data, the primary first."""
    from ..default_model import setting_dataset
    from ..eval.features import RECIPES, feature_nets_of, load_feature_net
    from ..eval.quality import real_images

    data = setting_dataset(setting)
    names = names or list(feature_nets_of(data))
    unknown = [n for n in names if n not in RECIPES or RECIPES[n]["dataset"] != data]
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
            return spec.encode((images.clamp(0, 1) * 255).round().to(torch.uint8))

        out[spec.name] = (encode, real)
    return out


def prepare_folder(args: argparse.Namespace) -> Any:
    """The folder, its conditioning, feature networks and real side, checked as `bench --pipeline` checks them."""
    from ..benchmarks.user_config import BenchConfig
    from ..benchmarks.user_prepare import prepare

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


def run_search(args: argparse.Namespace, pipe: Any, target: Any, features: dict,
               guidance: float | None) -> list[str]:
    """Search, write the search JSON (and Markdown), and with `--save-to` what a later bare call runs; returns the
    summary lines the command prints."""
    from ..backbones.registry import get_adapter
    from ..benchmarks.solvers import solver_of
    from ..pipelines.stock import kind_of
    from . import SearchSpace, search_operating_point, store_operating_point

    ours = kind_of(pipe).ours
    adapter = get_adapter(target.denoiser)
    # DDIM / DPM-Solver++ need a DDPM-type schedule; a flow-matching folder (SD3) searches its own scheduler.
    solvers = tuple(args.solvers) if hasattr(pipe.scheduler, "alphas_cumprod") else None
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
    ref_solver, ref_steps = args.reference or (None, args.reference_steps)  # None: the search's default solver
    if args.time_batch and ref_solver == "own":
        raise ValueError("--time-batch times against a DDIM or DPM-Solver++ reference; give --reference ddim:STEPS "
                         "or dpmpp:STEPS, or leave --time-batch out")
    # The pipeline's current default point is measured beside the pick on the held-out images (and timed).
    current = pipe.operating_point if ours else None
    baselines = {"current default": current} if current is not None and solver_of(current.scheduler) else {}
    search = search_operating_point(
        target, space, tolerance=args.tolerance, budget=args.budget, features=features,
        reference_steps=ref_steps, reference_solver=ref_solver, guidance_scale=guidance, calib_images=args.images,
        holdout_images=args.holdout_images or args.images, batch_size=args.batch_size, progress=True,
        baselines=baselines, max_confirmations=args.max_confirmations)
    search.settings["command"] = args.command_line
    point = search.operating_point
    if args.time_batch:
        from ..benchmarks.point_timing import time_operating_points

        points = {"searched": point}
        if baselines and current.guidance_scale == point.guidance_scale:
            points["current default"] = current
        search.timing = time_operating_points(pipe, points, ref_steps, args.time_batch, args.time_repeats,
                                              reference_solver=ref_solver or "ddim")
    search.save(args.out)
    config = None if point.exit_config is None else point.exit_config.to_dict()
    lines = [search.why, f"operating point: {point.scheduler}, {point.num_inference_steps} steps, guidance "
                         f"{point.guidance_scale:g}, exit config {config}", f"search saved to {args.out}"]
    for name, entry in search.baselines.items():
        d = entry["dfid_chosen_minus_baseline"]
        lines.append(f"against the {name} on the held-out images: dFID {d['delta']:+.2f} "
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
    return lines


def save_point_files(search: Any, folder: Path) -> None:
    """For a stock pipeline: the found point's exit config (`apply_early_exit(denoiser,
    EarlyExitConfig.from_json(text))`; a config without a policy, which never exits, when the point runs full
    depth) and the whole point (`OperatingPoint.from_dict`: scheduler, steps, guidance)."""
    from ..config import EarlyExitConfig

    folder.mkdir(parents=True, exist_ok=True)
    point = search.operating_point
    atomic_write_text(folder / EXIT_CONFIG_FILE, (point.exit_config or EarlyExitConfig()).to_json() + "\n")
    atomic_write_json(folder / OPERATING_POINT_FILE, point.to_dict(), indent=1)
