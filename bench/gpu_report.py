"""The GPU check's report files: `gpu_check.md` rendered from `gpu_check.json`, and the run's last log line.

Every part of the check is listed with its status ("ran", "skipped", "failed", "stopped") and the reason, so
nothing the check did not do goes unsaid (`summary_line`, the `## Not run` section).
"""

from __future__ import annotations


def _not_run(report: dict) -> list[dict]:
    return [p for p in report["parts"] if p["status"] != "ran"]


def summary_line(report: dict) -> str:
    """The last log line: whether every part ran, and which did not, with why (parts grouped by reason)."""
    parts, missing = report["parts"], _not_run(report)
    if not missing:
        return f"gpu_check: all {len(parts)} parts ran in {report.get('elapsed_s', 0):.0f} s"
    why: dict[str, list[str]] = {}
    for p in missing:
        why.setdefault(f"{p['status']}: {p['reason']}", []).append(p["part"])
    return (f"gpu_check: NOT ALL PARTS RAN, {len(parts) - len(missing)} of {len(parts)}; "
            + "; ".join(f"{', '.join(names)} ({reason})" for reason, names in why.items()))


def _ratio(entry: dict, method: str) -> str:
    return f"{entry['results'][method]['ratio_to_reference']:.3f}" if method in entry["results"] else "-"


def markdown(report: dict) -> str:
    """gpu_check.md from a report (gpu_check.json): every part with its status and reason, then the results."""
    v = report["versions"]
    lines = ["# GPU check", "",
             f"{report['device']}; {report['dtype']}; python {v['python']}, torch {v['torch']} (CUDA "
             f"{v['torch_cuda']}), diffusers {v['diffusers']}, xformers {v['xformers'] or 'not installed'}"
             + (f" (C++/CUDA extensions: {report['xformers']['cpp_extensions']})"
                if report["xformers"].get("cpp_extensions") not in (None, "loaded") else "") + "; "
             f"budget {report['budget_s']:.0f} s, {report.get('elapsed_s', 0):.0f} s used"
             + ("; `--small`: tiny CPU stand-ins of the shapes" if report["small"] else "") + ".",
             "", f"Command: `{report['command']}`." if report.get("command") else "",
             "", f"**{summary_line(report)}**", "", report["note"] + ".", "",
             "## Parts", "", "| part | status | s | reason |", "|---|---|---:|---|"]
    for p in report["parts"]:
        lines.append(f"| {p['part']} | {p['status']} | {p['elapsed_s']:.1f} | {p['reason'] or ''} |")
    missing = _not_run(report)
    if missing:
        lines += ["", "## Not run", ""] + [f"- `{p['part']}`: {p['status']}: {p['reason']}" for p in missing]
    if report["timings"]:
        lines += ["", "## Timings (ratio to the stock model at the same batch)", "",
                  "| shape | blocks | params | batch | full, ms/call | hooks, no policy | heads | static half | "
                  "compaction vs ideal | ASE schedule (ideal) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, shape in report["timings"].items():
            for batch, entry in shape["batches"].items():
                d = entry["derived"]
                compaction = f"{d['compaction_over_ideal']:+.1%}" if "compaction_over_ideal" in d else "-"
                lines.append(f"| {name} | {shape['num_blocks']} | {shape['parameters_m']:.0f}M | {batch} | "
                             f"{entry['results']['full']['median_s'] * 1e3:.2f} | {d['hook_overhead']:+.1%} | "
                             f"{d['heads_overhead']:+.1%} | {_ratio(entry, 'static_half')} | {compaction} | "
                             f"{d['ase_ratio']:.3f} ({d['ase_ideal']:.3f}) |")
    for name, entry in report["compile"].items():
        lines += ["", f"## torch.compile ({name}, backend {entry['backend']}, batch {entry['batch']})", "",
                  "| policy | graphs | graph breaks | max difference / mean abs | first call, s | compiled / eager |",
                  "|---|---:|---:|---:|---:|---:|"]
        reasons = []
        for policy, result in entry.items():
            if isinstance(result, dict):
                lines.append(f"| {policy} | {result['graphs']} | {result['graph_breaks']} | "
                             f"{result['relative_max_difference']:.2e} | {result['first_call_s']:.1f} | "
                             f"{result['timings']['compiled']['ratio_to_reference']:.3f} |")
                reasons += [f"- {policy}: {r}" for r in result["break_reasons"]]
        if reasons:
            lines += ["", "Graph-break reasons:", ""] + reasons
    if report["attention_check"]:
        lines += ["", "## Attention: xformers against SDPA (batch 2)", "",
                  "| shape | xformers | its C++/CUDA extensions | max difference / mean abs, exits off | "
                  "with ASE at t = 900 | xformers / SDPA time |", "|---|---|---|---:|---:|---:|"]
        for name, entry in report["attention_check"].items():
            diff = entry["relative_max_difference"]
            lines.append(f"| {name} | {entry['xformers']} | {entry['cpp_extensions']} | {diff['full']:.2e} | "
                         f"{diff['ase']:.2e} | "
                         f"{entry['timings']['xformers']['ratio_to_reference']:.3f} |")
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1])) + "\n"
