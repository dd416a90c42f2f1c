"""One source of truth for a shipped model: its operating point, `evaluation.json` and `TRAINING.md`, all from
one bench report (and, where one was published, one operating-point search).

`python -m bench publish --report REPORT --setting digits --model FOLDER` writes into the pipeline folder:
- `model_index.json`: the report's recommended operating point (and the scheduler becomes the point's solver);
- `evaluation.json`: what the point rests on - the reference, the frontier, the exit points that beat it, the
  recommended row, the guidance checks, the verdict, the command and the machine;
- `TRAINING.md`: rendered from `training.json` (how the model was trained: description and loss curves, written
  by the training export scripts) and `evaluation.json`; no number in it is typed by hand.

`python -m bench publish --search SEARCH.json --model FOLDER` then makes a confirmed operating-point search's pick
(`ee-diffusion calibrate --kind operating-point`) the folder's default: `model_index.json` gets that point,
`evaluation.json` keeps the bench's summary and adds the search's, and `TRAINING.md` is rendered again.

`bench/scripts/rebuild_assets.sh SETTING` runs train -> bench -> publish end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ee_diffusion._io import atomic_write_json, atomic_write_text, read_json_file
from ee_diffusion.eval import frontier
from ee_diffusion.operating_point import OperatingPoint

ROW_FIELDS = ("name", "family", "solver", "steps", "fid", "block_fraction", "speedup", "time_ratio", "holds_quality",
              "exit_config", "dfid_reference", "dfid_knee", "fidelity", "accuracy", "timing")


#: What a file must hold to be read as an operating-point search or a bench report (checked before anything is
#: written, so that another JSON file given by mistake is refused with its name, not a KeyError).
SEARCH_KEYS = ("goal", "reference", "chosen", "confirmed", "why", "operating_point", "candidates", "tries", "settings")
REPORT_KEYS = ("command", "environment", "settings")


def _check_keys(data: Any, keys: tuple[str, ...], what: str, ref: str) -> None:
    missing = [k for k in keys if k not in data] if isinstance(data, dict) else list(keys)
    if missing:
        raise ValueError(f"{ref!r} is not {what}: it lacks {missing}")


def _row(row: dict) -> dict[str, Any]:
    out = {k: row[k] for k in ROW_FIELDS if k in row}
    if "vs_frontier" in row:
        out["vs_frontier"] = row["vs_frontier"]
    if "guidance_scale" in row:
        out["guidance_scale"] = row["guidance_scale"]
    return out


def evaluation_summary(report: dict, setting: str, report_ref: str) -> dict[str, Any]:
    """The part of a report that a model folder keeps beside its operating point."""
    _check_keys(report, REPORT_KEYS, "a bench report (report.json of `python -m bench bench`)", report_ref)
    entries = {s["setting"]: s for s in report["settings"]}
    if setting not in entries:
        raise ValueError(f"the report {report_ref!r} has no setting {setting!r}; it has {sorted(entries)}")
    entry = entries[setting]
    rows = entry["rows"]
    decisions = entry["decisions"]
    by_cost = sorted(rows.values(), key=lambda r: r["block_fraction"])
    return {
        "report": report_ref, "command": report["command"], "environment": report["environment"],
        "setting": setting, "num_images": entry["num_images"], "feature_net": entry["feature_net"],
        "bootstrap": entry["bootstrap"], "floor": entry["floor"], "seed_spread": entry.get("seed_spread"),
        "reference": _row(rows[entry["reference"]]), "knee": decisions["knee"], "knees": decisions["knees"],
        "recommended": _row(rows[decisions["recommended"]]), "verdict": decisions["verdict"],
        "operating_point": entry["operating_point"],
        "frontier": [_row(r) for r in by_cost if r["family"] in frontier.FRONTIER_FAMILIES],
        "exit_points_beating_frontier": [_row(rows[n]) for n in decisions["exit_rows_beating_frontier"]],
        "guidance": [_row(r) for r in by_cost if r["family"] == "guidance"],
    }


def _interval(d: dict) -> str:
    return f"{d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def _table(rows: list[dict]) -> list[str]:
    lines = ["| method | steps | blocks | speedup @64 | FID | dFID vs reference (90% CI) | PSNR dB |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        lines.append(f"| {r['name']} | {r['steps']} | {r['block_fraction']:.3f} | {speed} | {r['fid']:.3f} | "
                     f"{_interval(r['dfid_reference'])} | {r['fidelity']['psnr_db']:.1f} |")
    return lines


def _under_nets(entry: dict, nets: list[str], key: str = "dfid") -> str:
    """" (digits +0.16 [...]; digits-pool +0.40 [...])": an entry's `key` interval under every feature network
    (its `by_net`; '' when it has none)."""
    by_net = entry.get("by_net") or {}
    parts = [f"{n} {_interval(by_net[n][key])}" for n in nets if key in by_net.get(n, {})]
    return f" ({'; '.join(parts)})" if parts else ""


def _search_markdown(search: dict, recommended: str) -> list[str]:
    """What a published operating-point search says (TRAINING.md), from `evaluation.json`."""
    cal, held = search["calibration"], search["confirmation"]
    settings, decision = search["settings"], search.get("decision") or {}
    nets = list(decision.get("feature_nets", []))
    ref = search["reference"]
    ref_fids = ref.get("holdout_fids") or {}
    lines = [f"It is the pick `{search['chosen']}` of the operating-point search `{search['search']}` (command: "
             f"`{search['command']}`), goal {search['goal']}: the cheapest candidate holding quality on "
             f"{settings['calib_images']} calibration images (blocks {cal['block_fraction']:.3f} of the reference, "
             f"dFID {_interval(cal['dfid'])}{_under_nets(cal, nets)}), confirmed on {settings['holdout_images']} "
             f"held-out images (dFID {_interval(held['dfid'])} against the reference's FID "
             f"{ref['holdout_fid']:.3f}{_under_nets(held, nets)}); calibration and held-out noise seeds "
             f"{settings['calib_seed']} and {settings['holdout_seed']}, disjoint from the benchmark's."]
    if decision:
        conf = decision["confirmation"]
        fids = ", ".join(f"{n} {ref_fids[n]:.3f}" for n in nets if n in ref_fids)
        lines[0] += (f" Quality must hold under every feature network ({', '.join(f'`{n}`' for n in nets)}; held-out "
                     f"reference FIDs {fids}). {decision['screened']} candidates were screened, so the held-out bar is "
                     f"stricter than the screening: {conf['rule']}, at {conf['confidence']:.1%} intervals.")
    fidelity = held.get("fidelity")
    if fidelity:
        lines[0] += (f" Per-image fidelity to the reference image from the same noise: PSNR "
                     f"{fidelity['psnr_db']:.1f} dB, SSIM {fidelity['ssim']:.3f}.")
    frontier = search["vs_frontier"] or {}
    if frontier.get("frontier"):
        beats = "beats" if frontier.get("chosen_beats_frontier") else "is compared with"
        lines[0] += (f" On the held-out images it {beats} the best fewer-steps point that costs no more, "
                     f"`{frontier['frontier']}`: dFID {_interval(frontier['dfid_chosen_minus_frontier'])}"
                     f"{_under_nets(frontier, nets, 'dfid_chosen_minus_frontier')}.")
    for name, entry in search["baselines"].items():
        lines[0] += (f" Against the {name} (the benchmark's recommendation `{recommended}`), on the same held-out "
                     f"images: dFID {_interval(entry['dfid_chosen_minus_baseline'])}"
                     f"{_under_nets(entry, nets, 'dfid_chosen_minus_baseline')}.")
    timing = search.get("timing")
    if timing:
        points = timing["points"]
        lines[0] += (f" Wall-clock at batch {timing['batch']} ({timing.get('threads', '?')} thread(s), median of "
                     f"{timing['repeats']} interleaved rounds, load average {timing['load_average_before']}): " + ", ".join(
                         f"{name} {p['speedup']:.2f}x" for name, p in points.items() if name != "reference")
                     + " faster than the reference.")
    return lines + [""]


def evaluation_markdown(evaluation: dict) -> list[str]:
    """The "Operating point" section of TRAINING.md, from `evaluation.json`."""
    point = evaluation["operating_point"]
    rec, ref = evaluation["recommended"], evaluation["reference"]
    config = point["exit_config"]
    policy = "full depth (no exit config)" if config is None else f"`{config}`"
    search = evaluation.get("operating_point_search")
    source = (f"`{rec['name']}` in `{evaluation['report']}` (command: `{evaluation['command']}`; "
              f"{evaluation['environment']['threads']} threads, load average "
              f"{evaluation['environment'].get('load_average_before')}).")
    if search is not None:
        source = "the operating-point search below; the benchmark's own recommendation was " + source
    lines = ["## Operating point", "",
             f"A call with no `num_inference_steps`, `guidance_scale` or `exit_config` runs {point['scheduler']} for "
             f"{point['num_inference_steps']} steps at guidance {point['guidance_scale']} with {policy}: {source}", ""]
    if search is not None:
        lines += _search_markdown(search, rec["name"])
    lines += [f"**Verdict{'' if search is None else ' (of the benchmark)'}.** {evaluation['verdict']}", "",
             f"Reference: `{ref['name']}` (stock model, no hooks), FID {ref['fid']:.3f} on {evaluation['num_images']} "
             f"images (shipped {evaluation['feature_net']['name']} feature net; floor {evaluation['floor']['fid']:.3f}). "
             f"Intervals: {evaluation['bootstrap']['confidence']:.0%} paired bootstrap over "
             f"{evaluation['bootstrap']['resamples']} resamples of image indices. Knee: `{evaluation['knee']}`.", "",
             "### The fewer-steps frontier", ""] + _table(evaluation["frontier"])
    if evaluation["exit_points_beating_frontier"]:
        lines += ["", "### Early exit below the frontier (whole interval below, at equal wall-clock and blocks)", ""]
        lines += _table(evaluation["exit_points_beating_frontier"])
    else:
        lines += ["", "No early-exit point beats the fewer-steps frontier on this model."]
    if evaluation["guidance"]:
        lines += ["", "### Why guidance " + f"{point['guidance_scale']:g}", ""] + _table(evaluation["guidance"])
    by_steps = point.get("exit_configs_by_steps") or {}
    if by_steps:
        lines += ["", "A call that gives only its steps uses the exit config of the nearest measured step count: "
                  + "; ".join(f"{k}: {'full depth' if v is None else v['policy']['type']}" for k, v in by_steps.items())
                  + "."]
    return lines + [""]


def training_markdown(training: dict, evaluation: dict | None) -> str:
    """TRAINING.md from `training.json` (title, description paragraphs, one table per stage) and `evaluation.json`."""
    lines = [f"# {training['title']}", ""]
    for paragraph in training.get("description", []):
        lines += [paragraph, ""]
    for stage in training.get("stages", []):
        lines += [f"## {stage['heading']}", "", "| " + " | ".join(stage["columns"]) + " |",
                  "|" + "---|" * len(stage["columns"])]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in stage["rows"]]
        lines += [""] + [note + "\n" for note in stage.get("notes", [])]
    if evaluation is not None:
        lines += evaluation_markdown(evaluation)
    return "\n".join(lines).rstrip() + "\n"


def render_training_md(model_dir: str | Path) -> str:
    """Rewrite MODEL/TRAINING.md from MODEL/training.json and MODEL/evaluation.json (if present)."""
    model_dir = Path(model_dir)
    training = read_json_file(model_dir / "training.json", "training record")
    evaluation_path = model_dir / "evaluation.json"
    evaluation = read_json_file(evaluation_path, "evaluation") if evaluation_path.is_file() else None
    text = training_markdown(training, evaluation)
    atomic_write_text(model_dir / "TRAINING.md", text)
    return text


def search_summary(search: dict, search_ref: str) -> dict[str, Any]:
    """The part of an operating-point search (`calibrate --kind operating-point --out`) a model folder keeps."""
    _check_keys(search, SEARCH_KEYS, "an operating-point search (the --out JSON of `calibrate --kind operating-point`)",
                search_ref)
    if not search.get("confirmed"):
        raise ValueError(f"the search {search_ref!r} confirmed no operating point ({search.get('why')}); "
                         f"nothing to publish")
    chosen = next(c for c in search["candidates"] if c["name"] == search["chosen"])
    return {"search": search_ref, "command": search["settings"].get("command", ""), "goal": search["goal"],
            "chosen": search["chosen"], "calibration": chosen, "confirmation": search["tries"][-1],
            "tries": search["tries"], "reference": search["reference"], "vs_frontier": search["vs_frontier"],
            "baselines": search.get("baselines", {}), "timing": search.get("timing"), "settings": search["settings"],
            "decision": search.get("decision")}


def publish_search(search_path: str | Path, model_dir: str | Path, search_ref: str | None = None) -> dict:
    """Make a confirmed operating-point search's point the default of `model_dir`, which already carries a
    published `evaluation.json`: `model_index.json` gets the point (and the scheduler becomes its solver),
    `evaluation.json` keeps the benchmark's summary and adds the search (`operating_point_search`), and
    `TRAINING.md` is rendered again. Returns the evaluation."""
    from ee_diffusion.eval.solvers import scheduler_of_point

    search_ref = search_ref or str(search_path)
    search = read_json_file(search_path, "operating-point search")
    summary = search_summary(search, search_ref)
    model_dir = Path(model_dir)
    evaluation = read_json_file(model_dir / "evaluation.json", "evaluation")
    point = OperatingPoint.from_dict(search["operating_point"])
    point.measured_in = (f"{search_ref} (`{summary['command']}`), candidate {summary['chosen']}, confirmed on "
                         f"{summary['settings']['holdout_images']} held-out images")
    # The point's scheduler as the search built it: its class and options (UniPC, a flow-matching DPM-Solver++)
    # over the folder's own config; a class diffusers does not have raises before anything is written.
    store_point(model_dir, point, lambda current: scheduler_of_point(point, current))
    evaluation["operating_point"] = point.to_dict()
    evaluation["operating_point_search"] = summary
    atomic_write_json(model_dir / "evaluation.json", evaluation, indent=1, allow_nan=False)
    render_training_md(model_dir)
    return evaluation


def publish(report_path: str | Path, model_dir: str | Path, setting: str, report_ref: str | None = None) -> dict:
    """Write the operating point, `evaluation.json` and `TRAINING.md` of `setting` from one report into
    `model_dir`. `report_ref` is how the files name the report (default: its path). Returns the evaluation."""
    report_ref = report_ref or str(report_path)
    report = read_json_file(report_path, "bench report")
    evaluation = evaluation_summary(report, setting, report_ref)
    point = write_operating_point(report_path, model_dir, setting, measured_in=f"{report_ref} "
                                  f"(`{report['command']}`), row {evaluation['recommended']['name']}")
    evaluation["operating_point"] = point
    atomic_write_json(Path(model_dir) / "evaluation.json", evaluation, indent=1, allow_nan=False)
    render_training_md(model_dir)
    return evaluation


def report_operating_point(report_path: str | Path, setting: str) -> OperatingPoint:
    """The recommended operating point of `setting` in a saved report (validated)."""
    report = read_json_file(report_path, "bench report")
    _check_keys(report, REPORT_KEYS, "a bench report (report.json of `python -m bench bench`)", str(report_path))
    entries = {s["setting"]: s for s in report["settings"]}
    if setting not in entries:
        raise ValueError(f"the report {str(report_path)!r} has no setting {setting!r}; it has {sorted(entries)}")
    return OperatingPoint.from_dict(entries[setting]["operating_point"])


def write_operating_point(report_path: str | Path, model_dir: str | Path, setting: str, measured_in: str) -> dict:
    """Make a report's recommended operating point the pipeline folder's default: `model_index.json` gets the
    point, and the folder's scheduler becomes the point's solver (same training schedule). Returns the point."""
    import diffusers

    point = report_operating_point(report_path, setting)
    point.measured_in = measured_in
    entries = {s["setting"]: s for s in read_json_file(report_path, "bench report")["settings"]}
    solver = next(s for s in entries[setting]["solvers"].values() if s["class"] == point.scheduler)
    store_point(Path(model_dir), point, lambda current: getattr(diffusers, point.scheduler).from_config(solver["config"]))
    return point.to_dict()


def store_point(model_dir: Path, point: OperatingPoint, scheduler_from: Any) -> None:
    """`model_index.json` of `model_dir` gets `point`; when the folder's scheduler is not of the point's class it
    becomes `scheduler_from(current scheduler)` (saved, and named in the index)."""
    import diffusers

    index_path = model_dir / "model_index.json"
    index = read_json_file(index_path, "pipeline index")
    scheduler_dir = model_dir / "scheduler"
    current = read_json_file(scheduler_dir / "scheduler_config.json", "scheduler config")
    if current.get("_class_name") != point.scheduler:
        scheduler = scheduler_from(getattr(diffusers, current["_class_name"]).from_config(current))
        scheduler.save_pretrained(str(scheduler_dir))
        index["scheduler"] = ["diffusers", point.scheduler]
    index["operating_point"] = point.to_dict()
    index["exit_config"] = None
    index.pop("_name_or_path", None)  # a path on the machine that trained it
    atomic_write_json(index_path, index, indent=2, sort_keys=True)
