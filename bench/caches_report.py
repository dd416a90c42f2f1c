"""The files of `python -m bench bench-caches`: report.md and pareto.png, rendered from report.json alone."""

from __future__ import annotations

from pathlib import Path

from ee_diffusion._io import atomic_save_figure, atomic_write_json, atomic_write_text
from ee_diffusion.eval import frontier

CACHE_FAMILIES = ("first_block_cache", "taylorseer_cache", "sea_cache", "mag_cache")


def _speed(match: dict) -> str:
    """A matched row's speedup; `~` where it is lower than the other's but within the run's timing noise."""
    return f"{match['speedup']:.2f}x" + (" ~" if match.get("within_noise") else "")


def _fmt(d: dict[str, float] | None) -> str:
    return "" if d is None else f"{d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def markdown(report: dict) -> str:
    """The report's tables (a function of report.json alone)."""
    batches = report["preset"]["batches"]
    env = report["environment"]
    lines = [
        f"# Per-row tail caches against diffusers' caches: {report['setting']} ({report['num_blocks']} blocks)", "",
        f"Command: `{report['command']}`; {env['threads']} thread(s), torch {env['torch']}, load average "
        f"{env['load_average_before']} before and {env['load_average_after']} after; {report['elapsed_s'] / 60:.0f} min.",
        "",
        f"FID on the {report['feature_net']} feature net"
        + (f" (dFID columns: every net of {report['feature_nets']})" if "feature_nets" in report else "")
        + "; intervals are paired 90% bootstrap intervals. Rows at batch "
        f">= 8 are scored on {report['num_images']} images, batch-1 rows on the first {report['batch1_images']}. "
        f"Speedup: wall-clock of one pipeline call against the stock model ({report['reference']}) at that batch.",
        *_noise_line(report), "",
        "## Rows", "",
        "| row | batch | FID | dFID vs reference | blocks | " + " | ".join(f"speedup b{b}" for b in batches) + " |",
        "|---|---:|---:|---|---:|" + "---:|" * len(batches),
    ]
    for name, r in report["rows"].items():
        cache = r["family"] in CACHE_FAMILIES  # a cache row's images are those of its batch: its speed there only
        speeds = " | ".join(f"{r['timing'][str(b)]['speedup']:.2f}x" if not cache or b == r["batch"] else ""
                            for b in batches)
        lines.append(f"| {name} | {r['batch'] if cache else 'any'} | {r['fid']:.3f} | "
                     f"{_by_net(r['dfid_reference'])} | {r['block_fraction']:.3f} | {speeds} |")
    lines += ["", "## Matched speed: the best per-row row at least as fast, FID(ours) - FID(cache)", "",
              "| cache | batch | cache speedup | cache FID | forecast row | its speedup | dFID | result | "
              "best per-row row (any order) | dFID | result |", "|---|---:|---:|---:|---|---:|---|---|---|---|---|"]
    for c in report["comparisons"]:
        f, a = c["forecast"], c["per_row"]
        lines.append(
            f"| {c['cache']} | {c['batch']} | {c['cache_speedup']:.2f}x | {c['cache_fid']:.3f} | "
            + (f"{f['row']} | {_speed(f)} | {_fmt(f['dfid'])} | {f['result']}" if f else "none as fast | | |")
            + " | " + (f"{a['row']} | {_fmt(a['dfid'])} | {a['result']}" if a else "none as fast | |") + " |")
    if any(c.get("block_forecast") for c in report["comparisons"]):
        undominated = own_frontier(report["rows"])
        lines += ["", "## Matched speed: the best BlockForecast row at least as fast, FID(ours) - FID(cache)", "",
                  "Best: the lowest worst-net FID relative to the reference. wins: the whole interval below 0 under "
                  "every net; loses: above 0 under any. Own frontier: no other setting of the cache is at least as "
                  "fast at that batch with an FID no higher under every net (a win against a setting off it says "
                  "little: the cache has a faster, better one).", "",
                  "| cache | batch | own frontier | cache speedup | cache FID | BlockForecast row | its speedup | dFID | "
                  "result |", "|---|---:|---|---:|---:|---|---:|---|---|"]
        counts: dict[tuple[str, int], dict[str, int]] = {}
        for c in report["comparisons"]:
            f = c.get("block_forecast")
            on = c["cache"] in undominated
            lines.append(f"| {c['cache']} | {c['batch']} | {'yes' if on else 'no'} | {c['cache_speedup']:.2f}x | "
                         f"{c['cache_fid']:.3f} | "
                         + (f"{f['row']} | {_speed(f)} | {_by_net(f['dfid'])} | {f['result']} |" if f
                            else "none as fast | | | |"))
            if on:
                tally = counts.setdefault((c["family"], c["batch"]), {"wins": 0, "ties": 0, "loses": 0, "unmatched": 0})
                tally[f["result"] if f else "unmatched"] += 1
        lines += ["", "Against the settings on their cache's own frontier only:", "",
                  "| cache | batch | wins | ties | loses | unmatched |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {family} | {b} | {v['wins']} | {v['ties']} | {v['loses']} | {v['unmatched']} |"
                  for (family, b), v in counts.items()]
    if report.get("frontier_comparisons"):
        lines += ["", "## Against the solver's fewer-steps frontier: the best fewer-steps row at least as fast", "",
                  "| row | batch | speedup | fewer-steps row | its speedup | FID(row) - FID(it) | result |",
                  "|---|---:|---:|---|---:|---|---|"]
        for c in report["frontier_comparisons"]:
            f = c["frontier"]
            lines.append(f"| {c['row']} | {c['batch']} | {c['speedup']:.2f}x | "
                         + (f"{f['row']} | {_speed(f)} | {_by_net(f['dfid'])} | {f['result']} |" if f
                            else "none as fast | | | |"))
    lines += _forecast_against_reuse(report["rows"], report["preset"]["confidence"])
    lines += _summary_table(report, "forecast rows", "by_batch", "forecast",
                            "never loses at batch 1 (all matched, none lost)")
    if any(r["family"] == "block_forecast" for r in report["rows"].values()):
        lines += _summary_table(report, "BlockForecast rows", "block_forecast_by_batch", "block_forecast",
                                "never loses at batch 1")
    if report["not_attached"]:
        lines += ["", "Not attached: " + "; ".join(f"{k}: {v}" for k, v in report["not_attached"].items())]
    if report["batch_composition"]:
        lines += ["", "## Batch composition (batch-global caches)", "",
                  "FID with single-class batches minus FID with mixed-class batches, same images:", "",
                  "| cache | dFID sorted - mixed |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in report["batch_composition"].items()]
    ind = report["batch_independence"]
    lines += ["", f"Per-row rows at batch 1 against batch {max(batches)} ({ind['method']}, {ind['images']} images): "
                  f"largest pixel difference {ind['max_abs_difference']:.2e}.", "",
              "## Per-row state at batch 64", "",
              "| row | measured | formula | hidden states | DiT-XL/2 float32 | DiT-XL/2 bfloat16 |", "|---|---:|---:|---|---:|---:|"]
    for name, m in report["state_memory"].items():
        lines.append(f"| {name} | {m['measured_bytes'] / 2**20:.2f} MiB | {m['formula_bytes'] / 2**20:.2f} MiB | "
                     f"{m['tokens']} x {m['width']} | {m['dit_xl_2_float32_bytes'] / 2**20:.0f} MiB | "
                     f"{m['dit_xl_2_bfloat16_bytes'] / 2**20:.0f} MiB |")
    return "\n".join(lines) + "\n"


def _noise_line(report: dict) -> list[str]:
    """The matched-speed rule, with the run's timing noise per batch (reports from before it was measured: none)."""
    noise = report.get("timing_noise")
    if noise is None:
        return []
    at = ", ".join(f"b{b}: {v:.1%}" for b, v in noise.items())
    return ["", f"At least as fast: a median speedup no lower, or no more block evaluations per image and a speedup "
                f"lower by less than the run's timing noise ({at}; half the interquartile range of a row's per-round "
                f"speedups, the median over rows); such matches are marked `~`. The same rule picks the fewer-steps "
                f"row a row is compared with."]


def own_frontier(rows: dict) -> set[str]:
    """The cache rows (not the sorted-batch ones) that no other setting of the same cache dominates at their batch:
    none is at least as fast there with an FID no higher under every net (point estimates), one of the two strictly.

    ```py
    >>> row = lambda speed, fid: {"family": "sea_cache", "batch": 1, "timing": {"1": {"speedup": speed}},
    ...                           "fid_by_net": {"a": fid, "b": fid}}
    >>> sorted(own_frontier({"fast": row(3.0, 9.0), "good": row(2.0, 5.0), "worse": row(2.0, 6.0)}))
    ['fast', 'good']

    ```
    """
    caches = {n: r for n, r in rows.items() if r["family"] in CACHE_FAMILIES and not n.endswith("sorted")}

    def speed(r: dict) -> float:
        return r["timing"][str(r["batch"])]["speedup"]

    def dominates(a: dict, b: dict) -> bool:
        no_worse = speed(a) >= speed(b) and all(a["fid_by_net"][k] <= v for k, v in b["fid_by_net"].items())
        return no_worse and (speed(a) > speed(b) or any(a["fid_by_net"][k] < v for k, v in b["fid_by_net"].items()))

    return {n for n, r in caches.items()
            if not any(o["family"] == r["family"] and o["batch"] == r["batch"] and dominates(o, r)
                       for m, o in caches.items() if m != n)}


def _summary_table(report: dict, what: str, field: str, prefix: str, last_header: str) -> list[str]:
    """Per cache family: wins/ties/loses/unmatched of `what` at each batch (`summary[family][field]`), and the
    family's `{prefix}_wins_somewhere` and `{prefix}_never_loses_at_batch_1`."""
    batches = report["preset"]["batches"]
    lines = ["", f"## Summary ({what} against each cache)", "",
             "| cache | " + " | ".join(f"b{b}: wins/ties/loses/unmatched" for b in batches)
             + f" | wins somewhere | {last_header} |", "|---|" + "---|" * (len(batches) + 2)]
    for family, s in report["summary"].items():
        cells = []
        for b in batches:
            v = s[field].get(str(b))
            cells.append("" if v is None else f"{v['wins']}/{v['ties']}/{v['loses']}/{v['no_faster_row']}")
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {s[f'{prefix}_wins_somewhere']} | "
                     f"{s[f'{prefix}_never_loses_at_batch_1']} |")
    return lines


def _by_net(d: dict | None) -> str:
    """An interval under the first net, and under the others after it."""
    if d is None:
        return ""
    others = [f"{net} {_fmt(v)}" for net, v in list(d.get("by_net", {}).items())[1:]]
    return _fmt(d) + (f" ({'; '.join(others)})" if others else "")


def _forecast_against_reuse(rows: dict, confidence: float) -> list[str]:
    """Per rule, each forecast order's rows against the same rule's reuse (order 0): paired, from the rows'
    bootstrap FIDs; and each rule's forecast against the others'."""
    tails = {name: r for name, r in rows.items() if r["family"] == "tail_cache"}
    reuse = {name.replace("_o0@", "@"): name for name, r in tails.items() if r["notes"]["forecast_order"] == 0}
    lines = ["", "## Forecast against reuse, same rule (same images, paired)", "",
             "| forecast row | reuse row | blocks | FID(forecast) - FID(reuse) |", "|---|---|---:|---|"]
    for name, r in tails.items():
        order = r["notes"]["forecast_order"]
        base = reuse.get(name.replace(f"_o{order}@", "@")) if order else None
        if base is not None:
            lines.append(f"| {name} | {base} | {r['block_fraction']:.3f} | "
                         f"{_fmt(frontier.paired_interval(r, tails[base], confidence))} |")
    forecasts = [name for name, r in tails.items() if r["notes"]["forecast_order"] > 0]
    if len(forecasts) > 1:
        lines += ["", "| forecast row | against | blocks | FID(row) - FID(against) |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {rows[a]['block_fraction']:.3f} / {rows[b]['block_fraction']:.3f} | "
                  f"{_fmt(frontier.paired_interval(rows[a], rows[b], confidence))} |"
                  for i, a in enumerate(forecasts) for b in forecasts[i + 1:]]
    return lines


FAMILY_COLORS = {"tail_cache": "tab:red", "first_block_cache": "tab:blue", "taylorseer_cache": "tab:purple",
                 "sea_cache": "tab:green", "mag_cache": "tab:orange"}


def plot(report: dict, path: str | Path) -> None:
    """FID against speedup, one panel per batch size; the frontier as a line, per-row rows by forecast order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = report["preset"]["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 5), squeeze=False)
    for ax, b in zip(axes[0], batches):
        key = str(b)
        on_batch1 = b == 1
        pts = sorted((r["timing"][key]["speedup"], r["fid_batch1_set"] if on_batch1 else r["fid"])
                     for r in report["rows"].values() if r["family"] in ("reference", "fewer_steps"))
        ax.plot(*zip(*pts), "-o", color="black", ms=4, label="fewer steps")
        for r in report["rows"].values():
            if r["family"] == "block_forecast":
                fid = r["fid_batch1_set"] if on_batch1 else r["fid"]
                ax.plot(r["timing"][key]["speedup"], fid, "^", color="tab:brown")
            elif r["family"] == "tail_cache":
                fid = r["fid_batch1_set"] if on_batch1 else r["fid"]
                order = r["notes"]["forecast_order"]
                ax.plot(r["timing"][key]["speedup"], fid, "s" if order else "D", color="tab:red",
                        mfc="tab:red" if order else "none")
            elif r["family"] in CACHE_FAMILIES and r["batch"] == b and not r["name"].endswith("sorted"):
                ax.plot(r["timing"][key]["speedup"], r["fid"], "o", color=FAMILY_COLORS[r["family"]])
        for label, color, marker, fill in (("BlockForecast", "tab:brown", "^", "tab:brown"),
                                           ("per-row, forecast", "tab:red", "s", "tab:red"),
                                           ("per-row, reuse", "tab:red", "D", "none")):
            ax.plot([], [], marker, color=color, mfc=fill, label=label)
        for family in CACHE_FAMILIES:
            ax.plot([], [], "o", color=FAMILY_COLORS[family], label=family)
        ax.set_xlabel(f"speedup at batch {b} (stock model = 1)")
        ax.set_ylabel(f"FID ({report['feature_net']} features, "
                      f"{report['batch1_images'] if on_batch1 else report['num_images']} images)")
        ax.set_title(f"{report['setting']}, batch {b}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def write(report: dict, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report, indent=1)
    atomic_write_text(out / "report.md", markdown(report))
    plot(report, out / "pareto.png")
