"""`python -m bench bench-compile`: planned exit policies under `torch.compile` on a shipped model.

One model call of a benchmark setting's transformer (default `digits-deep`, 28 blocks) at `batch` rows, half at
timestep 900 and half at 100, for the stock model without hooks, a static depth and the released ASE schedule
(per row: the two halves run different depths). For each: the graph breaks of `torch._dynamo.explain`, the
compiled output against eager (largest difference relative to the output's scale), the first compiled call's
time (compilation) and the wall-clock of compiled against eager (interleaved, medians;
`gpu_check.compile_check`). The policies' plans depend only on the timesteps, so nothing in them needs a
host sync: the break count must not grow with the model's depth.

Writes OUT/compile.json and OUT/compile.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ee_diffusion._io import atomic_write_json, atomic_write_text
from ee_diffusion.eval.solvers import ase_schedules
from ee_diffusion.eval.timing import load_average
from ee_diffusion.schedules import StaticDepth

from .gpu_check import compile_check
from .models import SETTINGS, load_setting_pipeline


def run(setting: str = "digits-deep", batch: int = 64, backend: str = "inductor", repeats: int = 5,
        device: str = "cpu", command: str = "") -> dict[str, Any]:
    """Measure the three policies (see the module doc); returns the report."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {sorted(SETTINGS)}, got {setting!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2:
        raise ValueError(f"batch must be an integer >= 2 (half the rows at t=900, half at t=100), got {batch!r}")
    started, load_before = time.perf_counter(), load_average()
    pipe = load_setting_pipeline(setting)
    model = pipe.transformer
    n = len(model.transformer_blocks)
    config = model.config

    def builder():
        def inputs(t: torch.Tensor) -> dict[str, torch.Tensor]:
            noise = torch.randn(t.shape[0], config.in_channels, config.sample_size, config.sample_size,
                                generator=torch.Generator().manual_seed(0))
            return {"hidden_states": noise, "timestep": t, "class_labels": torch.arange(t.shape[0]) % pipe.num_classes}
        return model, inputs

    policies = {"stock": None, f"static{n // 2}": StaticDepth(n // 2), "ase_released": ase_schedules(n)["released"]}
    with torch.no_grad():
        result = compile_check(builder, torch.device(device), torch.float32, backend, repeats, batch=batch,
                               policies=policies)
    return {"command": command, "setting": setting, "num_blocks": n, "batch": batch, "backend": backend,
            "device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "policies": {k: None if v is None else repr(v) for k, v in policies.items()},
            "results": {k: v for k, v in result.items() if isinstance(v, dict)},
            "load_average_before": load_before, "load_average_after": load_average(),
            "elapsed_s": time.perf_counter() - started}


def markdown(report: dict) -> str:
    """The report's table (a function of compile.json alone)."""
    lines = [f"# torch.compile ({report['backend']}) on {report['setting']} ({report['num_blocks']} blocks), "
             f"one model call at batch {report['batch']}", "",
             f"Command: `{report['command']}`; torch {report['torch']}, {report['threads']} thread(s), "
             f"{report['device']}, load average {report['load_average_before']} before and "
             f"{report['load_average_after']} after.", "",
             "| policy | graph breaks | graphs | compiled vs eager, max relative difference | first compiled call | "
             "eager median | compiled median | compiled speedup |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        t = r["timings"]
        lines.append(f"| {name} | {r['graph_breaks']} | {r['graphs']} | {r['relative_max_difference']:.1e} | "
                     f"{r['first_call_s']:.1f} s | {t['eager']['median_s'] * 1e3:.1f} ms | "
                     f"{t['compiled']['median_s'] * 1e3:.1f} ms | {1 / t['compiled']['ratio_to_reference']:.2f}x |")
    lines += ["", "Each policy's eager and compiled calls are timed interleaved with each other (medians over rounds); "
                  "the policies are timed one after another, so compare their medians across rows with care."]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="digits-deep")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager needs no compiler)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/compile"))


def main(args: argparse.Namespace, command: str = "") -> dict:
    """`python -m bench bench-compile` with parsed `args`: writes OUT/compile.json and compile.md."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run(args.setting, args.batch, args.backend, args.repeats, args.device, command)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "compile.json", report, indent=2)
    atomic_write_text(args.out / "compile.md", markdown(report))
    return report
