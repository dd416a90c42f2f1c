"""`python -m bench bench-shapes`: what early exit costs and saves at the widths users run (random weights, CPU).

Each shape is a stock diffusers transformer built at a real model's size with random weights - quality is not
measured, only wall-clock of single model calls:
- `dit-xl-2`: DiT-XL/2 at 256 px (28 blocks, width 1152, 256 tokens, class labels);
- `pixart-alpha-512`: PixArt-alpha at 512 px (28 blocks, width 1152, 1024 tokens, 120 T5 tokens);
- `sd3-medium-512`: SD3-medium at 512 px (24 blocks, width 1536, 1024 image + 154 text tokens).

At every batch size, one model call per method and round, interleaved in shuffled order after a warm-up; hooks
are put on and taken off outside the timed region (`ExitConfigSwitch`); ratios are medians of per-round ratios to
the stock model (no hooks). Methods:
- `hooks_off`: hooks applied, no policy (the overhead a user pays for having exits available);
- `heads_no_exit`: DeeDiff heads after every block, a threshold never reached (the heads' cost);
- `static_half`: every row exits after block N/2; `half_rows_exit`: half of the rows (t = 900) exit after
  block N/2 by a planned `TimestepSchedule`, the others (t = 100) run all N blocks - per-row compaction, against
  its ideal (full + static_half) / 2 (batches of at least 4 rows);
- `ase_t*`: the released DiT-XL/2 ASE schedule (28, 24, 20, 16, 12 blocks over five timestep buckets, scaled to
  N) with every row at one bucket's timestep; a sampler spends equal steps in each bucket, so the schedule's
  ratio is the mean over buckets, against its ideal mean(depth) / N.

Run: `python -m bench bench-shapes --out docs/bench-shapes` (see `--help`; minutes per shape on 2 cores).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ee_diffusion._io import atomic_write_json, atomic_write_text
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.eval.timing import ExitConfigSwitch, interleaved_timings
from ee_diffusion.heads import UncertaintyHeads
from ee_diffusion.schedules import StaticDepth, TimestepSchedule, UncertaintyThreshold

from .compute import summarize_timings

ASE_TIMESTEPS = (100, 300, 500, 700, 900)  # one per bucket of boundaries 200/400/600/800
ASE_RELEASED = (28, 24, 20, 16, 12)


def _dit_xl_2() -> tuple[torch.nn.Module, Callable[[torch.Tensor], dict]]:
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                  num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)

    def inputs(t: torch.Tensor) -> dict:
        b = t.shape[0]
        return {"hidden_states": torch.randn(b, 4, 32, 32, generator=torch.Generator().manual_seed(0)),
                "timestep": t, "class_labels": torch.arange(b) % 1000}

    return model, inputs


def _pixart_alpha_512() -> tuple[torch.nn.Module, Callable[[torch.Tensor], dict]]:
    from diffusers import PixArtTransformer2DModel

    model = PixArtTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                     num_layers=28, cross_attention_dim=1152, sample_size=64, patch_size=2,
                                     caption_channels=4096, use_additional_conditions=False)

    def inputs(t: torch.Tensor) -> dict:
        b = t.shape[0]
        g = torch.Generator().manual_seed(0)
        return {"hidden_states": torch.randn(b, 4, 64, 64, generator=g),
                "encoder_hidden_states": torch.randn(b, 120, 4096, generator=g), "timestep": t,
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}

    return model, inputs


def _sd3_medium_512() -> tuple[torch.nn.Module, Callable[[torch.Tensor], dict]]:
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(sample_size=64, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=96)

    def inputs(t: torch.Tensor) -> dict:
        b = t.shape[0]
        g = torch.Generator().manual_seed(0)
        return {"hidden_states": torch.randn(b, 16, 64, 64, generator=g),
                "encoder_hidden_states": torch.randn(b, 154, 4096, generator=g),
                "pooled_projections": torch.randn(b, 2048, generator=g), "timestep": t}

    return model, inputs


SHAPES: dict[str, Callable[[], tuple[torch.nn.Module, Callable[[torch.Tensor], dict]]]] = {
    "dit-xl-2": _dit_xl_2, "pixart-alpha-512": _pixart_alpha_512, "sd3-medium-512": _sd3_medium_512,
}


def _methods(n: int, batch: int, heads: UncertaintyHeads) -> dict[str, tuple[EarlyExitConfig, Any, int | None]]:
    """name -> (exit config, heads, the timestep of every row or None for the half/half batch)."""
    half = max(1, n // 2)
    methods: dict[str, tuple[EarlyExitConfig, Any, int | None]] = {
        "hooks_off": (EarlyExitConfig(), None, 500),
        "heads_no_exit": (EarlyExitConfig(UncertaintyThreshold(0.999999, patience=1)), heads, 500),
        "static_half": (EarlyExitConfig(StaticDepth(half)), None, 500),
    }
    if batch >= 4:
        methods["half_rows_exit"] = (EarlyExitConfig(TimestepSchedule([500], [n, half])), None, None)
    depths = [max(1, min(n, round(d * n / 28))) for d in ASE_RELEASED]
    ase = EarlyExitConfig(TimestepSchedule([200, 400, 600, 800], depths))
    for t in ASE_TIMESTEPS:
        methods[f"ase_t{t}"] = (ase, None, t)
    return methods


def to_device(inputs: Any, device: torch.device | str, dtype: torch.dtype) -> Any:
    """Model-call inputs on `device`: floating tensors in `dtype`, others as they are (dicts recursively)."""
    if isinstance(inputs, dict):
        return {key: to_device(value, device, dtype) for key, value in inputs.items()}
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, dtype) if inputs.is_floating_point() else inputs.to(device)
    return inputs


def moved_to(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    """`module` on `device` in `dtype`, cast only when the dtype changes (diffusers warns on every dtype cast)."""
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module.to(device)


@torch.no_grad()
def bench_shape(name: str, batches: tuple[int, ...], repeats: int, warmup: int, log: Callable[[str], None],
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                shapes: dict[str, Callable] | None = None) -> dict:
    """Time every method on one shape at every batch size; returns the shape's entry of the report.

    `device` and `dtype`: where the model and its inputs live (the GPU check runs this in bf16 on CUDA);
    `shapes`: the builders to pick `name` from (default `SHAPES`).
    """
    torch.manual_seed(0)
    started = time.perf_counter()
    model, build_inputs = (shapes or SHAPES)[name]()
    model = moved_to(model.eval(), device, dtype)
    n = len(model.transformer_blocks)
    heads = moved_to(UncertaintyHeads.from_model(model).eval(), device, dtype)

    def make_inputs(t: torch.Tensor) -> dict:
        return to_device(build_inputs(t), device, dtype)

    params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {n} blocks, {params / 1e6:.0f}M parameters, built in {time.perf_counter() - started:.0f}s")
    switch = ExitConfigSwitch(model)
    out: dict[str, Any] = {"num_blocks": n, "parameters_m": params / 1e6, "batches": {}}
    try:
        for batch in batches:
            methods = _methods(n, batch, heads)
            calls, setup = {}, {}
            inputs_at = {t: make_inputs(torch.full((batch,), t)) for t in {500, *ASE_TIMESTEPS}}
            mixed = make_inputs(torch.tensor([900, 100] * (batch // 2) + [100] * (batch % 2)))
            calls["full"] = lambda x=inputs_at[500]: model(**x)
            setup["full"] = switch.stock
            for method, (config, method_heads, t) in methods.items():
                x = inputs_at[t] if t is not None else mixed
                calls[method] = lambda x=x: model(**x)
                setup[method] = switch.use(config, heads=method_heads)
            times = interleaved_timings(calls, repeats=repeats, warmup=warmup, setup=setup, device=torch.device(device))
            summary = summarize_timings(times, reference="full")
            ratio = {k: v["ratio_to_reference"] for k, v in summary.items()}
            ase_depths = [max(1, min(n, round(d * n / 28))) for d in ASE_RELEASED]
            derived = {
                "hook_overhead": ratio["hooks_off"] - 1.0,
                "heads_overhead": ratio["heads_no_exit"] - 1.0,
                "ase_ratio": sum(ratio[f"ase_t{t}"] for t in ASE_TIMESTEPS) / len(ASE_TIMESTEPS),
                "ase_ideal": sum(ase_depths) / len(ase_depths) / n,
            }
            if "half_rows_exit" in ratio:
                derived["compaction_ideal"] = (1.0 + ratio["static_half"]) / 2
                derived["compaction_ratio"] = ratio["half_rows_exit"]
                derived["compaction_over_ideal"] = ratio["half_rows_exit"] / derived["compaction_ideal"] - 1.0
            out["batches"][str(batch)] = {"results": summary, "derived": derived}
            log(f"  batch {batch}: full {summary['full']['median_s']:.2f}s; hooks {derived['hook_overhead']:+.1%}, "
                f"heads {derived['heads_overhead']:+.1%}, ASE {derived['ase_ratio']:.3f} (ideal "
                f"{derived['ase_ideal']:.3f})" + (f", compaction {derived['compaction_over_ideal']:+.1%} over ideal"
                                                 if "compaction_ratio" in derived else ""))
    finally:
        switch.close()
    out["elapsed_s"] = time.perf_counter() - started
    return out


def markdown(report: dict) -> str:
    """The tables of a saved report (shapes.json)."""
    env = report["environment"]
    lines = [f"Command: `{report['command']}`; torch {env['torch']}, {env['threads']} threads, {env['machine']}; "
             f"{report['repeats']} rounds after {report['warmup']} warm-up; random weights (quality is not measured).",
             "", "| shape | blocks | params | batch | full, s/call | hooks, no policy | heads | compaction vs ideal | "
             "ASE schedule (ideal) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, shape in report["shapes"].items():
        for batch, entry in shape["batches"].items():
            d = entry["derived"]
            compaction = f"{d['compaction_over_ideal']:+.1%}" if "compaction_over_ideal" in d else "-"
            lines.append(f"| {name} | {shape['num_blocks']} | {shape['parameters_m']:.0f}M | {batch} | "
                         f"{entry['results']['full']['median_s']:.2f} | {d['hook_overhead']:+.1%} | "
                         f"{d['heads_overhead']:+.1%} | {compaction} | {d['ase_ratio']:.3f} ({d['ase_ideal']:.3f}) |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m bench bench-shapes` (shared with `python -m bench.shapes_bench`)."""
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per batch size (default: 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads, recorded (default: 2)")
    parser.add_argument("--out", type=Path, required=True, help="folder for shapes.json and shapes.md")


def run(args: argparse.Namespace, command: str) -> dict:
    """Bench the chosen shapes and write OUT/shapes.json and OUT/shapes.md; returns the report."""
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0 or any(b < 1 for b in args.batches):
        raise ValueError(f"--threads, --repeats and --batches must be >= 1 and --warmup >= 0, got threads "
                         f"{args.threads}, repeats {args.repeats}, warmup {args.warmup}, batches {args.batches}")
    torch.set_num_threads(args.threads)
    shapes = {name: bench_shape(name, tuple(args.batches), args.repeats, args.warmup, log=print)
              for name in args.shapes}
    report = {"command": command, "repeats": args.repeats, "warmup": args.warmup,
              "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "machine": platform.machine()},
              "shapes": shapes}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "shapes.json", report, indent=1)
    atomic_write_text(args.out / "shapes.md", markdown(report))
    print(markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    run(parser.parse_args(argv), "python -m bench.shapes_bench " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
