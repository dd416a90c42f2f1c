"""One prepared GPU check at the widths users run (random weights): one command, under 5 minutes, JSON and Markdown.

`python -m bench.gpu_check --out DIR` on a CUDA machine (`bench/scripts/gpu_check.sh` installs the
carried wheels first; docs/gpu-check.md), for the DiT-XL/2, PixArt-alpha-512 and SD3-medium-512 shapes of
`python -m bench bench-shapes`, in bf16, each model built once, on the GPU, and shared by the parts:

1. `timings <shape>`: every bench-shapes method (hooks without a policy, heads, a static half depth, per-row
   compaction, the released ASE schedule) at batch 1, 2 and 8 with torch SDPA, as ratios to the stock model;
2. `compile dit-xl-2 <policy>`: the DiT-XL/2 shape hooked with a planned policy (`static_half`:
   `StaticDepth(N/2)`; `per_row_schedule`: a two-bucket `TimestepSchedule` that splits the batch) and a declared
   `BatchLayout`, under `torch.compile` (inductor): the graph breaks (`torch._dynamo.explain`), the output
   against eager, the first (compiling) call's time and compiled against eager wall-clock;
3. `attention <shape>`: at batch 2, the model's output with xformers compared with SDPA's - exits off and with the
   ASE schedule at t = 900 - as the largest absolute difference relative to the output's scale, both timed.

Nothing is refused silently: every part ends as `ran`, `skipped` (no CUDA device, xformers not installed or not
running with this torch, time budget spent), `failed` (it raised: the error is kept) or `stopped` (cut off at the
budget), with the reason, in DIR/gpu_check.json and DIR/gpu_check.md (rendered from the JSON by `gpu_report.markdown`;
both rewritten after every part). `--budget-s` (default 210 s) bounds the parts' whole wall-clock: a part starts
only while the budget lasts and is stopped when it runs out, so imports, model construction and compilation
included the run ends well under 300 s. The last log line says whether every part ran; the exit code is 0 only
then. Quality is not measured (random weights). `--small` runs tiny stand-ins of the three shapes on the CPU
(the test suite does, with the aot_eager backend).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ee_diffusion._io import atomic_write_json, atomic_write_text
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import apply_early_exit, early_exit, remove_early_exit
from ee_diffusion.eval.timing import interleaved_timings
from ee_diffusion.layout import BatchLayout
from ee_diffusion.schedules import StaticDepth, TimestepSchedule

from .compute import summarize_timings
from .gpu_parts import PartSkipped, run_part
from .gpu_report import markdown, summary_line
from .shapes_bench import ASE_RELEASED, SHAPES, bench_shape, moved_to, to_device

#: The default time budget of all parts together, in seconds (see the module doc).
DEFAULT_BUDGET_S = 210.0
#: The kinds of part, in the order they run.
PART_KINDS = ("timings", "compile", "attention")
#: The policies of the compile part, on the DiT-XL/2 shape.
COMPILE_POLICIES = ("static_half", "per_row_schedule")


def _small_shapes() -> dict[str, Callable[[], tuple[torch.nn.Module, Callable[[torch.Tensor], dict]]]]:
    """Tiny stand-ins of the three shapes (same classes and inputs), for a CPU run of the whole check."""
    from ee_diffusion.testing import tiny_dit, tiny_pixart, tiny_sd3

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


def xformers_status(cuda: bool) -> dict[str, Any]:
    """Whether xformers can run here: {"version": str | None, "usable": bool, "reason": why not, or None}.

    Tried as diffusers' `enable_xformers_memory_efficient_attention` tries it - one `memory_efficient_attention`
    call on CUDA - so a wheel built for another torch or CUDA is reported with its error, not hidden.
    """
    if importlib.util.find_spec("xformers") is None:
        return {"version": None, "usable": False,
                "reason": "xformers is not installed (carry its wheel: docs/gpu-check.md)"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import xformers
            import xformers.ops
        except Exception as error:
            return {"version": None, "usable": False,
                    "reason": f"xformers does not import: {type(error).__name__}: {str(error)[:300]}"}
    version = str(getattr(xformers, "__version__", "unknown"))
    # A wheel built for another torch or CUDA imports, but its C++/CUDA extensions do not load (xformers keeps
    # the error, which names the torch and CUDA it was built for); some of its ops may still run without them.
    cpp_error = getattr(getattr(xformers, "_cpp_lib", None), "_cpp_library_load_exception", None)
    cpp = "loaded" if cpp_error is None else " ".join(str(cpp_error).split())[:300]
    if not cuda:
        return {"version": version, "usable": False, "cpp_extensions": cpp,
                "reason": "no CUDA device: xformers has no CPU kernels"}
    try:
        q = torch.randn((1, 2, 40), device="cuda")
        xformers.ops.memory_efficient_attention(q, q, q)
    except Exception as error:
        said = "; ".join(str(w.message)[:200] for w in caught)
        return {"version": version, "usable": False, "cpp_extensions": cpp,
                "reason": f"xformers {version} does not run with torch {torch.__version__} (CUDA "
                          f"{torch.version.cuda}): {type(error).__name__}: {str(error)[:300]}"
                          + (f"; at import: {said}" if said else "")
                          + (f"; C++/CUDA extensions: {cpp}" if cpp_error is not None else "")}
    return {"version": version, "usable": True, "cpp_extensions": cpp, "reason": None}


def _attention_processors(model: torch.nn.Module) -> dict[torch.nn.Module, Any]:
    """Every attention module's processor, to put back exactly: diffusers' `disable_xformers_memory_efficient_
    attention` sets `AttnProcessor2_0` everywhere, also on SD3's joint attention, whose processor differs."""
    return {m: m.processor for m in model.modules() if hasattr(m, "set_processor") and hasattr(m, "processor")}


def _restore_processors(saved: dict[torch.nn.Module, Any]) -> None:
    for module, processor in saved.items():
        module.set_processor(processor)


@torch.no_grad()
def attention_check(model: torch.nn.Module, build_inputs: Callable[[torch.Tensor], dict], device: torch.device,
                    dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    """xformers against SDPA at batch 2 on `model` (on `device` in `dtype`): output differences (exits off, ASE
    at t = 900) and both timed. Raises `PartSkipped` when xformers cannot run here; leaves the model's attention
    processors as it found them."""
    status = xformers_status(device.type == "cuda")
    if not status["usable"]:
        raise PartSkipped(status["reason"])
    n = len(model.transformer_blocks)
    ase = EarlyExitConfig(policy=TimestepSchedule([200, 400, 600, 800],
                                                  [max(1, min(n, round(d * n / 28))) for d in ASE_RELEASED]))
    inputs = to_device(build_inputs(torch.full((2,), 900)), device, dtype)
    sdpa_processors = _attention_processors(model)
    sdpa = {"full": _output(model, inputs)}
    with early_exit(model, ase):
        sdpa["ase"] = _output(model, inputs)
    try:
        model.enable_xformers_memory_efficient_attention()
        xformers_processors = _attention_processors(model)
        xf = {"full": _output(model, inputs)}
        with early_exit(model, ase):
            xf["ase"] = _output(model, inputs)
        out: dict[str, Any] = {"xformers": status["version"], "cpp_extensions": status["cpp_extensions"],
                               "relative_max_difference": {k: _relative_difference(xf[k], sdpa[k]) for k in sdpa}}
        calls = {"xformers": lambda: _output(model, inputs), "sdpa": lambda: _output(model, inputs)}
        # Switch the attention processors in the untimed setup step of each method.
        setup = {"xformers": lambda: _restore_processors(xformers_processors),
                 "sdpa": lambda: _restore_processors(sdpa_processors)}
        out["timings"] = summarize_timings(interleaved_timings(calls, repeats=repeats, warmup=1, setup=setup,
                                                               device=device), reference="sdpa")
    finally:
        _restore_processors(sdpa_processors)
    return out


def compile_policy(model: torch.nn.Module, inputs: dict, policy: Any, backend: str, repeats: int,
                   device: torch.device) -> dict[str, Any]:
    """One policy (None: the stock model without hooks) under `torch.compile(backend=backend)`: graph breaks,
    equality with eager, the first call's time, compiled against eager wall-clock. Removes what it applied."""
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
        return {
            "graph_breaks": int(explained.graph_break_count), "graphs": int(explained.graph_count),
            "break_reasons": sorted({str(r.reason)[:160] for r in explained.break_reasons}),
            "relative_max_difference": _relative_difference(result, eager), "first_call_s": compile_s,
            "timings": summarize_timings(times, reference="eager"),
        }
    finally:
        if policy is not None:
            remove_early_exit(model)
        torch._dynamo.reset()


def _compile_inputs(build_inputs: Callable, batch: int, device: torch.device, dtype: torch.dtype) -> dict:
    """`batch` rows at timesteps 900 and 100 alternating, so a per-row schedule splits the batch."""
    return to_device(build_inputs(torch.tensor([900, 100]).repeat(batch)[:batch]), device, dtype)


def _default_policies(n: int) -> dict[str, Any]:
    return {"static_half": StaticDepth(max(1, n // 2)), "per_row_schedule": TimestepSchedule([500], [n, n // 2])}


def compile_check(builder: Callable, device: torch.device, dtype: torch.dtype, backend: str,
                  repeats: int, batch: int = 2, policies: dict[str, Any] | None = None) -> dict[str, Any]:
    """Planned policies under `torch.compile`: graph breaks, equality with eager, wall-clock at `batch` rows
    (timesteps 900 and 100 alternating, so a per-row schedule splits the batch). `policies` maps a name to a
    policy, or to None for the stock model without hooks; default: a static half depth and a two-bucket
    per-row schedule."""
    model, build_inputs = builder()
    model = moved_to(model.eval(), device, dtype)
    inputs = _compile_inputs(build_inputs, batch, device, dtype)
    if policies is None:
        policies = _default_policies(len(model.transformer_blocks))
    out: dict[str, Any] = {"backend": backend, "batch": batch}
    for name, policy in policies.items():
        out[name] = compile_policy(model, inputs, policy, backend, repeats, device)
    return out


def _on(device: torch.device, builder: Callable) -> Callable:
    """`builder` with the model's parameters created on `device` (a CUDA init of a 2B-parameter model takes a
    second, a CPU one far longer); the inputs are still built on the CPU, from seeded CPU generators."""
    def build():
        with device:
            return builder()
    return build


class _Models:
    """Each shape's model built once, on the device in the dtype, and shared by the parts; dropped after a part
    that did not end cleanly, so the next part builds a fresh one."""

    def __init__(self, builders: dict[str, Callable], device: torch.device, dtype: torch.dtype) -> None:
        self.builders, self.device, self.dtype = builders, device, dtype
        self.built: dict[str, tuple[torch.nn.Module, Callable]] = {}

    def get(self, name: str) -> tuple[torch.nn.Module, Callable]:
        if name not in self.built:
            torch.manual_seed(0)
            model, build_inputs = _on(self.device, self.builders[name])()
            self.built[name] = (moved_to(model.eval(), self.device, self.dtype), build_inputs)
        return self.built[name]

    def builder(self, name: str) -> Callable:
        return lambda: self.get(name)

    def drop(self, name: str | None = None) -> None:
        for key in [name] if name is not None else list(self.built):
            self.built.pop(key, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _write(out: Path, report: dict) -> None:
    atomic_write_json(out / "gpu_check.json", report, indent=2)
    atomic_write_text(out / "gpu_check.md", markdown(report))


def run(out: str | Path, small: bool = False, shapes: tuple[str, ...] | None = None,
        batch_sizes: tuple[int, ...] | None = None, repeats: int = 5, warmup: int = 2,
        budget_s: float = DEFAULT_BUDGET_S, compile_backend: str | None = None,
        parts: tuple[str, ...] = PART_KINDS, command: str = "") -> dict:
    """Run the parts (see the module doc) and write OUT/gpu_check.json and OUT/gpu_check.md; returns the report.

    Without CUDA (and without `small`) every part is listed as skipped, with the reason, and nothing is built.
    """
    builders = _small_shapes() if small else SHAPES
    shapes = tuple(shapes or builders)
    unknown = [s for s in shapes if s not in builders]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; choose from {sorted(builders)}")
    bad_parts = [p for p in parts if p not in PART_KINDS]
    if bad_parts or not parts:
        raise ValueError(f"parts must be a non-empty selection of {list(PART_KINDS)}, got {list(parts)}")
    if budget_s < 0:
        raise ValueError(f"budget_s must be >= 0 seconds, got {budget_s}")
    cuda = torch.cuda.is_available() and not small
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    batch_sizes = batch_sizes or ((1, 2, 8) if cuda else (2,))
    backend = compile_backend or ("inductor" if cuda else "aot_eager")
    start = time.perf_counter()
    import diffusers

    xformers = xformers_status(cuda)
    report: dict[str, Any] = {
        "command": command,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "cuda": cuda, "dtype": str(dtype), "attention": "torch SDPA unless stated", "small": small,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torch_cuda": torch.version.cuda, "diffusers": diffusers.__version__,
                     "xformers": xformers["version"]},
        "xformers": xformers,
        "budget_s": budget_s, "batch_sizes": list(batch_sizes), "repeats": repeats, "warmup": warmup,
        "compile_backend": backend,
        "parts": [], "timings": {}, "compile": {}, "attention_check": {},
        "note": "random weights: wall-clock and numerical agreement only, quality is not measured; ratios < 1 are "
                "faster than the reference",
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    planned = [(kind, name, None) for kind in ("timings",) if kind in parts for name in shapes]
    if "compile" in parts and "dit-xl-2" in shapes:
        planned += [("compile", "dit-xl-2", policy) for policy in COMPILE_POLICIES]
    planned += [("attention", name, None) for name in shapes if "attention" in parts]
    models = _Models(builders, device, dtype)
    deadline = start + budget_s

    def work(kind: str, name: str, policy: str | None) -> Callable[[], Any]:
        if kind == "timings":
            return lambda: bench_shape(name, batch_sizes, repeats, warmup, log=print, device=device, dtype=dtype,
                                       shapes={name: models.builder(name)})
        if kind == "compile":
            def compile_one():
                model, build_inputs = models.get(name)
                inputs = _compile_inputs(build_inputs, 2, device, dtype)
                return compile_policy(model, inputs, _default_policies(len(model.transformer_blocks))[policy],
                                      backend, repeats, device)
            return compile_one
        return lambda: attention_check(*models.get(name), device, dtype, repeats)

    try:
        for kind, name, policy in planned:
            label = f"{kind} {name}" + (f" {policy}" if policy else "")
            if not cuda and not small:
                report["parts"].append({"part": label, "status": "skipped", "elapsed_s": 0.0, "reason":
                                        f"no CUDA device (torch {torch.__version__}, built with CUDA "
                                        f"{torch.version.cuda}; torch.cuda.is_available() is False); --small "
                                        f"runs the CPU stand-in"})
                continue
            result = run_part(report, label, work(kind, name, policy), deadline)
            if report["parts"][-1]["status"] in ("failed", "stopped"):
                models.drop(name)
            if result is not None:
                if kind == "timings":
                    report["timings"][name] = result
                elif kind == "compile":
                    report["compile"].setdefault(name, {"backend": backend, "batch": 2})[policy] = result
                else:
                    report["attention_check"][name] = result
            report["elapsed_s"] = time.perf_counter() - start
            _write(out, report)
    finally:
        models.drop()
    report["all_ran"] = all(p["status"] == "ran" for p in report["parts"])
    report["elapsed_s"] = time.perf_counter() - start
    _write(out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--small", action="store_true", help="tiny stand-in shapes on the CPU (for tests)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=None,
                        help=f"default: all of {sorted(SHAPES)}")
    parser.add_argument("--parts", nargs="+", choices=PART_KINDS, default=list(PART_KINDS),
                        help="which kinds of part to run (default: all, in this order)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 2 8 on CUDA")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"wall-clock of all parts together, in seconds (default: {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--compile-backend", default=None, help="default: inductor on CUDA, aot_eager on the CPU")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # each part's outcome as it ends
    report = run(args.out, small=args.small, shapes=tuple(args.shapes) if args.shapes else None,
                 batch_sizes=tuple(args.batch_sizes) if args.batch_sizes else None, repeats=args.repeats,
                 warmup=args.warmup, budget_s=args.budget_s, compile_backend=args.compile_backend,
                 parts=tuple(args.parts),
                 command="python -m bench.gpu_check " + shlex.join(argv))
    print(markdown(report))
    print(f"gpu_check: report in {args.out / 'gpu_check.md'} and {args.out / 'gpu_check.json'}")
    print(summary_line(report), flush=True)
    return 0 if report["all_ran"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
