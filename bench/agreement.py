"""Two bench reports of the same model compared row by row: does `bench --pipeline` (the generic path) agree with
`bench --settings` (the path built for our models)?

For every method measured by both (same name: same solver, steps and method), the generic run's dFID against its
reference should lie inside the other run's paired interval, and the other way round. FIDs themselves should
differ only by what the generic path changes on purpose: images are quantized to uint8, as saved PNGs are, and
the real images are read back from an exported folder.

```py
>>> row = lambda fid, d, lo, hi: {"fid": fid, "dfid_reference": {"delta": d, "low": lo, "high": hi}}
>>> a = {"reference": "r", "rows": {"r": row(10.0, 0, 0, 0), "m": row(11.0, 1.0, 0.5, 1.6)}}
>>> b = {"reference": "r", "rows": {"r": row(10.1, 0, 0, 0), "m": row(11.2, 1.1, 0.4, 1.5)}}
>>> result = compare(a, b)
>>> result["agree"], [r["name"] for r in result["rows"]]
(True, ['r', 'm'])

```
"""

from __future__ import annotations

from typing import Any


def compare(generic: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Rows of two report entries (one setting / feature network each) measured by both, and whether every
    one's dFID against the reference lies in the other's paired interval."""
    if generic["reference"] != settings["reference"]:
        raise ValueError(f"the two reports have different references: {generic['reference']!r} and "
                         f"{settings['reference']!r}")
    rows = []
    for name, a in generic["rows"].items():
        b = settings["rows"].get(name)
        if b is None:
            continue
        da, db = a["dfid_reference"], b["dfid_reference"]
        inside = db["low"] <= da["delta"] <= db["high"] and da["low"] <= db["delta"] <= da["high"]
        rows.append({"name": name, "fid_generic": a["fid"], "fid_settings": b["fid"],
                     "fid_difference": a["fid"] - b["fid"], "dfid_generic": da, "dfid_settings": db,
                     "agree": bool(inside)})
    return {"reference": generic["reference"], "rows": rows, "agree": all(r["agree"] for r in rows)}


def markdown(result: dict[str, Any], commands: dict[str, str]) -> str:
    """The comparison as a Markdown table, with the two commands that made the reports."""
    def interval(d: dict[str, float]) -> str:
        return f"{d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"

    lines = ["| method | FID generic | FID settings | difference | dFID generic (90% CI) | dFID settings (90% CI) "
             "| each inside the other's interval |", "|---|---:|---:|---:|---|---|:-:|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['fid_generic']:.3f} | {r['fid_settings']:.3f} | {r['fid_difference']:+.3f} "
                     f"| {interval(r['dfid_generic'])} | {interval(r['dfid_settings'])} | "
                     f"{'yes' if r['agree'] else 'no'} |")
    verdict = ("Every method measured by both agrees within the paired intervals." if result["agree"] else
               "Some methods disagree beyond the paired intervals (marked no).")
    return "\n".join([f"Reference: `{result['reference']}`. {verdict}", "",
                      *[f"- {k}: `{v}`" for k, v in commands.items()], "", *lines]) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.agreement --generic R1 --settings R2 --setting digits --out PREFIX`:
    writes PREFIX.json and PREFIX.md (the first entry of R1 against the entry `--setting` of R2)."""
    import argparse
    import shlex
    import sys

    from ee_diffusion._io import atomic_write_json, atomic_write_text, read_json_file

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--generic", required=True, help="report.json of `bench --pipeline`")
    parser.add_argument("--settings", required=True, help="report.json of `bench --settings` / `--preset`")
    parser.add_argument("--setting", default="digits")
    parser.add_argument("--out", required=True, help="path prefix of the .json and .md written")
    args = parser.parse_args(argv)
    generic = read_json_file(args.generic, "bench --pipeline report")
    settings = read_json_file(args.settings, "bench report")
    entries = {s["setting"]: s for s in settings["settings"]}
    if args.setting not in entries:
        raise SystemExit(f"{args.settings} has no setting {args.setting!r}; it has {sorted(entries)}")
    result = compare(generic["settings"][0], entries[args.setting])
    command = shlex.join(["python", "-m", "bench.agreement", *(sys.argv[1:] if argv is None else argv)])
    result["commands"] = {"generic path": generic["command"], "settings path": settings["command"], "comparison": command}
    atomic_write_json(f"{args.out}.json", result, indent=1)
    atomic_write_text(f"{args.out}.md", markdown(result, result["commands"]))
    print(markdown(result, result["commands"]))
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
