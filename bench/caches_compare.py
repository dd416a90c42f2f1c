"""The comparisons of `python -m bench bench-caches`: paired FIDs under every feature net, matched-speed verdicts
against each diffusers cache and against the solver's fewer-steps frontier, and their summary."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from ee_diffusion.eval.method import Method
from ee_diffusion.eval.paired import PairedFIDs

from .caches_report import CACHE_FAMILIES


#: FID differences this small are ties whatever their sign: below the reports' printed precision, they are the float
#: rounding of two implementations of one computation (BlockForecast at TaylorSeerCache's own placement: about 1e-6).
FID_RESOLUTION = 1e-3


def _verdict(interval: dict[str, Any]) -> str:
    """wins: the whole interval below 0 under every net; loses: above 0 under any; else ties. An interval that lies
    within +-`FID_RESOLUTION` is neither below nor above 0."""
    nets = [d for d in interval["by_net"].values() if not -FID_RESOLUTION < d["low"] <= d["high"] < FID_RESOLUTION]
    below = bool(nets) and len(nets) == len(interval["by_net"]) and all(d["high"] < 0 for d in nets)
    return "wins" if below else "loses" if any(d["low"] > 0 for d in nets) else "ties"


def _robust_key(row: dict[str, Any], reference: dict[str, Any], key: str) -> float:
    """The row's worst FID relative to the reference's over the feature nets (lower is better)."""
    return max(fid / reference[f"{key}_by_net"][net] for net, fid in row[f"{key}_by_net"].items())


def speedup(row: dict[str, Any], batch: str, xl: bool = False) -> float:
    """The row's wall-clock speedup at `batch`, or with `xl` its speedup at DiT-XL/2 width (`xl_cost.add_costs`: the
    same at every batch, from the work the row did)."""
    return row["xl_cost"]["speedup"] if xl else row["timing"][batch]["speedup"]


def as_fast(row: dict[str, Any], other: dict[str, Any], batch: str, noise: dict[str, float], xl: bool = False) -> bool:
    """Whether `row` is at least as fast as `other` at `batch`: its median speedup is no lower, or it does no more
    block evaluations per image and its speedup is below by less than the run's timing noise at that batch
    (`timing_noise`): two rows doing the same work differ by a few percent from run to run either way, and a
    verdict at equal wall-clock must not turn on that. With `xl`, by the speedups at DiT-XL/2 width (pass no noise:
    they are computed from counted work, the same for two rows doing the same work)."""
    mine, theirs = speedup(row, batch, xl), speedup(other, batch, xl)
    return mine >= theirs or (row["block_fraction"] <= other["block_fraction"]
                              and mine >= theirs * (1.0 - noise.get(batch, 0.0)))


def _match(row: dict[str, Any], other: dict[str, Any], batch: str, interval: dict[str, Any],
           xl: bool = False) -> dict[str, Any]:
    return {"row": row["name"], "speedup": speedup(row, batch, xl), "dfid": interval, "result": _verdict(interval),
            "within_noise": speedup(row, batch, xl) < speedup(other, batch, xl)}


def matched_comparisons(rows: dict[str, dict], sets: dict[str, PairedFIDs], tails: list[Method],
                        noise: dict[str, float] | None = None, xl: bool = False) -> list[dict[str, Any]]:
    """Per cache row at batch b: the best per-row row at least as fast at batch b (`as_fast`; the lowest worst-net
    FID relative to the reference), among the tail forecasts, all per-row rows and the `BlockForecast` rows, with
    the paired interval of FID(ours) - FID(cache) on the cache row's image set and its verdict under every net.
    `noise`: the run's timing noise per batch (none: a row must be at least as fast by its median). `xl`: speed is
    the speedup at DiT-XL/2 width (`speedup`) instead of the wall-clock."""
    reference = next(r for r in rows.values() if r["family"] == "reference")
    pools = {"forecast": [m for m in tails if m.family == "tail_cache" and m.notes["forecast_order"] >= 1],
             "per_row": tails, "block_forecast": [m for m in tails if m.family == "block_forecast"]}
    out = []
    for name, row in rows.items():
        if row["family"] not in CACHE_FAMILIES or name.endswith("sorted"):
            continue
        b = str(row["batch"])
        entry = {"cache": name, "family": row["family"], "batch": row["batch"], "cache_speedup": speedup(row, b, xl),
                 "cache_fid": row["fid"]}
        for pool_name, pool in pools.items():
            fast = [rows[m.name] for m in pool if as_fast(rows[m.name], row, b, noise or {}, xl)]
            if not fast:
                entry[pool_name] = None
                continue
            key = "fid" if row["scored_on"] == "all" else "fid_batch1_set"
            best = min(fast, key=lambda r: _robust_key(r, reference, key))
            entry[pool_name] = _match(best, row, b, sets[row["scored_on"]].difference(best["name"], name), xl)
        out.append(entry)
    return out


def frontier_comparisons(rows: dict[str, dict], sets: dict[str, PairedFIDs], tails: list[Method],
                         batches: tuple[int, ...], noise: dict[str, float] | None = None,
                         xl: bool = False) -> list[dict[str, Any]]:
    """Per per-row row and batch: the solver's fewer-steps row at least as fast (`as_fast`, the same rule as
    against the caches; `xl`: at DiT-XL/2 width) with the lowest worst-net FID, and FID(row) - FID(that row) with
    its verdict (on all images; the rows do not depend on the batch)."""
    reference = next(r for r in rows.values() if r["family"] == "reference")
    steps = [r for r in rows.values() if r["family"] == "fewer_steps"]
    out = []
    for method in tails:
        row = rows[method.name]
        for b in map(str, batches):
            fast = [r for r in steps if as_fast(r, row, b, noise or {}, xl)]
            entry = {"row": method.name, "batch": int(b), "speedup": speedup(row, b, xl), "frontier": None}
            if fast:
                best = min(fast, key=lambda r: _robust_key(r, reference, "fid"))
                entry["frontier"] = _match(best, row, b, sets["all"].difference(method.name, best["name"]), xl)
            out.append(entry)
    return out


def summarize(comparisons: list[dict]) -> dict[str, Any]:
    """Per cache family and batch: how many of its settings the tail forecasts and the `BlockForecast` rows win
    against, tie, lose or cannot match in speed; and whether the issue's conditions hold (a win at some matched
    speed; no loss at batch 1)."""
    out: dict[str, Any] = {}
    for c in comparisons:
        family = out.setdefault(c["family"], {"by_batch": {}, "block_forecast_by_batch": {}})
        for pool, field in (("forecast", "by_batch"), ("block_forecast", "block_forecast_by_batch")):
            counts = family[field].setdefault(str(c["batch"]), {"wins": 0, "ties": 0, "loses": 0, "no_faster_row": 0})
            counts[c[pool]["result"] if c.get(pool) else "no_faster_row"] += 1
    for family in out.values():
        for field, prefix in (("by_batch", "forecast"), ("block_forecast_by_batch", "block_forecast")):
            batches = family[field]
            family[f"{prefix}_wins_somewhere"] = any(v["wins"] for v in batches.values())
            # A cache setting faster than every row of ours is not a loss by the interval, but not a proof either:
            # the condition holds only when every batch-1 setting is matched in speed and none is lost.
            at_1 = batches.get("1")
            family[f"{prefix}_never_loses_at_batch_1"] = None if at_1 is None else \
                at_1["loses"] == 0 and at_1["no_faster_row"] == 0
    return out


def timing_noise(times: Mapping[str, list[float]], reference: str) -> float:
    """How much a method's speedup moves from round to round: the median over the methods other than `reference`
    of half the interquartile range of their per-round ratios (reference time / method time), relative to the
    median ratio. Two speedups that differ by less than this are not told apart by the timing; 0.0 with fewer than
    two rounds (nothing to measure it from).

    ```py
    >>> times = {"full": [2.0, 2.0, 2.0, 2.0, 2.0], "fast": [1.0, 0.8, 1.25, 0.5, 2.0]}  # ratios 2, 2.5, 1.6, 4, 1
    >>> timing_noise(times, "full")  # quartiles 1.6 and 2.5 around the median 2
    0.225
    >>> timing_noise({"full": [2.0], "fast": [1.0]}, "full")
    0.0

    ```
    """
    if reference not in times:
        raise ValueError(f"reference {reference!r} is not among the timed methods {sorted(times)}")
    spreads = []
    for name, values in times.items():
        if name == reference or len(values) < 2:
            continue
        ratios = [r / v for v, r in zip(values, times[reference])]
        low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
        spreads.append((high - low) / 2 / statistics.median(ratios))
    return round(float(statistics.median(spreads)), 6) if spreads else 0.0
