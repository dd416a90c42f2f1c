"""The files of `python -m bench bench-caches`: report.md and pareto.png, rendered from report.json alone."""

from __future__ import annotations

from pathlib import Path

from ee_diffusion._io import atomic_save_figure, atomic_write_json, atomic_write_text
from ee_diffusion.eval import frontier

CACHE_FAMILIES = ("first_block_cache", "taylorseer_cache", "sea_cache", "mag_cache", "cache_dit")


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
        f"Command: `{report['command']}`; {env['threads']} thread(s), torch {env['torch']}, "
        + (f"cache-dit {env['cache_dit']}, " if env.get("cache_dit") else "") + "load average "
        f"{env['load_average_before']} before and {env['load_average_after']} after; {report['elapsed_s'] / 60:.0f} min.",
        "",
        f"FID on the {report['feature_net']} feature net"
        + (f" (dFID columns: every net of {report['feature_nets']})" if "feature_nets" in report else "")
        + "; intervals are paired 90% bootstrap intervals. Rows at batch "
        f">= 8 are scored on {report['num_images']} images"
        + (f" (images {report['first_image']} on)" if report.get("first_image") else "")
        + f", batch-1 rows on the first {report['batch1_images']}. "
        f"Speedup: wall-clock of one pipeline call against the stock model ({report['reference']}) at that batch.",
        *_noise_line(report), *_xl_line(report), "",
        "## Rows", "",
        "| row | batch | FID | dFID vs reference | blocks | " + " | ".join(f"speedup b{b}" for b in batches) + " |"
        + (" speedup at DiT-XL/2 width | cached steps (cache-dit) |" if "xl_parts" in report else ""),
        "|---|---:|---:|---|---:|" + "---:|" * len(batches) + ("---:|---:|" if "xl_parts" in report else ""),
    ]
    for name, r in report["rows"].items():
        cache = r["family"] in CACHE_FAMILIES  # a cache row's images are those of its batch: its speed there only
        speeds = " | ".join(f"{r['timing'][str(b)]['speedup']:.2f}x" if not cache or b == r["batch"] else ""
                            for b in batches)
        xl = (f" {r['xl_cost']['speedup']:.2f}x | "
              + (f"{r['mean_cached_steps']:.2f} of {r['steps']} |" if "mean_cached_steps" in r else " |")
              if "xl_parts" in report else "")
        lines.append(f"| {name} | {r['batch'] if cache else 'any'} | {r['fid']:.3f} | "
                     f"{_by_net(r['dfid_reference'])} | {r['block_fraction']:.3f} | {speeds} |{xl}")
    lines += ["", "## Matched speed: the best per-row row at least as fast, FID(ours) - FID(cache)", "",
              "| cache | batch | cache speedup | cache FID | forecast row | its speedup | dFID | result | "
              "best per-row row (any order) | dFID | result |", "|---|---:|---:|---:|---|---:|---|---|---|---|---|"]
    for c in report["comparisons"]:
        f, a = c["forecast"], c["per_row"]
        lines.append(
            f"| {c['cache']} | {c['batch']} | {c['cache_speedup']:.2f}x | {c['cache_fid']:.3f} | "
            + (f"{f['row']} | {_speed(f)} | {_fmt(f['dfid'])} | {f['result']}" if f else "none as fast | | |")
            + " | " + (f"{a['row']} | {_fmt(a['dfid'])} | {a['result']}" if a else "none as fast | |") + " |")
    lines += _block_forecast_matches(report, "comparisons", "Matched speed", False)
    if report.get("frontier_comparisons"):
        lines += _frontier_table(report["frontier_comparisons"], "")
    lines += _forecast_against_reuse(report["rows"], report["preset"]["confidence"])
    lines += _summary_table(report, "forecast rows", "by_batch", "forecast",
                            "never loses at batch 1 (all matched, none lost)")
    if any(r["family"] == "block_forecast" for r in report["rows"].values()):
        lines += _summary_table(report, "BlockForecast rows", "block_forecast_by_batch", "block_forecast",
                                "never loses at batch 1")
    if "xl_parts" in report:
        lines += _xl_sections(report)
    return "\n".join(lines + _tail_sections(report)) + "\n"


def _block_forecast_matches(report: dict, key: str, title: str, xl: bool) -> list[str]:
    """The table of `report[key]`'s BlockForecast matches, with each cache setting's own frontier and the tallies."""
    lines: list[str] = []
    if any(c.get("block_forecast") for c in report[key]):
        undominated = own_frontier(report["rows"], xl)
        lines += ["", f"## {title}: the best BlockForecast row at least as fast, FID(ours) - FID(cache)", "",
                  "Best: the lowest worst-net FID relative to the reference. wins: the whole interval below 0 under "
                  "every net; loses: above 0 under any; ties: otherwise, or within +-0.001 under every net (float "
                  "rounding). Own frontier: no other setting of the cache is at least as "
                  "fast at that batch with an FID no higher under every net (a win against a setting off it says "
                  "little: the cache has a faster, better one).", "",
                  "| cache | batch | own frontier | cache speedup | cache FID | BlockForecast row | its speedup | dFID | "
                  "result |", "|---|---:|---|---:|---:|---|---:|---|---|"]
        counts: dict[tuple[str, int], dict[str, int]] = {}
        for c in report[key]:
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
    return lines


def _frontier_table(entries: list[dict], title: str) -> list[str]:
    """Each per-row row against the best fewer-steps row at least as fast (`frontier_comparisons`)."""
    lines = ["", f"## Against the solver's fewer-steps frontier{title}: the best fewer-steps row at least as fast", "",
             "| row | batch | speedup | fewer-steps row | its speedup | FID(row) - FID(it) | result |",
             "|---|---:|---:|---|---:|---|---|"]
    for c in entries:
        f = c["frontier"]
        lines.append(f"| {c['row']} | {c['batch']} | {c['speedup']:.2f}x | "
                     + (f"{f['row']} | {_speed(f)} | {_by_net(f['dfid'])} | {f['result']} |" if f
                        else "none as fast | | | |"))
    return lines


def _tail_sections(report: dict) -> list[str]:
    """What could not attach, the batch composition, batch independence and the per-row state."""
    batches = report["preset"]["batches"]
    lines: list[str] = []
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
    return lines


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


def own_frontier(rows: dict, xl: bool = False) -> set[str]:
    """The cache rows (not the sorted-batch ones) that no other setting of the same cache dominates at their batch:
    none is at least as fast there with an FID no higher under every net (point estimates), one of the two strictly.
    `xl`: fast by the speedup at DiT-XL/2 width instead of the wall-clock.

    ```py
    >>> row = lambda speed, fid: {"family": "sea_cache", "batch": 1, "timing": {"1": {"speedup": speed}},
    ...                           "fid_by_net": {"a": fid, "b": fid}}
    >>> sorted(own_frontier({"fast": row(3.0, 9.0), "good": row(2.0, 5.0), "worse": row(2.0, 6.0)}))
    ['fast', 'good']

    ```
    """
    caches = {n: r for n, r in rows.items() if r["family"] in CACHE_FAMILIES and not n.endswith("sorted")}

    def speed(r: dict) -> float:
        return r["xl_cost"]["speedup"] if xl else r["timing"][str(r["batch"])]["speedup"]

    def dominates(a: dict, b: dict) -> bool:
        no_worse = speed(a) >= speed(b) and all(a["fid_by_net"][k] <= v for k, v in b["fid_by_net"].items())
        return no_worse and (speed(a) > speed(b) or any(a["fid_by_net"][k] < v for k, v in b["fid_by_net"].items()))

    return {n for n, r in caches.items()
            if not any(o["family"] == r["family"] and o["batch"] == r["batch"] and dominates(o, r)
                       for m, o in caches.items() if m != n)}


def _summary_table(report: dict, what: str, field: str, prefix: str, last_header: str,
                   key: str = "summary") -> list[str]:
    """Per cache family: wins/ties/loses/unmatched of `what` at each batch (`report[key][family][field]`), and the
    family's `{prefix}_wins_somewhere` and `{prefix}_never_loses_at_batch_1`."""
    batches = report["preset"]["batches"]
    lines = ["", f"## Summary ({what} against each cache{', at DiT-XL/2-width cost' if key != 'summary' else ''})", "",
             "| cache | " + " | ".join(f"b{b}: wins/ties/loses/unmatched" for b in batches)
             + f" | wins somewhere | {last_header} |", "|---|" + "---|" * (len(batches) + 2)]
    for family, s in report[key].items():
        cells = []
        for b in batches:
            v = s[field].get(str(b))
            cells.append("" if v is None else f"{v['wins']}/{v['ties']}/{v['loses']}/{v['no_faster_row']}")
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {s[f'{prefix}_wins_somewhere']} | "
                     f"{s[f'{prefix}_never_loses_at_batch_1']} |")
    return lines


def _xl_line(report: dict) -> list[str]:
    """What the DiT-XL/2-width speedups are (reports from before they were measured: nothing)."""
    if "xl_parts" not in report:
        return []
    shape = report["xl_parts"]["shape"]
    return ["", f"Speedup at DiT-XL/2 width: the stock model's cost over the row's, each priced from the work the row "
                f"did (model calls, blocks computed, blocks forecast, skipped blocks free) with a block's parts timed "
                f"once at width {shape['width']}, {shape['heads']} heads, {report['xl_parts']['tokens']} tokens, batch "
                f"{shape['batch']} ({report['xl_parts']['threads']} thread(s), random weights); cache-dit "
                f"{report['environment'].get('cache_dit')}."]


def holds_quality(row: dict, reference: dict) -> bool:
    """Unchanged quality (docs/evaluation.md) under every net: the paired interval against the reference includes 0 or
    lies below it, or lies wholly below +10% of the reference's FID. Rows scored on all images only.

    ```py
    >>> ref = {"fid_by_net": {"a": 10.0, "b": 20.0}}  # +10%: 1.0 and 2.0
    >>> row = lambda lows, highs: {"scored_on": "all", "dfid_reference": {"by_net": {
    ...     k: {"low": lo, "high": hi} for k, lo, hi in zip("ab", lows, highs)}}}
    >>> holds_quality(row((-0.5, 0.2), (0.5, 1.5)), ref), holds_quality(row((0.5, 0.2), (1.5, 1.5)), ref)
    (True, False)

    ```
    """
    if row["scored_on"] != "all":
        return False
    return all(d["low"] <= 0 or d["high"] < 0.1 * reference["fid_by_net"][net]
               for net, d in row["dfid_reference"]["by_net"].items())


def _fastest_holding(report: dict) -> list[str]:
    """Per family, its fastest row at unchanged quality, by wall-clock at the largest batch and at DiT-XL/2 width."""
    rows, big = report["rows"], str(max(report["preset"]["batches"]))
    reference = rows[report["reference"]]
    lines = ["", "## Fastest at unchanged quality, per family", "",
             "Unchanged quality: under every net, the paired 90% interval of dFID against the reference includes 0, "
             "lies below it, or lies wholly below +10% of the reference's FID (docs/evaluation.md). Rows sampled at "
             f"batch {big} (the caches decide per batch).", "",
             f"| family | fastest by wall-clock (b{big}) | speedup | at DiT-XL/2 width | fastest at DiT-XL/2 width | "
             "speedup | by wall-clock |", "|---|---|---:|---:|---|---:|---:|"]
    families = dict.fromkeys(r["family"] for r in rows.values())
    for family in families:
        pool = [r for r in rows.values() if r["family"] == family and holds_quality(r, reference)
                and (r["family"] not in CACHE_FAMILIES or r["batch"] == int(big)) and not r["name"].endswith("sorted")]
        if not pool:
            lines.append(f"| {family} | none holds quality | | | | | |")
            continue
        wall = max(pool, key=lambda r: r["timing"][big]["speedup"])
        xl = max(pool, key=lambda r: r["xl_cost"]["speedup"])
        lines.append(f"| {family} | {wall['name']} | {wall['timing'][big]['speedup']:.2f}x | "
                     f"{wall['xl_cost']['speedup']:.2f}x | {xl['name']} | {xl['xl_cost']['speedup']:.2f}x | "
                     f"{xl['timing'][big]['speedup']:.2f}x |")
    return lines


def _xl_sections(report: dict) -> list[str]:
    """The DiT-XL/2-width parts, and the comparisons again at that cost."""
    p = report["xl_parts"]
    s = p["seconds"]
    lines = ["", "## At DiT-XL/2-width cost", "",
             f"Parts, seconds per call of {p['shape']['batch']} rows (medians; {p['stock_calls']} stock calls, forecast "
             f"calls {p['forecast_calls']}): a model call outside its blocks {s['fixed']:.4f}; a block {s['block']:.4f}"
             f" (attention {s['attention']:.4f}, feed-forward {s['feed_forward']:.4f}, norms, modulation and residuals "
             f"{s['rest']:.4f} by difference); a forecast block "
             + ", ".join(f"{k} {v:.4f}" for k, v in s["forecast_block"].items())
             + f"; a cache's per-call bookkeeping {s['cache_op']:.5f}."]
    lines += _fastest_holding(report)
    lines += _block_forecast_matches(report, "comparisons_xl", "Matched DiT-XL/2-width cost", True)
    lines += _frontier_table(report["frontier_comparisons_xl"], " at DiT-XL/2-width cost")
    lines += _summary_table(report, "BlockForecast rows", "block_forecast_by_batch", "block_forecast",
                            "never loses at batch 1", key="summary_xl")
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
                 "sea_cache": "tab:green", "mag_cache": "tab:orange", "cache_dit": "tab:cyan"}


def plot(report: dict, path: str | Path) -> None:
    """FID against speedup, one panel per batch size (and one at DiT-XL/2-width cost); the frontier as a line,
    per-row rows by forecast order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One panel per batch by wall-clock, and (reports that have it) one by the cost at DiT-XL/2 width, whose rows
    # are those sampled at the largest batch.
    panels = [(b, False) for b in report["preset"]["batches"]]
    panels += [(max(report["preset"]["batches"]), True)] if "xl_parts" in report else []
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, (b, xl) in zip(axes[0], panels):
        on_batch1 = b == 1

        def speed(r: dict) -> float:
            return r["xl_cost"]["speedup"] if xl else r["timing"][str(b)]["speedup"]

        pts = sorted((speed(r), r["fid_batch1_set"] if on_batch1 else r["fid"])
                     for r in report["rows"].values() if r["family"] in ("reference", "fewer_steps"))
        ax.plot(*zip(*pts), "-o", color="black", ms=4, label="fewer steps")
        for r in report["rows"].values():
            if r["family"] == "block_forecast":
                fid = r["fid_batch1_set"] if on_batch1 else r["fid"]
                ax.plot(speed(r), fid, "^", color="tab:brown")
            elif r["family"] == "tail_cache":
                fid = r["fid_batch1_set"] if on_batch1 else r["fid"]
                order = r["notes"]["forecast_order"]
                ax.plot(speed(r), fid, "s" if order else "D", color="tab:red", mfc="tab:red" if order else "none")
            elif r["family"] in CACHE_FAMILIES and r["batch"] == b and not r["name"].endswith("sorted"):
                ax.plot(speed(r), r["fid"], "o", color=FAMILY_COLORS[r["family"]])
        for label, color, marker, fill in (("BlockForecast", "tab:brown", "^", "tab:brown"),
                                           ("per-row, forecast", "tab:red", "s", "tab:red"),
                                           ("per-row, reuse", "tab:red", "D", "none")):
            ax.plot([], [], marker, color=color, mfc=fill, label=label)
        for family in CACHE_FAMILIES:
            ax.plot([], [], "o", color=FAMILY_COLORS[family], label=family)
        ax.set_xlabel("speedup at DiT-XL/2-width cost (stock model = 1)" if xl else
                      f"speedup at batch {b} (stock model = 1)")
        ax.set_ylabel(f"FID ({report['feature_net']} features, "
                      f"{report['batch1_images'] if on_batch1 else report['num_images']} images)")
        ax.set_title(f"{report['setting']}, " + (f"DiT-XL/2 width (batch-{b} samples)" if xl else f"batch {b}"))
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
