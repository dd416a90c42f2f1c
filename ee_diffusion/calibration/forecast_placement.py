"""Where a `BlockForecast` computes: the placement of k computed timesteps in a run, searched by fidelity.

TaylorSeer's cadence computes a fixed pattern (a warm-up, then every interval-th step from an offset); which
steps compute matters as much as how many: at 10 DPM-Solver++ steps with 3 computed, the pattern decides whether
the last, detail-forming step is computed at all. This module searches the placement for a run of n distinct
timesteps and a count k: a local search over the index sets that contain the first timestep (a row's first call
has no history), each candidate sampled for real on the calibration set and scored by its mean per-image PSNR
against the full model's images from the same noise (never by a feature network, so the nets that later judge the
placement did not pick it). It starts from the evenly spread placements with and without the last timestep, and
moves one computed timestep at a time within its gap to its neighbours while the PSNR improves.

`calibrate_block_forecast(..., computes=(k,))` runs it on a pipeline; here with a made-up score that prefers
computing the last timestep and, after it, the middle one:

```py
>>> def score(calls):
...     return {"psnr_db_mean": 30.0 + 5 * (9 in calls) - abs(sum(calls) / len(calls) - 4.5)}
>>> trials = search_placement(score, n=10, k=3)
>>> max(trials, key=lambda t: t["psnr_db_mean"])["calls"]
[0, 4, 9]

```
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: Placements sampled at most per count (the local search stops earlier when no move improves the PSNR).
MAX_TRIALS = 60


def starts(n: int, k: int) -> list[tuple[int, ...]]:
    """The search's starting placements of k computed among n timesteps: evenly spread over 0..n-1 (the last
    timestep computed) and over 0..n-1 as if there were one more (it is not), without duplicates.

    ```py
    >>> starts(10, 3)
    [(0, 4, 9), (0, 3, 7)]

    ```
    """
    if k == 1:
        return [(0,)]
    out = []
    # k points from 0 to n - 1 inclusive, and the first k of k + 1 points from 0 to n (n itself is no timestep).
    for span, gaps in ((n - 1, k - 1), (n, k)):
        picked = tuple(sorted({round(i * span / gaps) for i in range(k)}))
        if len(picked) == k and picked not in out:
            out.append(picked)
    return out or [tuple(range(k))]


def neighbours(calls: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    """Every placement that moves one computed timestep (not the first) to another free index between its
    neighbours (the last: up to n - 1)."""
    out = []
    for i in range(1, len(calls)):
        low, high = calls[i - 1] + 1, (calls[i + 1] - 1 if i + 1 < len(calls) else n - 1)
        out.extend(calls[:i] + (j,) + calls[i + 1:] for j in range(low, high + 1) if j != calls[i])
    return out


def search_placement(score: Callable[[tuple[int, ...]], dict[str, Any]], n: int, k: int,
                     max_trials: int = MAX_TRIALS) -> list[dict[str, Any]]:
    """Local search for the k of n timesteps to compute (index 0 always among them) that maximise
    `score(calls)["psnr_db_mean"]`; returns every scored trial (each `score`'s dict with "calls" added), the
    search's pick being the one of highest PSNR. 1 <= k < n."""
    if not 1 <= k < n:
        raise ValueError(f"a placement computes between 1 and {n - 1} of the run's {n} timesteps, got {k}")
    trials: dict[tuple[int, ...], dict[str, Any]] = {}

    def measured(calls: tuple[int, ...]) -> dict[str, Any]:
        if calls not in trials:
            trials[calls] = {**score(calls), "calls": list(calls)}
            logger.info("placement %s: PSNR %.2f dB", list(calls), trials[calls]["psnr_db_mean"])
        return trials[calls]

    best = max((measured(s) for s in starts(n, k)), key=lambda t: t["psnr_db_mean"])
    while len(trials) < max_trials:
        fresh = [c for c in neighbours(tuple(best["calls"]), n) if c not in trials][: max_trials - len(trials)]
        if not fresh:
            break
        challenger = max((measured(c) for c in fresh), key=lambda t: t["psnr_db_mean"])
        if challenger["psnr_db_mean"] <= best["psnr_db_mean"]:
            break
        best = challenger
    return list(trials.values())
