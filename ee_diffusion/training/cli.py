"""`ee-diffusion train --config experiment.json --output-dir runs/x`: run an experiment config.

What is trained lives in the JSON `ExperimentConfig`; how this run executes (where, resume, CPU) are flags.
`--config` also takes the name of a shipped example config (`EXAMPLE_CONFIGS`, listed by `--help`); the flags
`--pipeline`, `--images`, `--captions` and `--cache-dir` fill in its `pipeline` section for your folders.
`ee-diffusion prepare-latents` builds (or resumes) the latent cache of such a config without training.
Also runnable as `python -m ee_diffusion.training.cli --config ...` (and under `accelerate launch`).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._command_line import add_debug, int_at_least, run_command

if TYPE_CHECKING:
    from .config import ExperimentConfig

#: Example configs shipped in `ee_diffusion/training/configs/`, by name (`--config NAME`).
EXAMPLE_CONFIGS = {
    "dit-xl2-heads": "DeeDiff uncertainty heads on a local DiT-XL/2 folder (frozen backbone; images/<class>/)",
    "pixart-alpha-ase": "ASE fine-tune of a local PixArt-alpha folder (images with .txt captions)",
    "sd3-heads": "DeeDiff heads only on a local Stable Diffusion 3 folder (flow matching; captions)",
}
CONFIG_DIR = Path(__file__).with_name("configs")
#: Flags that override the `pipeline` section of the config, and the key each sets.
_PIPELINE_FLAGS = {"pipeline": "folder", "images": "images", "captions": "captions", "cache_dir": "cache_dir"}


def config_path(value: str) -> Path:
    """`--config`'s file: a path, or the name of a shipped example config; `ValueError` listing them else.

    ```py
    >>> config_path("dit-xl2-heads").name
    'dit-xl2-heads.json'

    ```
    """
    if value in EXAMPLE_CONFIGS:
        return CONFIG_DIR / f"{value}.json"
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"experiment config {value!r} is neither a file nor a shipped example config "
                         f"({', '.join(EXAMPLE_CONFIGS)})")
    return path


def epilog() -> str:
    """The configs `--help` lists: the shipped examples and the sections of a config file."""
    names = "\n".join(f"  {name:<18} {text}" for name, text in EXAMPLE_CONFIGS.items())
    sections = textwrap.fill(
        "A config file is JSON with the sections of ExperimentConfig: 'train' (mode scratch|deediff|heads|ase, "
        "steps, batch, LR, EMA, mixed_precision, gradient_checkpointing, ...), 'exit_config', and either "
        "'dataset' + 'model' (our pixel-space DiT or U-Net) or 'pipeline' (a local DiTPipeline, "
        "PixArtAlphaPipeline or StableDiffusion3Pipeline folder trained on its VAE latents).", width=100)
    return f"example configs (--config NAME; files in {CONFIG_DIR}):\n{names}\n\n{sections}"


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags shared by `train` and `prepare-latents`: the config and its `pipeline` section's folders."""
    parser.add_argument("--config", required=True, help="experiment config JSON, or a shipped example's name")
    parser.add_argument("--pipeline", default=None, help="override pipeline.folder (the local pipeline folder)")
    parser.add_argument("--images", default=None, help="override pipeline.images (the training image folder)")
    parser.add_argument("--captions", default=None, help="override pipeline.captions (a captions JSONL file)")
    parser.add_argument("--cache-dir", default=None, help="override pipeline.cache_dir (the latent cache folder)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when an accelerator is present")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `train` flags to `parser` (a subcommand parser or a fresh one)."""
    add_pipeline_arguments(parser)
    parser.add_argument("--output-dir", required=True, help="folder for experiment.json, log.jsonl, checkpoints, pipeline/")
    parser.add_argument("--resume", default=None, help='checkpoint folder to resume from, or "latest"')
    parser.add_argument("--max-steps", type=int_at_least(1), default=None, help="override train.max_steps")
    parser.add_argument("--init-from", default=None, help="override model.init_from (a pipeline folder)")
    return parser


def load_config(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment config of `args.config` with the command-line overrides applied (validated)."""
    from .config import ExperimentConfig

    data = ExperimentConfig.load(config_path(args.config)).to_dict()
    if getattr(args, "max_steps", None) is not None:
        data["train"]["max_steps"] = args.max_steps
    if getattr(args, "init_from", None) is not None:
        data.setdefault("model", {})["init_from"] = args.init_from
    overrides = {key: getattr(args, flag) for flag, key in _PIPELINE_FLAGS.items() if getattr(args, flag) is not None}
    if overrides:
        if "pipeline" not in data:
            flags = ", ".join("--" + flag.replace("_", "-") for flag in overrides)
            raise ValueError(f"{flags} set the 'pipeline' section, but {args.config!r} trains our own model "
                             f"('dataset' + 'model' sections)")
        data["pipeline"].update(overrides)
    return ExperimentConfig.from_dict(data)


def check_paths(args: argparse.Namespace, config: ExperimentConfig) -> None:
    """The folders and files a run reads and writes, checked before anything loads: the `pipeline` section's
    folder, images and captions exist, its cache folder and `--output-dir` could be written, `--resume` exists."""
    from .._io import check_output_folder

    section = config.pipeline
    if section is not None:
        def where(flag: str, key: str) -> str:
            """The flag that set a path, or the config key it came from."""
            given = getattr(args, flag) is not None
            return f"--{flag.replace('_', '-')}" if given else f"pipeline.{key} of {args.config!r}"

        if not (Path(section.folder) / "model_index.json").is_file():
            raise FileNotFoundError(f"{where('pipeline', 'folder')} {section.folder!r} is not a pipeline folder (no "
                                    f"model_index.json in it; nothing is downloaded)")
        if not Path(section.images).is_dir():
            raise FileNotFoundError(f"{where('images', 'images')} {section.images!r} is not an image folder (it "
                                    f"does not exist or is a file)")
        if section.captions is not None and not Path(section.captions).is_file():
            raise FileNotFoundError(f"{where('captions', 'captions')} {section.captions!r} does not exist (expected "
                                    f"a captions JSONL file)")
        check_output_folder(section.cache_dir, where("cache_dir", "cache_dir"))
    if getattr(args, "output_dir", None) is not None:
        check_output_folder(args.output_dir, "--output-dir")
    resume = getattr(args, "resume", None)
    if resume not in (None, "latest") and not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume {resume!r} is not a checkpoint folder (give one, or \"latest\")")


def run_train(args: argparse.Namespace) -> int:
    """Run `train` with parsed arguments; returns the process exit code."""
    from .trainer import train

    config = load_config(args)
    check_paths(args, config)
    trainer = train(config, args.output_dir, resume=args.resume, cpu=args.cpu, progress=not args.no_progress)
    if trainer.accelerator.is_main_process:
        print(f"trained {trainer.step} steps; pipeline saved to {trainer.output_dir / 'pipeline'}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Run `prepare-latents`: build or resume the config's latent cache; returns the process exit code."""
    import torch

    from .pipeline_source import prepare_cache

    config = load_config(args)
    if config.pipeline is None:
        raise ValueError(f"{args.config!r} has no 'pipeline' section: only stock pipeline runs use a latent cache")
    check_paths(args, config)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    cache = prepare_cache(config.pipeline, device=device, progress=not args.no_progress)
    print(f"{cache.num_items} images in {cache.num_shards} shards, cached in {cache.folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ee_diffusion.training.cli`: `ee-diffusion train`, in the same error boundary."""
    parser = argparse.ArgumentParser(prog="python -m ee_diffusion.training.cli", description=__doc__,
                                     epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser).set_defaults(func=run_train)
    add_debug(parser)
    return run_command(parser, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
