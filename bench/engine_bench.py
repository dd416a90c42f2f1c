"""Does per-row compaction save real wall-clock? A benchmark of the engine alone (random weights).

At batch B on a 12-block DiT, compare one forward of:
- `full`: the stock model, no hooks;
- `hooks_off`: hooks applied, `EarlyExitConfig()` (never exits);
- `heads_no_exit`: uncertainty heads evaluated after every block, threshold never reached;
- `half_exit_planned`: half the rows exit after block 2 (a `TimestepSchedule`, planned up front);
- `half_exit_dynamic`: the same rows exit after block 2, decided per block by a custom policy (host sync);
- `static_depth_2`: every row exits after block 2 (the floor for what early rows cost).

The ideal ratio for "half the rows exit after block 2 of 12" is (2 + 0.5 * 10) / 12 = 0.583.

Run: `python -m bench.engine_bench --out bench_out`
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from ee_diffusion._io import atomic_write_json, atomic_write_text
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.eval.timing import ExitConfigSwitch, interleaved_timings
from ee_diffusion.heads import UncertaintyHeads
from ee_diffusion.schedules import ExitContext, ExitPolicy, StaticDepth, TimestepSchedule, UncertaintyThreshold
from ee_diffusion.testing import tiny_dit

from .compute import summarize_timings


class _ExitAfterBlock(ExitPolicy):
    """Rows with t >= 500 exit after block `depth - 1`, decided per block (exercises the dynamic path)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        return (ctx.timesteps >= 500) & (ctx.block_index == self.depth - 1)


def run(batch_size: int = 64, num_layers: int = 12, width: int = 128, sample_size: int = 16,
        repeats: int = 30, warmup: int = 3) -> dict:
    torch.manual_seed(0)
    model = tiny_dit(num_layers=num_layers, sample_size=sample_size, in_channels=4, width=width, heads=4)
    heads = UncertaintyHeads.from_model(model)
    x = torch.randn(batch_size, 4, sample_size, sample_size)
    # Half the rows near pure noise (t = 900), half near the data (t = 100).
    t = torch.tensor([900, 100] * (batch_size // 2))
    y = torch.arange(batch_size) % 10

    configs = {
        "hooks_off": (EarlyExitConfig(), None),
        "heads_no_exit": (EarlyExitConfig(policy=UncertaintyThreshold(0.999999, patience=1)), heads),
        "half_exit_planned": (EarlyExitConfig(policy=TimestepSchedule([500], [num_layers, 2])), None),
        "half_exit_dynamic": (EarlyExitConfig(policy=_ExitAfterBlock(2)), None),
        "static_depth_2": (EarlyExitConfig(policy=StaticDepth(2)), None),
    }

    switch = ExitConfigSwitch(model)

    def call() -> torch.Tensor:  # every method makes the same call; only the hooks (set up untimed) differ
        return model(x, t, y).sample

    methods = {"full": call, **{name: call for name in configs}}
    setup = {"full": switch.stock, **{name: switch.use(config, hds) for name, (config, hds) in configs.items()}}
    try:
        with torch.no_grad():
            times = interleaved_timings(methods, repeats=repeats, warmup=warmup, setup=setup)
    finally:
        switch.close()
    summary = summarize_timings(times, reference="full")
    return {
        "setting": {
            "batch_size": batch_size, "num_layers": num_layers, "width": width, "sample_size": sample_size,
            "tokens": (sample_size // 2) ** 2, "repeats": repeats, "warmup": warmup,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
            "ideal_half_exit_ratio": (2 + 0.5 * (num_layers - 2)) / num_layers,
        },
        "results": summary,
    }


def format_table(report: dict) -> str:
    lines = ["| method | median ms | ratio to full |", "|---|---:|---:|"]
    for name, row in report["results"].items():
        lines.append(f"| {name} | {row['median_s'] * 1e3:.2f} | {row['ratio_to_reference']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--sample-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 is steadier on a shared machine); default: torch's choice")
    parser.add_argument("--out", type=Path, default=None, help="folder for engine_bench.json and .md")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run(args.batch_size, args.num_layers, args.width, args.sample_size, args.repeats)
    table = format_table(report)
    print(json.dumps(report["setting"]))
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "engine_bench.json", report, indent=2)
        atomic_write_text(args.out / "engine_bench.md", table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
