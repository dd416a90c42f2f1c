"""`python -m bench.cache_costs`: what the hooks and each training-free cache cost per model call at the widths of
Flux.1-dev and Wan 2.1 1.3B (random weights, CPU; quality is not measured).

Each shape is the stock diffusers transformer at the real model's width, head count, feed-forward width and token
counts, with fewer blocks, so that a call takes seconds on 2 CPU cores (Flux.1-dev at 256 px with 256 T5 tokens: 1
of its 19 double-stream and 2 of its 38 single-stream blocks; Wan 2.1 1.3B on a 9-frame 256 px video: 6 of its 30
blocks). The hooks and `BlockForecast` act block by block, so their ratios to the stock call carry to full depth up
to the model's preamble and output head, whose share is reported (`fixed_share`: the stock call with no blocks at
all, over the stock call). A tail skip runs the first block only, so its ratio here (1 of 3 or 6 blocks) is an upper
bound of the full model's (1 of 57 or 30).

One sampling-like run per method and round: 4 model calls at timesteps 900, 700, 500, 300, each timed on its own;
methods run in a freshly shuffled order each round, after a warm-up round, hooks put on and taken off outside the
timed region. Per call kind, the median over rounds and calls of the call's time over the stock call's at the same
position of the same round:
- `hooks`: hooks applied, no policy (what having exits available costs);
- `forecast`: `BlockForecast(interval=4, forecast_order=1)` - call 1 computes every block's forecastable
  sub-modules (`compute`: the stock work plus recording the histories; as the run's first call it also allocates
  them), the others forecast them (`forecast`);
- `tail`: `CachedTailResidual(criterion="timestep", skip_above_t=0, max_cached_calls=3, forecast_order=1)` - call
  1 runs every block (`full`: plus recording the residual), the others skip every block after the first (`skip`).
Which calls computed is read from each run's own `ExitStats`, not assumed.

Run: `python -m bench.cache_costs --out docs/cache-costs` (about 8 minutes on 2 quiet cores).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ee_diffusion import EarlyExitConfig, record_exit_stats
from ee_diffusion._io import atomic_write_json, atomic_write_text
from ee_diffusion.eval.timing import ExitConfigSwitch, load_average
from ee_diffusion.schedules import BlockForecast, CachedTailResidual

TIMESTEPS = (900.0, 700.0, 500.0, 300.0)
METHODS: dict[str, EarlyExitConfig | None] = {
    "stock": None,
    "hooks": EarlyExitConfig(),
    "forecast": EarlyExitConfig(BlockForecast(interval=4, forecast_order=1)),
    "tail": EarlyExitConfig(CachedTailResidual(criterion="timestep", skip_above_t=0.0, max_cached_calls=3,
                                               forecast_order=1)),
}


def _flux_dev(double: int = 1, single: int = 2, side: int = 16, text: int = 256) -> tuple[torch.nn.Module, Callable]:
    """FLUX.1-dev's blocks (width 3072 = 24 heads x 128, MLP 4x) at 256 px: 16 x 16 packed tokens, 256 T5 tokens."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=double, num_single_layers=single,
                                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))

    def inputs(t: float, batch: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0)
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
        return {"hidden_states": torch.randn(batch, side * side, 64, generator=g),
                "encoder_hidden_states": torch.randn(batch, text, 4096, generator=g),
                "pooled_projections": torch.randn(batch, 768, generator=g), "timestep": torch.full((batch,), t / 1000),
                "guidance": torch.full((batch,), 3.5), "img_ids": img_ids, "txt_ids": torch.zeros(text, 3)}

    return model, inputs


def _wan_1_3b(blocks: int = 6, frames: int = 3, side: int = 32, text: int = 512) -> tuple[torch.nn.Module, Callable]:
    """Wan 2.1 T2V 1.3B's blocks (width 1536 = 12 heads x 128, FFN 8960) on a 9-frame 256 px video: latents
    (16, 3, 32, 32), 3 x 16 x 16 = 768 tokens; 512 UMT5 tokens."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                                  in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                                  num_layers=blocks, cross_attn_norm=True, qk_norm="rms_norm_across_heads")

    def inputs(t: float, batch: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0)
        return {"hidden_states": torch.randn(batch, 16, frames, side, side, generator=g),
                "encoder_hidden_states": torch.randn(batch, text, 4096, generator=g),
                "timestep": torch.full((batch,), t)}

    return model, inputs


SHAPES: dict[str, Callable[[], tuple[torch.nn.Module, Callable]]] = {"flux-dev-256": _flux_dev,
                                                                       "wan2.1-1.3b-256": _wan_1_3b}


def _kinds(method: str, stats: Any) -> list[str]:
    """Each call's kind, from the run's own statistics."""
    if stats is None or method == "hooks":
        return ["full"] * len(TIMESTEPS)
    n = stats.num_blocks
    if method == "forecast":
        return ["compute" if int(c.min()) == n else "forecast" for c in stats.computed]
    return ["full" if int(b.min()) == n else "skip" for b in stats.blocks_run]


@torch.no_grad()
def bench_shape(name: str, batch: int, repeats: int, log: Callable[[str], None],
                shapes: dict[str, Callable] | None = None) -> dict[str, Any]:
    """Time every method's run on one shape; returns the shape's entry of the report."""
    torch.manual_seed(0)
    started = time.perf_counter()
    model, make_inputs = (shapes or SHAPES)[name]()
    model = model.eval()
    inputs = [make_inputs(t, batch) for t in TIMESTEPS]
    switch = ExitConfigSwitch(model)
    params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {params / 1e6:.0f}M parameters, built in {time.perf_counter() - started:.0f}s")

    def run(method: str) -> tuple[list[float], list[str]]:
        config = METHODS[method]
        if config is None:
            switch.stock()
        else:
            switch.use(config)()
        times = []
        with record_exit_stats(model) if config is not None else contextlib.nullcontext() as stats:
            for x in inputs:
                start = time.perf_counter()
                model(**x)
                times.append(time.perf_counter() - start)
        return times, _kinds(method, stats)

    fixed = _fixed_cost(model, inputs[0])
    rounds: list[dict[str, tuple[list[float], list[str]]]] = []
    try:
        for index in range(repeats + 1):  # round 0 warms up
            order = list(METHODS)
            random.Random(index).shuffle(order)
            result = {method: run(method) for method in order}
            if index:
                rounds.append(result)
    finally:
        switch.close()
    stock = [t for r in rounds for t in r["stock"][0]]
    entry: dict[str, Any] = {"parameters_m": params / 1e6, "batch": batch, "stock_call_s": statistics.median(stock),
                             "fixed_share": fixed / statistics.median(stock), "methods": {}}
    for method in METHODS:
        if method == "stock":
            continue
        by_kind: dict[str, list[float]] = {}
        for r in rounds:
            for time_s, stock_s, kind in zip(r[method][0], r["stock"][0], r[method][1]):
                by_kind.setdefault(kind, []).append(time_s / stock_s)
        entry["methods"][method] = {
            "kinds": rounds[0][method][1],
            "ratio_to_stock": {kind: statistics.median(v) for kind, v in by_kind.items()},
            "ratio_range": {kind: [min(v), max(v)] for kind, v in by_kind.items()},
            "run_ratio": statistics.median(sum(r[method][0]) / sum(r["stock"][0]) for r in rounds),
        }
    entry["elapsed_s"] = time.perf_counter() - started
    log(f"  stock {entry['stock_call_s']:.2f}s/call; " + "; ".join(
        f"{m} " + ", ".join(f"{k} {v:.3f}" for k, v in e["ratio_to_stock"].items())
        for m, e in entry["methods"].items()))
    return entry


def _fixed_cost(model: torch.nn.Module, x: dict[str, Any], repeats: int = 3) -> float:
    """Median seconds of a stock call whose block lists are emptied: the preamble and output head alone."""
    stacks = {name: module for name, module in model.named_children() if isinstance(module, torch.nn.ModuleList)}
    for name in stacks:
        setattr(model, name, torch.nn.ModuleList())
    try:
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(**x)
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])
    finally:
        for name, module in stacks.items():
            setattr(model, name, module)


def markdown(report: dict[str, Any]) -> str:
    """The table of a saved report (costs.json): per call kind, the median ratio to the stock call and its range."""
    env = report["environment"]
    lines = [f"Command: `{report['command']}`; torch {env['torch']}, {env['threads']} threads, {env['machine']}, load "
             f"average {env.get('load_average', '?')}; {report['repeats']} rounds after a warm-up round; random "
             f"weights (quality is not measured). Ratios to the stock call at the same position of the same round: "
             f"median (min-max over rounds and calls).", "",
             "| shape | params | batch | stock, s/call | preamble + head | hooks | forecast: compute call | forecast: "
             "forecast call | tail: full call | tail: skip call | forecast run | tail run |",
             "|---|---:|---:|---:|---:|---|---|---|---|---|---:|---:|"]

    def cell(entry: dict[str, Any], method: str, kind: str) -> str:
        ratio, span = entry["methods"][method]["ratio_to_stock"], entry["methods"][method]["ratio_range"]
        return f"{ratio[kind]:.2f} ({span[kind][0]:.2f}-{span[kind][1]:.2f})" if kind in ratio else "-"

    for name, e in report["shapes"].items():
        lines.append(f"| {name} | {e['parameters_m']:.0f}M | {e['batch']} | {e['stock_call_s']:.2f} | "
                     f"{e['fixed_share']:.1%} | {cell(e, 'hooks', 'full')} | {cell(e, 'forecast', 'compute')} | "
                     f"{cell(e, 'forecast', 'forecast')} | {cell(e, 'tail', 'full')} | {cell(e, 'tail', 'skip')} | "
                     f"{e['methods']['forecast']['run_ratio']:.3f} | {e['methods']['tail']['run_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=1, help="rows per call (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads, recorded (default: 2)")
    parser.add_argument("--out", type=Path, required=True, help="folder for costs.json and costs.md")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    for flag in ("batch", "repeats", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {str(args.out)!r} is a file; give a folder")
    torch.set_num_threads(args.threads)
    report = {"command": shlex.join(["python", "-m", "bench.cache_costs", *argv]), "repeats": args.repeats,
              "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "machine": platform.machine(), "load_average": load_average()},
              "shapes": {name: bench_shape(name, args.batch, args.repeats, log=print) for name in args.shapes}}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "costs.json", report, indent=1)
    atomic_write_text(args.out / "costs.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
