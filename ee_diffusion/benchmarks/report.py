"""The bench report: the recommendation and targets computed from the measured rows, and its files.

`ee_diffusion.benchmarks.bench.run` measures every method and hands the report here; everything in this module is a
function of the report alone, so `rerender(out)` recomputes the recommendation and targets of a saved
OUT/report.json (after a change of the rules, say) and rewrites OUT/report.json, OUT/report.md and
OUT/pareto.png without sampling anything. Files are written atomically (`ee_diffusion._io`): a reader never
sees a half-written report or model index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_save_figure, atomic_write_json, atomic_write_text, read_json_file
from ..config import EarlyExitConfig

#: Families whose exit config can become a pipeline's default. Not recommendable: the references (full model,
#: other seeds, fewer steps), FirstBlockCache (not an exit config) and early exit composed with fewer steps (a
#: default exit config cannot carry a step count).
RECOMMENDABLE_FAMILIES = ("calibrated_schedule", "calibrated_thresholds", "distilled", "deediff", "ase", "static_depth")


def _interp(curve: list[tuple[float, float]], x: float) -> float:
    curve = sorted(curve)
    xs = [p[0] for p in curve]
    ys = [p[1] for p in curve]
    return float(np.interp(x, xs, ys))


def _recommend(rows: dict, steps: int, spread: float) -> dict | None:
    """The fastest early-exit method within the full model's seed spread, at the reference number of steps.

    The recommendation becomes a pipeline's default exit config, which cannot carry a step count, so early exit
    composed with fewer steps is reported apart (see the targets). Marks every row's `within_seed_spread`
    (FID <= full FID + spread), which `_targets` reads."""
    full = rows["full"]
    for row in rows.values():
        row["within_seed_spread"] = row["fid"] <= full["fid"] + spread
    candidates = [r for r in rows.values() if r["family"] in RECOMMENDABLE_FAMILIES
                  and r["within_seed_spread"] and r["num_inference_steps"] == steps]
    return max(candidates, key=lambda r: r["speedup"]) if candidates else None


def _targets(setting: str, rows: dict, spread: float) -> dict:
    """The report's goals, each with the rows that decide it and whether it is met. Reads the rows'
    `within_seed_spread`, which `_recommend` sets."""
    full = rows["full"]
    out: dict[str, Any] = {}
    if setting == "digits":
        def fastest_within(families_out: tuple[str, ...], families_in: tuple[str, ...] | None = None):
            pool = [r for r in rows.values() if r["within_seed_spread"] and r["family"] not in families_out
                    and (families_in is None or r["family"] in families_in)]
            return max(pool, key=lambda r: r["speedup"]) if pool else None

        best = fastest_within(("full", "seed", "fewer_steps", "first_block_cache"))
        steps = fastest_within((), ("fewer_steps",))
        out["speedup_2x_within_spread"] = {
            "goal": "an early-exit method with speedup >= 2.0 at FID <= full FID + seed spread (batch timing here)",
            "best_within_spread": best["name"] if best else None,
            "speedup": best["speedup"] if best else None,
            "fid": best["fid"] if best else None,
            "fid_limit": full["fid"] + spread,
            "fewer_steps_best_within_spread": {"name": steps["name"], "speedup": steps["speedup"]} if steps else None,
            "met": bool(best and best["speedup"] >= 2.0),
        }
        fastest = [r for r in rows.values() if r["family"] not in ("full", "seed", "fewer_steps") and r["speedup"] >= 2.0]
        if fastest:
            at2x = min(fastest, key=lambda r: r["fid"])
            out["speedup_2x_within_spread"]["best_at_2x"] = {"name": at2x["name"], "fid": at2x["fid"],
                                                            "fid_gap_over_spread": at2x["fid"] - full["fid"] - spread}
    # Early exit against fewer steps and static depth at equal block evaluations.
    steps_curve = [(r["block_fraction"], r["fid"]) for r in rows.values() if r["family"] in ("full", "fewer_steps")]
    static_curve = [(r["block_fraction"], r["fid"]) for r in rows.values() if r["family"] == "static_depth"] + [(1.0, full["fid"])]
    wins = []
    for r in rows.values():
        if r["family"] in ("full", "seed", "fewer_steps", "static_depth", "first_block_cache"):
            continue
        x = r["block_fraction"]
        steps_fid, static_fid = _interp(steps_curve, x), _interp(static_curve, x)
        if r["fid"] < steps_fid and r["fid"] < static_fid:
            wins.append({"name": r["name"], "block_fraction": x, "fid": r["fid"], "fewer_steps_fid": steps_fid,
                         "static_depth_fid": static_fid})
    half = [r for r in rows.values() if r["family"] == "static_depth" and abs(r["block_fraction"] - 0.5) < 1e-6]
    if half:
        gap = half[0]["fid"] - full["fid"]
        out["full_depth_clearly_better_than_half"] = {
            "goal": "static depth N/2 worse than the full model by more than the seed spread",
            "full_fid": full["fid"], "half_depth_fid": half[0]["fid"], "gap": gap, "seed_spread": spread,
            "met": bool(gap > spread),
        }
    out["beats_fewer_steps_and_static"] = {
        "goal": "an early-exit method below both the fewer-steps and the static-depth curves at equal block evaluations",
        "met": bool(wins), "wins": wins,
    }
    return out


def markdown(report: dict) -> str:
    """The report as markdown: per setting, the table of every method, the recommendation, overheads and targets."""
    lines = [f"# ee-diffusion bench (preset {report['preset']})", "",
             f"Command: `{report['command']}`", "",
             f"torch {report['environment']['torch']}, {report['environment']['threads']} threads, "
             f"{report['environment']['machine']}; total {report['elapsed_s']:.0f} s.", ""]
    for s in report["settings"]:
        lines += [f"## {s['setting']} ({s['num_blocks']} blocks, {s['num_classes']} classes, {s['num_images']} images, "
                  f"{s['steps']} DDIM steps, guidance {s['guidance_scale']})", "",
                  f"Floor (real vs real, {s['num_images']} images): FID {s['floor_fid']:.3f}. Full model over seeds: "
                  f"{', '.join(f'{v:.3f}' for v in s['full_fid_seeds'])} (spread {s['seed_spread']:.3f}). "
                  f"CFG pairing: {s['cfg_pairing']}.", "",
                  "| method | family | FID | KID | acc | blocks | GFLOP/img | speedup @%d | matched steps FID |" % s["timing"]["batch"],
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in s["methods"].values():
            matched = r.get("matched_fewer_steps")
            if matched:
                mfid = f"{s['methods'][matched]['fid']:.3f} ({matched})"
            elif r["family"] in ("full", "seed", "fewer_steps"):
                mfid = ""
            else:
                mfid = f"{r['fewer_steps_fid_at_same_blocks']:.3f} (interp.)"
            lines.append(
                f"| {r['name']} | {r['family']} | {r['fid']:.3f} | {r.get('kid_mean', float('nan')):.1f} | "
                f"{r.get('accuracy', float('nan')):.3f} | {r['block_fraction']:.3f} | {r.get('gflops_per_image', float('nan')):.3f} | "
                f"{r.get('speedup', float('nan')):.2f}x | {mfid} |")
        o = s["overhead"]
        lines += ["", f"Recommended (fastest early exit within the seed spread): **{s['recommended']}**.", "",
                  f"Overheads at {o['rows_per_call']} rows per model call: hooks {o['hook_overhead_fraction']:+.1%}, "
                  f"heads {o.get('heads_overhead_fraction', float('nan')):+.1%}, gather/scatter "
                  f"{o['gather_scatter_overhead_fraction']:+.1%} of a full call.", ""]
        mem = ", ".join(f"{k} {v['peak_above_start_mib']:.0f} MiB" for k, v in s["peak_memory"].items())
        lines += [f"Peak memory above start ({next(iter(s['peak_memory'].values()))['kind']}): {mem}.", ""]
        for b, res in s["batch_sizes"].items():
            lines.append(f"Batch {b}: " + ", ".join(f"{k} {v['images_per_s']:.1f} img/s" for k, v in res.items()) + ".")
        lines.append("")
        for key, t in s["targets"].items():
            lines.append(f"- Target `{key}`: {'MET' if t['met'] else 'NOT MET'} - {t['goal']}. "
                         + json.dumps({k: v for k, v in t.items() if k not in ('goal', 'met')}, default=str)[:600])
        lines.append("")
    return "\n".join(lines) + "\n"


FAMILY_STYLE = {
    "full": ("black", "*"), "fewer_steps": ("tab:gray", "o"), "static_depth": ("tab:blue", "s"),
    "ase": ("tab:cyan", "^"), "deediff": ("tab:orange", "v"), "calibrated_schedule": ("tab:red", "D"),
    "calibrated_thresholds": ("tab:purple", "P"), "distilled": ("tab:brown", "X"), "first_block_cache": ("tab:green", "h"),
    "calibrated_steps": ("magenta", "d"),
}


def plot(report: dict, path: str | Path) -> None:
    """FID against block evaluations and against wall-clock, per family, next to the floor and the seed spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = report["settings"]
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 4.5 * len(settings)), squeeze=False)
    for row, s in zip(axes, settings):
        for ax, key, label in ((row[0], "block_fraction", "block evaluations (fraction of full)"),
                               (row[1], "time_ratio", f"wall-clock at batch {s['timing']['batch']} (fraction of full)")):
            ax.axhspan(0, s["floor_fid"], color="tab:green", alpha=0.12, label="real-vs-real floor")
            full = s["methods"]["full"]["fid"]
            ax.axhspan(full, full + s["seed_spread"], color="black", alpha=0.08, label="full model seed spread")
            for family, (color, marker) in FAMILY_STYLE.items():
                pts = sorted((r[key], r["fid"]) for r in s["methods"].values() if r["family"] == family and key in r)
                if family == "fewer_steps":
                    pts = sorted(pts + [(s["methods"]["full"][key], full)])
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=family)
            ax.set_xlabel(label)
            ax.set_ylabel("FID (shipped %s feature net)" % s["setting"])
            ax.set_yscale("log")
            ax.set_title(s["setting"])
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def _json_default(value: Any) -> Any:
    # json calls this only for types it cannot encode itself (floats, NaN included, it encodes).
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_report(report: dict, out: str | Path) -> None:
    """Write OUT/report.json, OUT/report.md and OUT/pareto.png (the folder must exist), each atomically."""
    out = Path(out)
    atomic_write_json(out / "report.json", report, indent=2, default=_json_default)
    atomic_write_text(out / "report.md", markdown(report))
    plot(report, out / "pareto.png")


def rerender(out: str | Path) -> dict:
    """Recompute the recommendation and targets of OUT/report.json from its measurements; rewrite the files."""
    out = Path(out)
    report = read_json_file(out / "report.json", "bench report")
    for entry in report["settings"]:
        rec = _recommend(entry["methods"], entry["steps"], entry["seed_spread"])
        entry["recommended"] = rec["name"] if rec else None
        entry["targets"] = _targets(entry["setting"], entry["methods"], entry["seed_spread"])
    write_report(report, out)
    return report


def set_recommended_exit_config(report_path: str | Path, model_dir: str | Path, setting: str = "digits") -> dict:
    """Write the report's recommended exit config for `setting` into `model_dir/model_index.json` as the
    pipeline's default exit config (what calls without `exit_config` use). Returns the config dict."""
    report = read_json_file(report_path, "bench report")
    entries = {s["setting"]: s for s in report["settings"]}
    if setting not in entries:
        raise ValueError(f"the report {str(report_path)!r} has no setting {setting!r}; it has {sorted(entries)}")
    entry = entries[setting]
    if entry["recommended"] is None:
        raise ValueError(f"the report recommends no early-exit method for {setting!r}")
    method = entry["methods"][entry["recommended"]]
    config = EarlyExitConfig.from_dict(method["exit_config"]).to_dict()  # validates
    index_path = Path(model_dir) / "model_index.json"
    index = read_json_file(index_path, "pipeline index")
    index["exit_config"] = config
    atomic_write_json(index_path, index, indent=2, sort_keys=True)
    return {"method": entry["recommended"], "exit_config": config,
            "num_inference_steps": method["num_inference_steps"], "guidance_scale": entry["guidance_scale"]}
