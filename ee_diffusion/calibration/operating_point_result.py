"""What `search_operating_point` found: the candidates table, the held-out tries, and the operating point.

`OperatingPointSearch.operating_point` is the `OperatingPoint` a pipeline folder stores
(`store_operating_point`, then `save_pretrained`); `to_dict` / `save` write the whole search as JSON, exit configs as
`EarlyExitConfig.to_dict` (so they load back with `EarlyExitConfig.from_dict`), and `save` its tables as Markdown
beside it (`search_markdown`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .._io import atomic_write_json, atomic_write_text
from ..config import EarlyExitConfig
from ..operating_point import OperatingPoint


@dataclass
class Candidate:
    """One (solver, steps, exit config) measured on the calibration seeds.

    `fid`, `dfid`: under the primary feature network, FID and FID - reference FID with its paired interval;
    `holds`: the goal's screening bar (unchanged quality at the search's tolerance under every feature network, or
    for a PSNR goal mean PSNR >= min_psnr). `dfid_full_depth` / `holds_vs_full_depth`: the same against full depth
    at the candidate's own solver and steps (None for full-depth candidates): what `exit_configs_by_steps` is
    chosen by. `by_net`: per feature network its fid, dfid, holds (and dfid_full_depth). A PSNR goal has no FIDs
    (None) and records `psnr` (mean per-image PSNR against the reference image from the same noise, dB, with its
    bootstrap interval: mean, low, high) and `psnr_full_depth` (against full depth at its solver and steps).
    """

    name: str
    family: str
    solver: str
    scheduler: str
    steps: int
    exit_config: EarlyExitConfig | None
    block_fraction: float
    fid: float | None
    dfid: dict[str, float] | None
    holds: bool
    dfid_full_depth: dict[str, float] | None = None
    holds_vs_full_depth: bool | None = None
    by_net: dict[str, dict[str, Any]] = field(default_factory=dict)
    psnr: dict[str, float] | None = None
    psnr_full_depth: dict[str, float] | None = None

    @property
    def rank(self) -> float:
        """Lower is better: the FID, or for a PSNR goal minus the mean PSNR (ties in cost are broken by it)."""
        return self.fid if self.fid is not None else -self.psnr["mean"]

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)


@dataclass
class Confirmation:
    """One candidate re-measured on the held-out seeds against the reference re-sampled there.

    `fid`, `dfid`: under the primary feature network; `holds`: the held-out bar (`confirms_quality` under every
    feature network, `by_net` per network; for a PSNR goal, the low end of `psnr`'s interval >= min_psnr).
    `within_budget` is None for a quality goal; `confirmed` is `holds` (tolerance, min_psnr) or `within_budget`
    (budget). `fidelity`: mean PSNR/SSIM against the reference image from the same noise (`eval.paired.fidelity`).
    """

    name: str
    block_fraction: float
    fid: float | None
    dfid: dict[str, float] | None
    holds: bool
    within_budget: bool | None
    confirmed: bool
    by_net: dict[str, dict[str, Any]] = field(default_factory=dict)
    fidelity: dict[str, Any] | None = None
    psnr: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)


def _record_dict(record: Candidate | Confirmation) -> dict[str, Any]:
    """A candidate's or try's fields, JSON-ready (exit configs as `EarlyExitConfig.to_dict`)."""
    out = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name in ("psnr", "psnr_full_depth") and record.psnr is None:
            continue  # only a PSNR goal's: an FID search's JSON keeps its fields
        out[f.name] = value.to_dict() if isinstance(value, EarlyExitConfig) else copy.deepcopy(value)
    return out


@dataclass
class OperatingPointSearch:
    """The result of `search_operating_point`.

    Args:
        goal: {"tolerance": t}, {"budget": b} or {"min_psnr": dB}.
        reference: solver, scheduler class, steps, calibration FID and held-out FID (None if not sampled or a PSNR
            goal).
        candidates: every candidate in search order.
        tries: the held-out confirmations, in the order tried.
        chosen: the confirmed candidate's name (None: nothing met the goal, see `why`).
        confirmed: whether a candidate met the goal on calibration and held-out seeds.
        why: one sentence on the outcome.
        vs_frontier: on the held-out seeds, the chosen point against the best full-depth candidate that costs no
            more (`dfid_chosen_minus_frontier`; negative: the exit config beats fewer steps).
        baselines: per name given to the search, an operating point measured on the held-out seeds beside the
            chosen one: its block fraction, dFID against the reference and the chosen point's dFID against it.
        guidance_scale: guidance the search sampled at (the operating point's).
        quality_tolerance: the tolerance of `holds` (the goal's, else `QUALITY_TOLERANCE`; None: a PSNR goal).
        decision: the feature networks (the primary first), the number of candidates screened, and the screening
            and confirmation bars (confidence, rule).
        settings: image counts, seeds, confidence, bootstrap, conditioning.
        timing: wall-clock of the point against the reference, when measured
            (`ee_diffusion.eval.point_timing.time_operating_points`; None: not measured).
        solvers: per solver name searched, its scheduler class and the options it was built with over the
            pipeline's own scheduler config (the operating point records them: `scheduler_options`).
    """

    goal: dict[str, float]
    reference: dict[str, Any]
    candidates: list[Candidate]
    tries: list[Confirmation]
    chosen: str | None
    confirmed: bool
    why: str
    vs_frontier: dict[str, Any] | None
    baselines: dict[str, Any]
    guidance_scale: float
    quality_tolerance: float | None
    decision: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] | None = None
    solvers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def candidate(self, name: str) -> Candidate:
        found = [c for c in self.candidates if c.name == name]
        if not found:
            raise KeyError(f"no candidate named {name!r}; candidates: {[c.name for c in self.candidates]}")
        return found[0]

    @property
    def point_solver(self) -> str:
        """The solver of the operating point: the chosen candidate's, else the reference's."""
        return self.reference["solver"] if self.chosen is None else self.candidate(self.chosen).solver

    @property
    def operating_point(self) -> OperatingPoint:
        """The chosen (scheduler, steps, guidance, exit config); per searched step count of its solver, the cheapest
        exit config that holds quality against full depth at those steps (None if none does); the chosen steps
        run the chosen config. Nothing confirmed: the reference, full depth."""
        ref = self.reference
        measured = f"search_operating_point ({self.goal}): {self.why}"
        if self.chosen is None:
            return OperatingPoint(scheduler=ref["scheduler"], num_inference_steps=ref["steps"],
                                  guidance_scale=self.guidance_scale, reference_steps=ref["steps"],
                                  measured_in=measured, scheduler_options=self._options(ref["solver"]))
        chosen = self.candidate(self.chosen)
        by_steps: dict[int, EarlyExitConfig | None] = {}
        for k in sorted({c.steps for c in self.candidates if c.solver == chosen.solver}):
            good = [c for c in self.candidates if c.solver == chosen.solver and c.steps == k and c.holds_vs_full_depth]
            best = min(good, key=lambda c: (c.block_fraction, c.rank)) if good else None
            by_steps[k] = None if best is None else copy.deepcopy(best.exit_config)
        by_steps[chosen.steps] = copy.deepcopy(chosen.exit_config)
        return OperatingPoint(scheduler=chosen.scheduler, num_inference_steps=chosen.steps,
                              guidance_scale=self.guidance_scale, exit_config=copy.deepcopy(chosen.exit_config),
                              exit_configs_by_steps=by_steps, reference_steps=ref["steps"], measured_in=measured,
                              scheduler_options=self._options(chosen.solver))

    def _options(self, solver: str) -> dict[str, Any]:
        return copy.deepcopy(self.solvers.get(solver, {}).get("options", {}))

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable; `operating_point` loads back with `OperatingPoint.from_dict`."""
        return {"goal": dict(self.goal), "reference": dict(self.reference), "chosen": self.chosen,
                "confirmed": self.confirmed, "why": self.why, "guidance_scale": self.guidance_scale,
                "quality_tolerance": self.quality_tolerance, "decision": copy.deepcopy(self.decision),
                "operating_point": self.operating_point.to_dict(),
                "vs_frontier": self.vs_frontier, "baselines": self.baselines, "tries": [t.to_dict() for t in self.tries],
                "candidates": [c.to_dict() for c in self.candidates], "settings": dict(self.settings),
                "timing": self.timing, "solvers": copy.deepcopy(self.solvers)}

    def save(self, path: str | Path) -> None:
        """Write `to_dict()` as JSON, and its tables (`search_markdown`) beside it as Markdown (same name, `.md`),
        atomically (never a half-written file), creating the folder."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        atomic_write_json(path, data, indent=1)
        atomic_write_text(path.with_suffix(".md"), search_markdown(data))


def _interval(d: dict[str, float]) -> str:
    return f"{d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def _nets(data: dict[str, Any]) -> list[str]:
    """The feature networks of a search's JSON (one unnamed network for searches written before there were more)."""
    return list(data.get("decision", {}).get("feature_nets", []))


def _per_net(entry: dict[str, Any], nets: list[str], key: str = "dfid") -> str:
    """One cell per feature network: the entry's `key` interval under it ('' when not recorded)."""
    by_net = entry.get("by_net") or {}
    return " | ".join(_interval(by_net[n][key]) if key in by_net.get(n, {}) else "" for n in nets)


def _quality_cells(entry: dict[str, Any], nets: list[str]) -> str:
    """The dFID-vs-reference cells of a row: one per feature network, or the one interval of a single-net search."""
    return _per_net(entry, nets) if nets else _interval(entry["dfid"])


def _under(entry: dict[str, Any], nets: list[str], key: str) -> str:
    """"; digits +0.1 [...]; digits-pool ..." for every network that recorded `key` (nothing for a single net)."""
    by_net = entry.get("by_net") or {}
    return "".join(f"; {n} {_interval(by_net[n][key])}" for n in nets if key in by_net.get(n, {}))


def _timing_lines(timing: dict[str, Any] | None) -> list[str]:
    if not timing:
        return []
    lines = ["", f"## Wall-clock, batch {timing['batch']} ({timing.get('threads', '?')} thread(s), median of "
                 f"{timing['repeats']} interleaved rounds, load average {timing['load_average_before']} before "
                 f"and {timing['load_average_after']} after)", "", "| point | steps | median s | speedup |",
             "|---|---:|---:|---:|"]
    return lines + [f"| {name} | {p['steps']} | {p['median_s']:.3f} | {p['speedup']:.2f}x |"
                    for name, p in timing["points"].items()]


def _db(d: dict[str, float] | None) -> str:
    """A mean PSNR (dB) with its interval ('' when not recorded)."""
    return "" if d is None else f"{d['mean']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def _psnr_markdown(data: dict[str, Any]) -> str:
    """`search_markdown` of a PSNR goal: PSNR columns in dB where an FID search has FIDs."""
    s, ref, decision = data["settings"], data["reference"], data["decision"]
    conf = decision["confirmation"]
    lines = ["# Operating-point search", "", f"Command: `{s.get('command', '')}`", "",
             f"Goal {data['goal']}: PSNR against the reference image from the same noise (no real images, no feature "
             f"networks); reference {ref['solver']}{ref['steps']} (full depth), {s['calib_images']} calibration "
             f"images (seed {s['calib_seed']}) and {s['holdout_images']} held-out images (seed {s['holdout_seed']}); "
             f"{s['confidence']:.0%} bootstrap intervals over {s['bootstrap']} resamples.", "",
             f"Screening: {decision['screening']['rule']}, {decision['screened']} candidates. Held-out confirmation "
             f"(stricter, against the selection among {decision['screened']}): {conf['rule']}, "
             f"{conf['confidence']:.1%} intervals (at most {conf['tries_allowed']} tries on the same images).", "",
             f"**{data['why']}.**", "", "## Held-out confirmation", "",
             "| candidate | blocks | PSNR dB | SSIM | holds | confirmed |", "|---|---:|---:|---:|---|---|"]
    for t in data["tries"]:
        ssim = (t.get("fidelity") or {}).get("ssim", float("nan"))
        lines.append(f"| {t['name']} | {t['block_fraction']:.3f} | {_db(t['psnr'])} | {ssim:.3f} | {t['holds']} | "
                     f"{t['confirmed']} |")
    frontier = data.get("vs_frontier") or {}
    if frontier.get("frontier"):
        lines += ["", f"Against the best fewer-steps point that costs no more (`{frontier['frontier']}`, blocks "
                      f"{frontier['frontier_block_fraction']:.3f}), held-out: dPSNR "
                      f"{_interval(frontier['dpsnr_chosen_minus_frontier'])} dB."]
    for name, entry in data.get("baselines", {}).items():
        lines += ["", f"Against the {name} (blocks {entry['block_fraction']:.3f}, PSNR {_db(entry['psnr'])} dB), "
                      f"held-out: dPSNR {_interval(entry['dpsnr_chosen_minus_baseline'])} dB."]
    lines += _timing_lines(data.get("timing"))
    lines += ["", "## Candidates (calibration images), by block fraction", "",
              "| candidate | blocks | PSNR dB | holds | PSNR dB vs full depth at its steps |", "|---|---:|---:|---|---|"]
    for c in sorted(data["candidates"], key=lambda c: (c["block_fraction"], -c["psnr"]["mean"])):
        lines.append(f"| {c['name']} | {c['block_fraction']:.3f} | {_db(c['psnr'])} | {c['holds']} | "
                     f"{_db(c.get('psnr_full_depth'))} |")
    return "\n".join(lines) + "\n"


def search_markdown(data: dict[str, Any]) -> str:
    """The search's outcome and tables, from its JSON alone (`OperatingPointSearch.to_dict`)."""
    if "min_psnr" in data["goal"]:
        return _psnr_markdown(data)
    s, ref, nets = data["settings"], data["reference"], _nets(data)
    decision = data.get("decision", {})
    quality_heads = "".join(f" dFID ({n}) |" for n in nets) if nets else " dFID vs reference |"
    quality_rules = "---|" * max(1, len(nets))
    lines = ["# Operating-point search", "", f"Command: `{s.get('command', '')}`", "",
             f"Goal {data['goal']}; reference {ref['solver']}{ref['steps']} (full depth), FID {ref['fid']:.3f} on "
             f"{s['calib_images']} calibration images (seed {s['calib_seed']}) and {ref['holdout_fid'] or float('nan'):.3f} "
             f"on {s['holdout_images']} held-out images (seed {s['holdout_seed']}); "
             f"{s['confidence']:.0%} paired intervals over {s['bootstrap']} resamples.", ""]
    if decision:
        conf = decision["confirmation"]
        held = ref.get("holdout_fids") or {}
        fids = "".join(f", {n} {held[n]:.3f}" for n in nets if n in held)
        lines += [f"Feature networks: {', '.join(f'`{n}`' for n in nets)} (the FID column: `{decision['primary']}`; "
                  f"held-out reference FIDs{fids or ' not sampled'}). Screening: {decision['screening']['rule']}, "
                  f"{decision['screening']['confidence']:.0%} intervals, {decision['screened']} candidates. "
                  f"Held-out confirmation (stricter, against the selection among {decision['screened']}): "
                  f"{conf['rule']}, {conf['confidence']:.1%} intervals (at most {conf['tries_allowed']} tries on the "
                  f"same images).", ""]
    lines += [f"**{data['why']}.**", "", "## Held-out confirmation", "",
              f"| candidate | blocks | FID |{quality_heads} PSNR dB | SSIM | holds | confirmed |",
              f"|---|---:|---:|{quality_rules}---:|---:|---|---|"]
    for t in data["tries"]:
        fid = t.get("fidelity") or {}
        lines.append(f"| {t['name']} | {t['block_fraction']:.3f} | {t['fid']:.3f} | {_quality_cells(t, nets)} | "
                     f"{fid.get('psnr_db', float('nan')):.2f} | {fid.get('ssim', float('nan')):.3f} | {t['holds']} | "
                     f"{t['confirmed']} |")
    frontier = data.get("vs_frontier") or {}
    if frontier.get("frontier"):
        under = _under(frontier, nets, "dfid_chosen_minus_frontier")
        lines += ["", f"Against the best fewer-steps point that costs no more (`{frontier['frontier']}`, blocks "
                      f"{frontier['frontier_block_fraction']:.3f}), held-out: dFID "
                      f"{_interval(frontier['dfid_chosen_minus_frontier'])}{under}."]
    for name, entry in data.get("baselines", {}).items():
        lines += ["", f"Against the {name} (blocks {entry['block_fraction']:.3f}, dFID vs reference "
                      f"{_interval(entry['dfid'])}{_under(entry, nets, 'dfid')}), held-out: dFID "
                      f"{_interval(entry['dfid_chosen_minus_baseline'])}"
                      f"{_under(entry, nets, 'dfid_chosen_minus_baseline')}."]
    lines += _timing_lines(data.get("timing"))
    lines += ["", "## Candidates (calibration images), by block fraction", "",
              f"| candidate | blocks | FID |{quality_heads} holds | dFID vs full depth at its steps |",
              f"|---|---:|---:|{quality_rules}---|---|"]
    for c in sorted(data["candidates"], key=lambda c: (c["block_fraction"], c["fid"])):
        full = "" if c["dfid_full_depth"] is None else _interval(c["dfid_full_depth"])
        lines.append(f"| {c['name']} | {c['block_fraction']:.3f} | {c['fid']:.3f} | {_quality_cells(c, nets)} | "
                     f"{c['holds']} | {full} |")
    return "\n".join(lines) + "\n"
