"""Wall-clock timing that is fair between methods: warm-up, interleaved repeats, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

from .._validation import check_int


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_timings(
    methods: Mapping[str, Callable[[], object]],
    repeats: int = 20,
    warmup: int = 3,
    device: torch.device | None = None,
) -> dict[str, list[float]]:
    """Time every method `repeats` times in round-robin order (A B C A B C ...), after `warmup` rounds.

    Interleaving makes slow drifts of the machine (other processes, clock changes) hit every method alike.
    Returns seconds per call, per method.

    ```py
    >>> times = interleaved_timings({"a": lambda: sum(range(100)), "b": lambda: None}, repeats=3, warmup=1)
    >>> sorted(times), len(times["a"])
    (['a', 'b'], 3)

    ```
    """
    check_int(repeats, "repeats", 1, "timed rounds")
    check_int(warmup, "warmup", 0, "untimed rounds")
    if not methods:
        raise ValueError("methods must not be empty")
    for _ in range(warmup):
        for fn in methods.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


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
