"""One prepared GPU check at the widths users run (random weights), JSON out, under 8 minutes.

`python -m ee_diffusion.benchmarks.gpu_check --out DIR` on a CUDA machine, for the DiT-XL/2, PixArt-alpha-512 and
SD3-medium-512 shapes of `ee-diffusion bench-shapes`, in bf16:

1. `timings`: every bench-shapes method (hooks without a policy, heads, a static half depth, per-row compaction,
   the released ASE schedule) at batch 1, 2 and 8 with torch SDPA, as ratios to the stock model;
2. `attention`: at batch 2, the model's output with xformers (when it imports) compared with SDPA's - exits off
   and with the ASE schedule at t = 900 - as the largest absolute difference relative to the output's scale,
   and both backends timed;
3. `compile`: the DiT-XL/2 shape hooked with a planned policy (`StaticDepth(N/2)`, and a per-row
   `TimestepSchedule`) and a declared `BatchLayout`, under `torch.compile` (inductor): the graph breaks
   (`torch._dynamo.explain`), the output against eager, and compiled against eager wall-clock.

Each part starts new work only while the time budget (`--budget-s`, default 420 s) lasts; what was skipped is
listed in the report. Quality is not measured (random weights). `--small` runs tiny stand-in shapes on the CPU
(the test suite does that, with the aot_eager backend). Output: DIR/gpu_check.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_json
from ..config import EarlyExitConfig
from ..engine import apply_early_exit, early_exit, remove_early_exit
from ..eval.timing import interleaved_timings, summarize_timings
from ..layout import BatchLayout
from ..schedules import StaticDepth, TimestepSchedule
from .shapes_bench import ASE_RELEASED, SHAPES, bench_shape, moved_to, to_device


def _small_shapes() -> dict[str, Callable[[], tuple[torch.nn.Module, Callable[[torch.Tensor], dict]]]]:
    """Tiny stand-ins of the three shapes (same classes and inputs), for a CPU run of the whole check."""
    from ..testing import tiny_dit, tiny_pixart, tiny_sd3

    def dit():
        return tiny_dit(num_layers=4, in_channels=4, num_classes=10), lambda t: {
            "hidden_states": torch.randn(t.shape[0], 4, 8, 8, generator=torch.Generator().manual_seed(0)),
            "timestep": t, "class_labels": torch.arange(t.shape[0]) % 10}

    def pixart():
        g = torch.Generator().manual_seed(0)
        return tiny_pixart(num_layers=4), lambda t: {
            "hidden_states": torch.randn(t.shape[0], 4, 8, 8, generator=g), "timestep": t,
            "encoder_hidden_states": torch.randn(t.shape[0], 5, 16, generator=g),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}

    def sd3():
        g = torch.Generator().manual_seed(0)
        return tiny_sd3(num_layers=4), lambda t: {
            "hidden_states": torch.randn(t.shape[0], 4, 8, 8, generator=g), "timestep": t,
            "encoder_hidden_states": torch.randn(t.shape[0], 5, 16, generator=g),
            "pooled_projections": torch.randn(t.shape[0], 8, generator=g)}

    return {"dit-xl-2": dit, "pixart-alpha-512": pixart, "sd3-medium-512": sd3}


def _output(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs, return_dict=False)[0].float()


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over the mean |b|: the largest deviation on the scale of the output."""
    return float((a - b).abs().max() / b.abs().mean().clamp(min=1e-12))


@torch.no_grad()
def attention_check(builder: Callable, device: torch.device, dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    """xformers against SDPA at batch 2: output differences (exits off, ASE at t = 900) and both timed."""
    if importlib.util.find_spec("xformers") is None:
        return {"xformers": "not installed"}
    model, build_inputs = builder()
    model = moved_to(model.eval(), device, dtype)
    n = len(model.transformer_blocks)
    ase = EarlyExitConfig(policy=TimestepSchedule([200, 400, 600, 800],
                                                  [max(1, min(n, round(d * n / 28))) for d in ASE_RELEASED]))
    inputs = to_device(build_inputs(torch.full((2,), 900)), device, dtype)
    sdpa = {"full": _output(model, inputs)}
    with early_exit(model, ase):
        sdpa["ase"] = _output(model, inputs)
    try:
        model.enable_xformers_memory_efficient_attention()
    except Exception as error:  # e.g. no kernels for this device: stated, not hidden
        return {"xformers": f"unavailable: {type(error).__name__}: {str(error)[:200]}"}
    out: dict[str, Any] = {"xformers": "compared"}
    xf = {"full": _output(model, inputs)}
    with early_exit(model, ase):
        xf["ase"] = _output(model, inputs)
    out["relative_max_difference"] = {k: _relative_difference(xf[k], sdpa[k]) for k in sdpa}
    calls = {"xformers": lambda: _output(model, inputs), "sdpa": lambda: _output(model, inputs)}
    # Switch the attention processors in the untimed setup step of each method.
    setup = {"xformers": model.enable_xformers_memory_efficient_attention,
             "sdpa": model.disable_xformers_memory_efficient_attention}
    out["timings"] = summarize_timings(interleaved_timings(calls, repeats=repeats, warmup=1, setup=setup,
                                                           device=device), reference="sdpa")
    model.disable_xformers_memory_efficient_attention()
    return out


def compile_check(builder: Callable, device: torch.device, dtype: torch.dtype, backend: str,
                  repeats: int, batch: int = 2, policies: dict[str, Any] | None = None) -> dict[str, Any]:
    """Planned policies under `torch.compile`: graph breaks, equality with eager, wall-clock at `batch` rows
    (timesteps 900 and 100 alternating, so a per-row schedule splits the batch). `policies` maps a name to a
    policy, or to None for the stock model without hooks; default: a static half depth and a two-bucket
    per-row schedule."""
    model, build_inputs = builder()
    model = moved_to(model.eval(), device, dtype)
    n = len(model.transformer_blocks)
    inputs = to_device(build_inputs(torch.tensor([900, 100]).repeat(batch)[:batch]), device, dtype)
    if policies is None:
        policies = {"static_half": StaticDepth(max(1, n // 2)), "per_row_schedule": TimestepSchedule([500], [n, n // 2])}
    out: dict[str, Any] = {"backend": backend, "batch": batch}
    for name, policy in policies.items():
        if policy is not None:
            apply_early_exit(model, EarlyExitConfig(policy=policy), layout=BatchLayout())
        try:
            with torch.no_grad():
                eager = _output(model, inputs)
                torch._dynamo.reset()
                explained = torch._dynamo.explain(model)(**inputs, return_dict=False)
                compiled = torch.compile(model, backend=backend)
                started = time.perf_counter()
                result = _output(compiled, inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                compile_s = time.perf_counter() - started
                times = interleaved_timings({"eager": lambda: _output(model, inputs),
                                             "compiled": lambda: _output(compiled, inputs)},
                                            repeats=repeats, warmup=1, device=device)
            out[name] = {
                "graph_breaks": int(explained.graph_break_count), "graphs": int(explained.graph_count),
                "break_reasons": sorted({str(r.reason)[:160] for r in explained.break_reasons}),
                "relative_max_difference": _relative_difference(result, eager), "first_call_s": compile_s,
                "timings": summarize_timings(times, reference="eager"),
            }
        finally:
            if policy is not None:
                remove_early_exit(model)
            torch._dynamo.reset()
    return out


def run(out: str | Path, small: bool = False, shapes: tuple[str, ...] | None = None,
        batch_sizes: tuple[int, ...] | None = None, repeats: int = 5, warmup: int = 2,
        budget_s: float = 420.0, compile_backend: str | None = None) -> dict:
    """Run the three parts (see the module doc) and write OUT/gpu_check.json; returns the report."""
    cuda = torch.cuda.is_available() and not small
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    builders = _small_shapes() if small else SHAPES
    shapes = tuple(shapes or builders)
    unknown = [s for s in shapes if s not in builders]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; choose from {sorted(builders)}")
    batch_sizes = batch_sizes or ((1, 2, 8) if cuda else (2,))
    backend = compile_backend or ("inductor" if cuda else "aot_eager")
    start = time.perf_counter()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "dtype": str(dtype), "attention": "torch SDPA unless stated", "torch": torch.__version__, "small": small,
        "timings": {}, "attention_check": {}, "compile": {}, "skipped": [],
        "note": "random weights: wall-clock and numerical agreement only, quality is not measured; ratios < 1 are "
                "faster than the stock model",
    }

    def time_left(part: str) -> bool:
        if time.perf_counter() - start < budget_s:
            return True
        report["skipped"].append(part)
        return False

    for name in shapes:
        if time_left(f"timings {name}"):
            report["timings"][name] = bench_shape(name, batch_sizes, repeats, warmup, log=print, device=device,
                                                  dtype=dtype, shapes=builders)
    for name in shapes:
        if time_left(f"attention {name}"):
            report["attention_check"][name] = attention_check(builders[name], device, dtype, repeats)
    if "dit-xl-2" in shapes and time_left("compile dit-xl-2"):
        report["compile"]["dit-xl-2"] = compile_check(builders["dit-xl-2"], device, dtype, backend, repeats)
    report["elapsed_s"] = time.perf_counter() - start
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "gpu_check.json", report, indent=2)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    parser.add_argument("--small", action="store_true", help="tiny stand-in shapes on the CPU (for tests)")
    parser.add_argument("--shapes", nargs="+", default=None, help=f"default: all of {sorted(SHAPES)}")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 2 8 on CUDA")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new parts after this long")
    args = parser.parse_args(argv)
    report = run(args.out, small=args.small, shapes=tuple(args.shapes) if args.shapes else None,
                 batch_sizes=tuple(args.batch_sizes) if args.batch_sizes else None, repeats=args.repeats,
                 budget_s=args.budget_s)
    for name, shape in report["timings"].items():
        for batch, entry in shape["batches"].items():
            print(name, batch, {k: round(v, 3) for k, v in entry["derived"].items()})
    print("attention:", report["attention_check"], "\ncompile:", {
        k: {p: v[p]["graph_breaks"] for p in v if isinstance(v[p], dict)} for k, v in report["compile"].items()})
    if report["skipped"]:
        print("skipped (time budget):", report["skipped"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
