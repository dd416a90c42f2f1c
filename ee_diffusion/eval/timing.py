"""Wall-clock timing that is fair between methods: warm-up, interleaved repeats, medians."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Mapping

import torch

from .._validation import check_int
from ..config import EarlyExitConfig
from ..hooks import apply_early_exit, is_early_exit_applied, remove_early_exit, set_exit_config


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_timings(
    methods: Mapping[str, Callable[[], object]],
    repeats: int = 20,
    warmup: int = 3,
    device: torch.device | None = None,
    setup: Mapping[str, Callable[[], object]] | None = None,
    teardown: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Time every method `repeats` times, interleaved, after `warmup` untimed rounds.

    Every round runs each method once, in an order shuffled afresh each round (seeded by the round's index), so
    machine drift favours no method. `setup[name]` runs before and `teardown[name]` after every call of that
    method, outside the timed region (e.g. the hooks a method needs: `ExitConfigSwitch`). Returns seconds per
    call, per method, in round order.

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
    setup, teardown = setup or {}, teardown or {}
    for what, table in (("setup", setup), ("teardown", teardown)):
        unknown = sorted(set(table) - set(methods))
        if unknown:
            raise ValueError(f"{what} names methods that are not timed: {unknown}; timed: {sorted(methods)}")
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        for name in random.Random(round_index).sample(names, len(names)):
            setup.get(name, lambda: None)()
            _sync(device)
            start = time.perf_counter()
            methods[name]()
            _sync(device)
            elapsed = time.perf_counter() - start
            teardown.get(name, lambda: None)()
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


class ExitConfigSwitch:
    """Puts `model` in the state a timed method needs - stock (no hooks) or hooked with an exit config - as an
    untimed `setup` step of `interleaved_timings`, so applying and removing hooks never counts in a method's time.

    ```py
    >>> import torch
    >>> from ee_diffusion import EarlyExitConfig, is_early_exit_applied
    >>> from ee_diffusion.schedules import StaticDepth
    >>> from ee_diffusion.testing import tiny_dit
    >>> model = tiny_dit(num_layers=2)
    >>> x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 900]), torch.tensor([1, 2])
    >>> switch = ExitConfigSwitch(model)
    >>> call = lambda: model(x, t, y)
    >>> times = interleaved_timings({"full": call, "static_1": call}, repeats=2, warmup=0,
    ...                             setup={"full": switch.stock, "static_1": switch.use(EarlyExitConfig(StaticDepth(1)))})
    >>> switch.close(); is_early_exit_applied(model)
    False

    ```
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def stock(self) -> None:
        """The stock model: no hooks at all."""
        if is_early_exit_applied(self.model):
            remove_early_exit(self.model)

    def use(self, config: EarlyExitConfig, heads: torch.nn.Module | None = None) -> Callable[[], None]:
        """A setup step that hooks the model (if needed) and sets `config` (and `heads`)."""

        def setup() -> None:
            if not is_early_exit_applied(self.model):
                apply_early_exit(self.model, EarlyExitConfig())
            set_exit_config(self.model, config, heads=heads)

        return setup

    def close(self) -> None:
        """Leave the model as it was found: unhooked."""
        self.stock()


def speedups(times: Mapping[str, list[float]], reference: str) -> dict[str, dict[str, float]]:
    """Per method: median seconds and its speedup, the median over rounds of reference time / method time
    (round i of each against round i of `reference`: they ran back to back), the range of those per-round ratios
    (the run's timing spread), and the number of rounds.

    ```py
    >>> speedups({"full": [2.0, 4.0, 3.0], "fast": [1.0, 1.0, 2.0]}, "full")["fast"]  # ratios 2, 4, 1.5
    {'median_s': 1.0, 'speedup': 2.0, 'speedup_range': [1.5, 4.0], 'rounds': 3}

    ```
    """
    if reference not in times:
        raise ValueError(f"reference {reference!r} is not among the timed methods {sorted(times)}")
    out = {}
    for name, values in times.items():
        ratios = [r / v for v, r in zip(values, times[reference])]
        out[name] = {"median_s": float(statistics.median(values)), "speedup": float(statistics.median(ratios)),
                     "speedup_range": [float(min(ratios)), float(max(ratios))], "rounds": len(values)}
    return out


def store_times(rows: dict, times: dict[str, list[float]], reference: str, batch: int, primary: bool) -> None:
    """Per-row timing at `batch` into a report's `rows` (name -> row); the primary batch's speedup is the row's
    `speedup` (what decisions use)."""
    for name, entry in speedups(times, reference).items():
        entry["images_per_s"] = batch / entry["median_s"]
        rows[name].setdefault("timing", {})[str(batch)] = entry
        if primary:
            rows[name]["speedup"] = entry["speedup"]
            rows[name]["time_ratio"] = 1.0 / entry["speedup"]


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (what a report records beside its timings); None where the
    platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
