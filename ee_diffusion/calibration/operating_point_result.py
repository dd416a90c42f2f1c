"""What `search_operating_point` found: the candidates table, the held-out tries, and the operating point.

`OperatingPointSearch.operating_point` is the `OperatingPoint` a pipeline folder stores
(`store_operating_point`, then `save_pretrained`); `to_dict` / `save` write the whole search as JSON, exit configs as
`EarlyExitConfig.to_dict` (so they load back with `EarlyExitConfig.from_dict`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write_json, atomic_write_text
from ..config import EarlyExitConfig
from ..operating_point import OperatingPoint


@dataclass
class Candidate:
    """One (solver, steps, exit config) measured on the calibration seeds.

    `dfid`: FID - reference FID with its paired interval; `holds`: unchanged quality by it (the search's
    tolerance). `dfid_full_depth` / `holds_vs_full_depth`: the same against full depth at the candidate's own
    solver and steps (None for full-depth candidates): what `exit_configs_by_steps` is chosen by.
    """

    name: str
    family: str
    solver: str
    scheduler: str
    steps: int
    exit_config: EarlyExitConfig | None
    block_fraction: float
    fid: float
    dfid: dict[str, float]
    holds: bool
    dfid_full_depth: dict[str, float] | None = None
    holds_vs_full_depth: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "solver": self.solver, "scheduler": self.scheduler,
                "steps": self.steps, "exit_config": None if self.exit_config is None else self.exit_config.to_dict(),
                "block_fraction": self.block_fraction, "fid": self.fid, "dfid": dict(self.dfid), "holds": self.holds,
                "dfid_full_depth": None if self.dfid_full_depth is None else dict(self.dfid_full_depth),
                "holds_vs_full_depth": self.holds_vs_full_depth}


@dataclass
class Confirmation:
    """One candidate re-measured on the held-out seeds against the reference re-sampled there.

    `within_budget` is None for a tolerance goal; `confirmed` is `holds` (tolerance) or `within_budget` (budget).
    """

    name: str
    block_fraction: float
    fid: float
    dfid: dict[str, float]
    holds: bool
    within_budget: bool | None
    confirmed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "block_fraction": self.block_fraction, "fid": self.fid, "dfid": dict(self.dfid),
                "holds": self.holds, "within_budget": self.within_budget, "confirmed": self.confirmed}


@dataclass
class OperatingPointSearch:
    """The result of `search_operating_point`.

    Args:
        goal: {"tolerance": t} or {"budget": b}.
        reference: solver, scheduler class, steps, calibration FID and held-out FID (None if not sampled).
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
        quality_tolerance: the tolerance of `holds` (the goal's, else `QUALITY_TOLERANCE`).
        settings: image counts, seeds, confidence, bootstrap, conditioning.
        timing: wall-clock of the point against the reference, when measured
            (`ee_diffusion.benchmarks.point_timing.time_operating_points`; None: not measured).
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
    quality_tolerance: float
    settings: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] | None = None

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
                                  measured_in=measured)
        chosen = self.candidate(self.chosen)
        by_steps: dict[int, EarlyExitConfig | None] = {}
        for k in sorted({c.steps for c in self.candidates if c.solver == chosen.solver}):
            good = [c for c in self.candidates if c.solver == chosen.solver and c.steps == k and c.holds_vs_full_depth]
            best = min(good, key=lambda c: (c.block_fraction, c.fid)) if good else None
            by_steps[k] = None if best is None else copy.deepcopy(best.exit_config)
        by_steps[chosen.steps] = copy.deepcopy(chosen.exit_config)
        return OperatingPoint(scheduler=chosen.scheduler, num_inference_steps=chosen.steps,
                              guidance_scale=self.guidance_scale, exit_config=copy.deepcopy(chosen.exit_config),
                              exit_configs_by_steps=by_steps, reference_steps=ref["steps"], measured_in=measured)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable; `operating_point` loads back with `OperatingPoint.from_dict`."""
        return {"goal": dict(self.goal), "reference": dict(self.reference), "chosen": self.chosen,
                "confirmed": self.confirmed, "why": self.why, "guidance_scale": self.guidance_scale,
                "quality_tolerance": self.quality_tolerance, "operating_point": self.operating_point.to_dict(),
                "vs_frontier": self.vs_frontier, "baselines": self.baselines, "tries": [t.to_dict() for t in self.tries],
                "candidates": [c.to_dict() for c in self.candidates], "settings": dict(self.settings),
                "timing": self.timing}

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


def search_markdown(data: dict[str, Any]) -> str:
    """The search's outcome and tables, from its JSON alone (`OperatingPointSearch.to_dict`)."""
    s, ref = data["settings"], data["reference"]
    lines = ["# Operating-point search", "", f"Command: `{s.get('command', '')}`", "",
             f"Goal {data['goal']}; reference {ref['solver']}{ref['steps']} (full depth), FID {ref['fid']:.3f} on "
             f"{s['calib_images']} calibration images (seed {s['calib_seed']}) and {ref['holdout_fid'] or float('nan'):.3f} "
             f"on {s['holdout_images']} held-out images (seed {s['holdout_seed']}); "
             f"{s['confidence']:.0%} paired intervals over {s['bootstrap']} resamples.", "", f"**{data['why']}.**", "",
             "## Held-out confirmation", "", "| candidate | blocks | FID | dFID vs reference | holds | confirmed |",
             "|---|---:|---:|---|---|---|"]
    lines += [f"| {t['name']} | {t['block_fraction']:.3f} | {t['fid']:.3f} | {_interval(t['dfid'])} | {t['holds']} | "
              f"{t['confirmed']} |" for t in data["tries"]]
    frontier = data.get("vs_frontier") or {}
    if frontier.get("frontier"):
        lines += ["", f"Against the best fewer-steps point that costs no more (`{frontier['frontier']}`, blocks "
                      f"{frontier['frontier_block_fraction']:.3f}), held-out: dFID "
                      f"{_interval(frontier['dfid_chosen_minus_frontier'])}."]
    for name, entry in data.get("baselines", {}).items():
        lines += ["", f"Against the {name} (blocks {entry['block_fraction']:.3f}, dFID vs reference "
                      f"{_interval(entry['dfid'])}), held-out: dFID {_interval(entry['dfid_chosen_minus_baseline'])}."]
    timing = data.get("timing")
    if timing:
        lines += ["", f"## Wall-clock, batch {timing['batch']} ({timing.get('threads', '?')} thread(s), median of "
                      f"{timing['repeats']} interleaved rounds, load average {timing['load_average_before']} before "
                      f"and {timing['load_average_after']} after)", "", "| point | steps | median s | speedup |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {name} | {p['steps']} | {p['median_s']:.3f} | {p['speedup']:.2f}x |"
                  for name, p in timing["points"].items()]
    lines += ["", "## Candidates (calibration images), by block fraction", "",
              "| candidate | blocks | FID | dFID vs reference | holds | dFID vs full depth at its steps |",
              "|---|---:|---:|---|---|---|"]
    for c in sorted(data["candidates"], key=lambda c: (c["block_fraction"], c["fid"])):
        full = "" if c["dfid_full_depth"] is None else _interval(c["dfid_full_depth"])
        lines.append(f"| {c['name']} | {c['block_fraction']:.3f} | {c['fid']:.3f} | {_interval(c['dfid'])} | "
                     f"{c['holds']} | {full} |")
    return "\n".join(lines) + "\n"
