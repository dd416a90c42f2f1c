"""Compute accounting: FLOPs (torch.utils.flop_counter), peak memory, and the overheads of early exit.

FLOPs are counted by running the real call under `FlopCounterMode`, so whatever runs is counted: the blocks
that ran, the exit heads, the output head and a VAE decode when there is one. Gathering and scattering rows
(`index_select`, `index_copy_`) moves memory and has no FLOPs; its cost is measured in wall-clock by
`overhead_breakdown`.
"""

from __future__ import annotations

import resource
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.eval.timing import ExitConfigSwitch, interleaved_timings


def count_flops(fn: Callable[[], Any]) -> dict[str, int]:
    """Run `fn` under `FlopCounterMode`; total FLOPs and the FLOPs inside exit heads (`UncertaintyHeads`).

    ```py
    >>> import torch
    >>> count_flops(lambda: torch.ones(2, 3) @ torch.ones(3, 4))["total"]
    48

    ```
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    per_module = counter.get_flop_counts()
    total = int(sum(per_module.get("Global", {}).values()))
    heads = 0
    for name, counts in per_module.items():
        # Module names are dotted paths; the heads are the `UncertaintyHeads` module wherever it sits.
        if name.split(".")[-1] in ("UncertaintyHeads", "exit_heads"):
            heads = max(heads, int(sum(counts.values())))
    return {"total": total, "heads": heads}


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> dict[str, float]:
    """Peak memory of `fn` in MiB: CUDA allocator peak on GPUs; on Linux CPUs, the process's resident-set peak
    above its level before the call (reset through /proc/self/clear_refs), else the lifetime peak."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return {"peak_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_above_start_mib": (torch.cuda.max_memory_allocated(device) - before) / 2**20, "kind": "cuda"}
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
        before = _status_kib(status, "VmRSS")
        fn()
        peak = _status_kib(status, "VmHWM")
        return {"peak_mib": peak / 1024, "peak_above_start_mib": max(peak - before, 0) / 1024, "kind": "cpu_rss"}
    except OSError:
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_mib": peak / 1024, "peak_above_start_mib": float("nan"), "kind": "cpu_lifetime_max_rss"}


def _status_kib(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in {path}")


def overhead_breakdown(pipe: Any, batch_size: int, repeats: int = 10, warmup: int = 2, guided: bool = True) -> dict:
    """Wall-clock of one model call at the real shape, to separate what early exit itself costs.

    Methods: `full` (stock model), `hooks_off` (hooks on, never exits: hook overhead), `heads_no_exit` (heads
    after every block, never passing: head overhead), `static_k` for k = N/2 (the cost of k blocks), and
    `half_rows_exit_k` (half the rows exit after block k, planned: compaction). The gather/scatter overhead is
    `half_rows_exit_k` minus the ideal `(static_k + full) / 2`.
    """
    from ee_diffusion.schedules import StaticDepth, TimestepSchedule, UncertaintyThreshold

    model = pipe.transformer
    n = len(model.transformer_blocks)
    k = max(1, n // 2)
    cfg = model.config
    rows = batch_size * (2 if guided else 1)
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    x = torch.randn(rows, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=generator).to(device)
    y = (torch.arange(rows) % int(cfg.num_embeds_ada_norm)).to(device)
    t_uniform = torch.full((rows,), 500, device=device)
    t_mixed = torch.tensor([900, 100] * (rows // 2) + [100] * (rows % 2), device=device)
    configs: dict[str, tuple[EarlyExitConfig, Any, torch.Tensor]] = {
        "hooks_off": (EarlyExitConfig(), None, t_uniform),
        f"static_{k}": (EarlyExitConfig(policy=StaticDepth(k)), None, t_uniform),
        f"half_rows_exit_{k}": (EarlyExitConfig(policy=TimestepSchedule([500], [n, k])), None, t_mixed),
    }
    if pipe.exit_heads is not None:
        configs["heads_no_exit"] = (EarlyExitConfig(policy=UncertaintyThreshold(0.999999, patience=1)), pipe.exit_heads, t_uniform)
    switch = ExitConfigSwitch(model)
    methods = {"full": lambda: model(x, t_uniform, y).sample}
    setup = {"full": switch.stock}
    for name, (config, heads, t) in configs.items():
        methods[name] = lambda t=t: model(x, t, y).sample
        setup[name] = switch.use(config, heads)
    try:
        with torch.no_grad():
            times = interleaved_timings(methods, repeats=repeats, warmup=warmup, device=device, setup=setup)
    finally:
        switch.close()
    summary = summarize_timings(times, reference="full")
    full_s = summary["full"]["median_s"]
    ideal_half = (summary[f"static_{k}"]["median_s"] + full_s) / 2
    result = {
        "rows_per_call": rows,
        "num_blocks": n,
        "timings": summary,
        "hook_overhead_fraction": summary["hooks_off"]["ratio_to_reference"] - 1,
        "gather_scatter_overhead_fraction": (summary[f"half_rows_exit_{k}"]["median_s"] - ideal_half) / full_s,
    }
    if "heads_no_exit" in summary:
        result["heads_overhead_fraction"] = summary["heads_no_exit"]["ratio_to_reference"] - 1
    return result


def summarize_timings(times: Mapping[str, list[float]], reference: str) -> dict[str, dict[str, float]]:
    """Median seconds per method and its ratio to `reference`: median of per-round ratios (robust to drift).

    Round i of every method is divided by round i of `reference` (they ran back to back), and the median of
    those ratios is reported, not the ratio of the medians.

    ```py
    >>> summary = summarize_timings({"full": [1.0, 3.0, 2.0], "fast": [0.8, 0.6, 1.2]}, reference="full")
    >>> summary["fast"]["median_s"], summary["fast"]["ratio_to_reference"]  # ratios 0.8, 0.2, 0.6
    (0.8, 0.6)

    ```
    """
    if reference not in times:
        raise ValueError(f"reference {reference!r} is not among the timed methods {sorted(times)}")
    ref = times[reference]
    rounds = {name: len(values) for name, values in times.items()}
    if set(rounds.values()) != {len(ref)}:
        raise ValueError(f"every method needs as many rounds as {reference!r} ({len(ref)}), got {rounds}")
    summary = {}
    for name, values in times.items():
        ratios = [v / r for v, r in zip(values, ref)]
        summary[name] = {
            "median_s": statistics.median(values),
            "min_s": min(values),
            "ratio_to_reference": statistics.median(ratios),
        }
    return summary
