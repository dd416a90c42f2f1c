"""The bench report's files: Markdown tables and the Pareto plot, rendered from OUT/report.json alone.

`pipeline_bench.run` (and the repository's `bench/presets.py`, with its own Markdown) measures and decides;
everything here is a function of the report, so `rerender(out)` re-decides (`frontier.decide`, from the stored
bootstrap resamples) and rewrites OUT/report.json, OUT/report.md and OUT/pareto.png without sampling anything.
Files are written atomically (`ee_diffusion._io`): a reader never sees a half-written report or model index.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_save_figure, atomic_write_json, atomic_write_text, read_json_file
from . import frontier


def _interval(d: dict[str, float] | None) -> str:
    return "" if d is None else f"{d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def _reference_interval(row: dict) -> str:
    """dFID against the reference: under every network when the row carries several (each its own interval)."""
    by_net = row.get("dfid_reference_by_net") or {}
    if len(by_net) <= 1:
        return _interval(row.get("dfid_reference"))
    return "; ".join(f"{net}: {_interval(d)}" for net, d in by_net.items())


def _speed(row: dict, batch: str) -> str:
    entry = row.get("timing", {}).get(batch)
    if entry is None:
        return ""
    low, high = entry.get("speedup_range", (None, None))  # reports written before the range existed have none
    return f"{entry['speedup']:.2f}x" + ("" if low is None else f" ({low:.2f}-{high:.2f})")


def rows_table(entry: dict, names: list[str] | None = None) -> list[str]:
    """The Markdown table of `names` (default: every row, frontier first, by cost)."""
    rows = entry["rows"]
    batches = [str(b) for b in entry["timing"]["batches"]]
    names = names or sorted(rows, key=lambda n: (rows[n]["family"] not in frontier.FRONTIER_FAMILIES,
                                                 rows[n]["solver"], -rows[n]["block_fraction"]))
    lines = ["| method | family | FID | dFID vs reference (90% CI) | dFID vs knee | holds quality | beats frontier "
             "(margin) | blocks | " + " | ".join(f"speedup @{b}" for b in batches) + " | PSNR dB | SSIM | feat. dist | acc |",
             "|---|---|---:|---|---|:-:|---|---:|" + "---:|" * len(batches) + "---:|---:|---:|---:|"]
    for name in names:
        r = rows[name]
        vs = r.get("vs_frontier")
        if vs is None:
            beats = ""
        else:
            margins = [vs[c]["margin"] for c in frontier.COST_KEYS if c in vs and "margin" in vs[c]]
            beats = ("yes" if vs["beats"] else "no") + (f" ({min(margins):+.2f})" if margins else "")
        f = r["fidelity"]
        lines.append(
            f"| {name} | {r['family']} | {r['fid']:.3f} | {_reference_interval(r)} | "
            f"{_interval(r.get('dfid_knee'))} | {'yes' if r.get('holds_quality') else 'no'} | {beats} | "
            f"{r['block_fraction']:.3f} | " + " | ".join(_speed(r, b) for b in batches) +
            f" | {f['psnr_db']:.1f} | {f['ssim']:.4f} | {f.get('feature_distance', float('nan')):.3f} | "
            f"{r.get('accuracy', float('nan')):.3f} |")
    return lines


def markdown(report: dict) -> str:
    """A `bench --pipeline` report as Markdown: per entry the verdict, the recommendation and every method (the
    repository's `bench/presets.py` renders its own reports)."""
    env = report["environment"]
    lines = ["# ee-diffusion bench --pipeline", "", f"Command: `{report['command']}`", "",
             f"torch {env['torch']}, {env['threads']} threads, {env['processes']} process(es), {env['device']} "
             f"{env['dtype']}; total {report['elapsed_s']:.0f} s. " + (
                 "FIDs under different feature networks are never compared with each other; unchanged quality must "
                 "hold under each." if any("feature_nets" in s for s in report["settings"]) else
                 "FIDs under different feature networks are not comparable: each has its own section."), ""]
    for s in report["settings"]:
        d = s["decisions"]
        ref = s["rows"][s["reference"]]
        real = s["real"]
        files = real.get("stats_files") or real.get("stats_file")
        real_text = real.get("described", f"{real['count']} images (statistics file {files})")
        lines += [f"## {s['setting']}", "",
                  f"**Verdict.** {d['verdict']}", "",
                  f"Pipeline `{s['pipeline']}` ({s['pipeline_class']}), {s['conditioning']}, {s['num_images']} images "
                  f"per method at {s['image_shape'][1]}x{s['image_shape'][1]}, guidance {s['guidance_scale']}. "
                  f"{_nets_text(s)} Real: "
                  f"{real_text}. Reference: `{s['reference']}` (stock pipeline, no hooks), FID {_fids_text(ref)}. "
                  f"Intervals: {s['bootstrap']['confidence']:.0%} paired bootstrap, {s['bootstrap']['resamples']} "
                  f"resamples of image indices.", ""]
        lines += [f"Warning: {w}" for w in s["warnings"]] + ([""] if s["warnings"] else [])
        lines += ["Knee (fewest steps whose interval against the reference includes 0 or lies below it): "
                  + (", ".join(f"{k}: `{v}`" for k, v in d["knees"].items()) or "none") + ".", "",
                  f"Recommended operating point: `{d['recommended']}` - {describe_point(s['operating_point'])}.", "",
                  "### Every method", ""] + rows_table(s)
        if any("clip_score" in r for r in s["rows"].values()):
            lines += ["", "CLIP score (100 x max(cos, 0), mean over images): " + ", ".join(
                f"{name} {r['clip_score']:.2f}" for name, r in s["rows"].items() if "clip_score" in r) + "."]
        if s["not_attached"]:
            lines += ["", "Diffusers caches that could not attach: " + "; ".join(
                f"{k}: {v}" for k, v in s["not_attached"].items())]
        lines += ["", f"Timing: {s['timing']['what']}; {s['timing']['repeats']} rounds after {s['timing']['warmup']} "
                      f"warm-up at batch {s['timing']['batches'] or 'none (no timing: decisions by block evaluations)'}.", ""]
    return "\n".join(lines) + "\n"


def _nets_text(entry: dict) -> str:
    nets = entry.get("feature_nets") or [entry["feature_net"]]
    if len(nets) == 1:
        return f"Feature network: {nets[0]['name']}, {nets[0]['features']} features."
    return ("Feature networks (unchanged quality must hold under each; the first fills the FID column): "
            + "; ".join(f"{n['name']} ({n['features']} features, key {n['key']})" for n in nets) + ".")


def _fids_text(row: dict) -> str:
    by_net = row.get("fid_by_net") or {}
    if len(by_net) <= 1:
        return f"{row['fid']:.3f}"
    return ", ".join(f"{v:.3f} ({k})" for k, v in by_net.items())


def describe_point(point: dict) -> str:
    config = point["exit_config"]
    policy = "full depth" if config is None or config.get("policy") is None else config["policy"]["type"]
    return (f"{point['scheduler']}, {point['num_inference_steps']} steps, guidance {point['guidance_scale']}, "
            f"{policy}")


FAMILY_STYLE = {
    "reference": ("black", "*"), "seed": ("gray", "x"), "static_depth": ("tab:blue", "s"), "ase": ("tab:cyan", "^"),
    "deediff": ("tab:orange", "v"), "calibrated_schedule": ("tab:red", "D"), "calibrated_thresholds": ("tab:purple", "P"),
    "distilled": ("tab:brown", "X"), "tail_cache": ("tab:pink", "<"), "first_block_cache": ("tab:green", "h"),
    "taylorseer_cache": ("olive", "8"), "mag_cache": ("teal", "p"), "sea_cache": ("navy", ">"),
}
SOLVER_STYLE = {"ddim": ("dimgray", "-"), "dpmpp": ("darkgoldenrod", "--")}


def plot(report: dict, path: str | Path) -> None:
    """FID with its interval against batch-64 wall-clock, the frontier per solver as lines, the floor as a band
    and the recommended point marked; one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = report["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(8 * len(settings), 6), squeeze=False)
    for ax, s in zip(axes[0], settings):
        # Without timing (`bench --pipeline --timing-repeats 0`) the cost axis is the block evaluations.
        cost = "time_ratio" if any("time_ratio" in r for r in s["rows"].values()) else "block_fraction"
        rows = [r for r in s["rows"].values() if cost in r]
        if s.get("floor"):  # `bench --pipeline` on the user's data has no second real set
            ax.axhspan(0, s["floor"]["fid"], color="tab:green", alpha=0.12, label="real-vs-real floor")
        for solver in sorted({r["solver"] for r in rows}):
            color, style = SOLVER_STYLE.get(solver, ("tab:gray", "-"))
            pts = sorted((r[cost], r["fid"]) for r in rows if r["family"] in frontier.FRONTIER_FAMILIES
                         and r["solver"] == solver)
            if pts:
                ax.plot(*zip(*pts), style, color=color, lw=1.5, label=f"fewer steps ({solver})")
        for r in rows:
            if r["family"] == "fewer_steps":
                color, marker = SOLVER_STYLE.get(r["solver"], ("tab:gray", "-"))[0], "o"
            else:
                color, marker = FAMILY_STYLE.get(r["family"], ("gray", "."))
            # The bars are the paired interval of dFID against the reference, placed around the row's FID (the
            # bootstrap FIDs themselves are biased upwards by repeated images; the paired differences are not).
            d = r["dfid_reference"]
            below, above = max(d["delta"] - d["low"], 0.0), max(d["high"] - d["delta"], 0.0)
            ax.errorbar(r[cost], r["fid"], yerr=[[below], [above]], fmt=marker, color=color,
                        ms=11 if r["family"] == "reference" else 5, capsize=2, alpha=0.85, zorder=3)
        for family, (color, marker) in FAMILY_STYLE.items():
            if any(r["family"] == family for r in rows):
                ax.plot([], [], marker, color=color, label=family)
        rec = s["rows"][s["decisions"]["recommended"]]
        if cost in rec:
            ax.plot(rec[cost], rec["fid"], "o", ms=16, mfc="none", mec="red", mew=2, label="recommended")
        ax.set_xlabel(f"wall-clock at batch {s['timing']['batches'][0]} (fraction of the stock model, {s['reference']})"
                      if cost == "time_ratio" else f"block evaluations (fraction of the stock model, {s['reference']})")
        ax.set_ylabel(f"FID ({s['feature_net']['name']} feature net); bars: {s['bootstrap']['confidence']:.0%} paired "
                      f"interval against the reference")
        ax.set_title(f"{s['setting']}: {s['num_images']} images")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def _json_default(value: Any) -> Any:
    # json calls this only for types it cannot encode itself.
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None: strict JSON has no NaN or infinity (a calibration
    bucket that no depth fits, say, stores null)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def write_report(report: dict, out: str | Path, render: Callable[[dict], str] = markdown) -> None:
    """Write OUT/report.json, OUT/report.md (`render`ed from the report) and OUT/pareto.png (the folder must exist),
    each atomically."""
    out = Path(out)
    report.update(_finite(report))
    atomic_write_json(out / "report.json", report, indent=1, default=_json_default, allow_nan=False)
    atomic_write_text(out / "report.md", render(report))
    plot(report, out / "pareto.png")


def rerender(out: str | Path, render: Callable[[dict], str] = markdown) -> dict:
    """Re-decide OUT/report.json from its measurements (after a change of the rules, say); rewrite the files."""
    out = Path(out)
    report = read_json_file(out / "report.json", "bench report")
    for entry in report["settings"]:
        confidence = entry["bootstrap"]["confidence"]
        entry["decisions"] = frontier.decide(entry["rows"], confidence)
        classes = {name: solver["class"] for name, solver in entry["solvers"].items()}
        entry["operating_point"] = frontier.operating_point(
            entry["rows"], entry["decisions"]["recommended"], classes, entry["guidance_scale"],
            entry["reference_steps"], confidence, entry["operating_point"].get("measured_in", ""))
    write_report(report, out, render)
    return report
