"""The bench's decisions, as functions of the measured rows alone (so `report.rerender` can redo them).

Definitions (docs/evaluation.md): the reference is the stock model at the conventional steps; dFID intervals are
paired (every row stores its FID on the same bootstrap resamples of image indices, `fid_resamples`); unchanged
quality (`holds_under_every_net`) and the held-out bar of a searched point (`confirms_quality`) must hold under
every feature network a report carries; the frontier is fewer steps at full depth (every solver), whose knee per
solver is its fewest steps that hold quality by `low <= 0`; a row beats the frontier at its cost when its whole
interval lies below that of the best measured frontier point that costs no more, by wall-clock and by block
evaluations (`frontier_comparison`; no interpolation between step counts).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Rows that are references or baselines, never an operating point a pipeline folder can store.
FRONTIER_FAMILIES = ("reference", "fewer_steps")
NOT_STORABLE = ("seed", "guidance", "first_block_cache", "taylorseer_cache", "mag_cache", "sea_cache")
COST_KEYS = ("time_ratio", "block_fraction")
QUALITY_TOLERANCE = 0.10  # unchanged quality may also mean: the interval lies wholly below +10% of the reference


def paired_interval(a: dict, b: dict, confidence: float) -> dict[str, float]:
    """FID(a) - FID(b) and its paired percentile interval over the shared resamples."""
    diffs = np.asarray(a["fid_resamples"], dtype=np.float64) - np.asarray(b["fid_resamples"], dtype=np.float64)
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return {"delta": float(a["fid"] - b["fid"]), "low": float(low), "high": float(high)}


def _net_view(row: dict, net: str) -> dict:
    return {"name": row["name"], "fid": row["fid_by_net"][net], "fid_resamples": row["fid_resamples_by_net"][net]}


def intervals_by_net(a: dict, b: dict, confidence: float) -> dict[str, dict[str, float]]:
    """FID(a) - FID(b) with its paired interval under every feature network both rows were scored by (rows of a
    one-network report: that network, keyed by "")."""
    if "fid_resamples_by_net" in a and "fid_resamples_by_net" in b:
        return {net: paired_interval(_net_view(a, net), _net_view(b, net), confidence) for net in a["fid_by_net"]}
    return {"": paired_interval(a, b, confidence)}


def fids_by_net(row: dict) -> dict[str, float]:
    return row["fid_by_net"] if "fid_resamples_by_net" in row else {"": row["fid"]}


def reference_row(rows: dict[str, dict]) -> dict:
    found = [r for r in rows.values() if r["family"] == "reference"]
    if len(found) != 1:
        raise ValueError(f"a report needs exactly one reference row, found {len(found)}")
    return found[0]


def holds_quality(interval: dict[str, float], reference_fid: float, tolerance: float = QUALITY_TOLERANCE) -> bool:
    """Unchanged quality by the paired interval against the reference: it includes 0 or lies below it (`low <= 0`),
    or lies wholly below +tolerance x the reference FID."""
    return interval["low"] <= 0 or interval["high"] < tolerance * reference_fid


def _check_nets(intervals: dict[str, dict[str, float]], reference_fids: dict[str, float]) -> None:
    if not intervals or set(intervals) != set(reference_fids):
        raise ValueError(f"need one interval and one reference FID per feature network, got intervals for "
                         f"{sorted(intervals)} and reference FIDs for {sorted(reference_fids)}")


def holds_under_every_net(intervals: dict[str, dict[str, float]], reference_fids: dict[str, float],
                          tolerance: float = QUALITY_TOLERANCE) -> bool:
    """Unchanged quality under every feature network: `holds_quality` of each net's interval against that net's
    reference FID (FIDs of different networks are never compared with each other)."""
    _check_nets(intervals, reference_fids)
    return all(holds_quality(intervals[n], reference_fids[n], tolerance) for n in intervals)


def confirms_quality(intervals: dict[str, dict[str, float]], reference_fids: dict[str, float],
                     tolerance: float = QUALITY_TOLERANCE) -> bool:
    """The held-out bar of a searched point, stricter than `holds_quality` (docs/evaluation.md): under every
    feature network the whole interval lies at or below +tolerance x the reference FID. A wide interval that
    merely includes 0 does not pass; the caller also widens the interval (a higher confidence) for the number of
    candidates it tries on the same held-out images."""
    _check_nets(intervals, reference_fids)
    return all(intervals[n]["high"] <= tolerance * reference_fids[n] for n in intervals)


def knees(rows: dict[str, dict]) -> dict[str, str]:
    """Per solver, the frontier row with the fewest steps whose interval against the reference has low <= 0 under
    every feature network."""
    out: dict[str, str] = {}
    for r in sorted((r for r in rows.values() if r["family"] in FRONTIER_FAMILIES), key=lambda r: r["steps"]):
        if r["solver"] not in out and all(d["low"] <= 0 for d in r["dfid_reference_by_net"].values()):
            out[r["solver"]] = r["name"]
    return out


def matched_frontier(row: dict, rows: dict[str, dict], cost: str, net: str | None = None) -> dict | None:
    """The frontier row with the lowest FID (under `net`; None: the primary network) among those that cost no
    more than `row` (by `cost`), or None."""
    pool = [r for r in rows.values() if r["family"] in FRONTIER_FAMILIES and cost in r and r["name"] != row["name"]
            and r[cost] <= row[cost] * (1 + 1e-9)]
    return min(pool, key=lambda r: r["fid"] if net is None else fids_by_net(r)[net]) if pool else None


def frontier_comparison(row: dict, rows: dict[str, dict], confidence: float) -> dict[str, Any]:
    """How `row` compares with the frontier at its wall-clock and at its block evaluations: under every feature
    network, its interval against the reference must lie wholly below that of the best frontier point (by that
    network) that costs no more; `margin` is the smallest such gap over the networks."""
    out: dict[str, Any] = {}
    for cost in COST_KEYS:
        if cost not in row:
            continue
        match = matched_frontier(row, rows, cost)
        if match is None:
            out[cost] = {"frontier": None, "beats": False, "why": "no frontier point this cheap was measured"}
            continue
        margins = {net: matched_frontier(row, rows, cost, net)["dfid_reference_by_net"][net]["low"] - d["high"]
                   for net, d in row["dfid_reference_by_net"].items()}
        margin = min(margins.values())
        out[cost] = {"frontier": match["name"], "beats": bool(margin > 0), "margin": margin,
                     "paired_vs_frontier": paired_interval(row, match, confidence)}
        if len(margins) > 1:
            out[cost]["margin_by_net"] = margins
    out["beats"] = bool(out) and all(out[c]["beats"] for c in COST_KEYS if c in out)
    return out


def decide(rows: dict[str, dict], confidence: float, timing_batch: int = 64) -> dict[str, Any]:
    """Fill every row's intervals and frontier comparison; return the knees and the recommendation.

    Recommendation: if some early-exit row holds quality and beats the frontier, the fastest row (wall-clock at
    `timing_batch`) among the frontier rows that hold quality and those exit rows; else the fastest frontier row that
    holds quality (steps alone).
    """
    ref = reference_row(rows)
    for r in rows.values():
        r["dfid_reference"] = paired_interval(r, ref, confidence)
        r["dfid_reference_by_net"] = intervals_by_net(r, ref, confidence)
        r["holds_quality"] = holds_under_every_net(r["dfid_reference_by_net"], fids_by_net(ref))
    knee_names = knees(rows)
    knee = min((rows[n] for n in knee_names.values()), key=lambda r: r.get("time_ratio", r["block_fraction"]),
               default=ref)
    for r in rows.values():
        r["dfid_knee"] = paired_interval(r, knee, confidence)
        if r["family"] not in FRONTIER_FAMILIES + ("seed", "guidance"):
            r["vs_frontier"] = frontier_comparison(r, rows, confidence)
    exits = [r for r in rows.values() if r["family"] not in FRONTIER_FAMILIES + NOT_STORABLE]
    winners = [r for r in exits if r["holds_quality"] and r["vs_frontier"]["beats"]]
    frontier_ok = [r for r in rows.values() if r["family"] in FRONTIER_FAMILIES and r["holds_quality"]]
    pool = frontier_ok + winners
    recommended = max(pool, key=lambda r: r.get("speedup", 1 / r["block_fraction"])) if pool else ref
    beating = sorted((r["name"] for r in exits if r["vs_frontier"]["beats"]), key=lambda n: rows[n]["block_fraction"])
    return {"knees": knee_names, "knee": knee["name"], "recommended": recommended["name"],
            "exit_rows_beating_frontier": beating,
            "verdict": verdict(recommended, ref, beating, rows, timing_batch)}


def verdict(recommended: dict, ref: dict, beating: list[str], rows: dict[str, dict], timing_batch: int = 64) -> str:
    """One plain sentence: what to run, how much faster, and whether early exit beats fewer steps here."""
    speed = recommended.get("speedup")
    d = recommended["dfid_reference"]
    what = (f"{recommended['name']} runs {speed:.2f}x faster than {ref['name']} (batch-{timing_batch} wall-clock)"
            if speed is not None else f"{recommended['name']} runs {recommended['block_fraction']:.2f} of the blocks")
    quality = f"dFID {d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
    holding = [n for n in beating if rows[n]["holds_quality"]]
    points = f"{len(beating)} early-exit point{'s' if len(beating) != 1 else ''}"
    beat = "beats" if len(beating) == 1 else "beat"
    if not beating:
        return (f"Early exit does not beat the fewer-steps frontier on this model: the recommendation is steps "
                f"alone. {what}, {quality}.")
    if not holding:
        return (f"{points} {beat} the fewer-steps frontier at their cost, but none of them holds quality (all are "
                f"worse than the reference by the paired interval): the recommendation is steps alone. {what}, "
                f"{quality}.")
    if recommended["family"] in FRONTIER_FAMILIES:
        return (f"{what}, {quality}. {points} {beat} the fewer-steps frontier, {len(holding)} at unchanged quality, "
                f"but steps alone are faster still at unchanged quality.")
    return (f"{what}, {quality}. {points} {beat} the fewer-steps frontier, {len(holding)} at unchanged quality; "
            f"the recommended point uses early exit.")


def operating_point(rows: dict[str, dict], recommended: str, scheduler_classes: dict[str, str], guidance: float,
                    reference_steps: int, confidence: float, measured_in: str) -> dict[str, Any]:
    """The `OperatingPoint` dict of the recommendation; per step count measured with its solver, the fastest exit
    config that beats the frontier without losing quality against full depth at those steps (else None)."""
    rec = rows[recommended]
    solver = rec["solver"]
    by_steps: dict[str, Any] = {}
    exits = [r for r in rows.values() if r["family"] not in FRONTIER_FAMILIES + NOT_STORABLE and r["solver"] == solver]
    for steps in sorted({r["steps"] for r in exits}):
        full = next((r for r in rows.values() if r["family"] in FRONTIER_FAMILIES and r["solver"] == solver
                     and r["steps"] == steps), None)
        good = [r for r in exits if r["steps"] == steps and r["vs_frontier"]["beats"] and full is not None
                and holds_under_every_net(intervals_by_net(r, full, confidence), fids_by_net(full))]
        best = max(good, key=lambda r: r.get("speedup", 1 / r["block_fraction"])) if good else None
        by_steps[str(steps)] = None if best is None else best["exit_config"]
    exit_config = rec["exit_config"] if rec["family"] not in FRONTIER_FAMILIES else None
    if exit_config is not None:
        by_steps[str(rec["steps"])] = exit_config
    return {"scheduler": scheduler_classes[solver], "num_inference_steps": rec["steps"], "guidance_scale": guidance,
            "exit_config": exit_config, "exit_configs_by_steps": by_steps, "reference_steps": reference_steps,
            "measured_in": measured_in}
