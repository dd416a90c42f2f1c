"""The two image sets of an operating-point search and how a candidate is sampled and scored on them.

A `Phase` is one set of seeds (calibration or held-out) scored under every feature network of the search: one
`PairedFID` per network, all on the same bootstrap resamples of the image indices, so each network gives its own
paired interval and the decision can ask for all of them (`frontier.holds_under_every_net`). The held-out phase
also keeps the reference's images, to report each try's per-image fidelity (PSNR/SSIM against the reference image
from the same noise) beside its FIDs.

`fid_candidate`, `fid_confirmation`, `fid_versus_frontier` and `fid_baseline` score the FID goals (tolerance,
budget) on them; `search_psnr` holds their PSNR-goal counterparts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from ..benchmarks.frontier import confirms_quality, holds_quality, holds_under_every_net
from ..config import EarlyExitConfig
from ..eval.paired import FrechetReference, PairedFID, fidelity
from ..eval.pipeline_sampling import sample_pipeline
from ..eval.sampling import SampleRun
from .operating_point_result import Candidate, Confirmation

#: A search's feature networks: name -> (images (N, C, H, W) in [0, 1] -> (N, F) features, real statistics).
FeatureNets = dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], FrechetReference]]


class Phase:
    """One set of seeds: per feature network its paired FIDs, and each run's block evaluations by name.

    Args:
        reals: feature network name -> its `FrechetReference` (the first is the primary network: the one the
            single-number columns of a report show).
        confidence: two-sided coverage of this phase's intervals.
        keep_reference: keep the reference's images (held-out phase: per-image fidelity of the tries).
    """

    def __init__(self, name: str, seed: int, num_images: int, reals: dict[str, FrechetReference], bootstrap: int,
                 confidence: float, keep_reference: bool = False) -> None:
        self.name, self.seed, self.num_images, self.confidence = name, seed, num_images, confidence
        self.paired = {net: PairedFID(real, num_images, num_resamples=bootstrap, confidence=confidence)
                       for net, real in reals.items()}
        self.primary = next(iter(reals))
        self.block_evals: dict[str, int] = {}
        self.fidelity: dict[str, dict[str, Any]] = {}  # name -> fidelity to the reference (keep_reference only)
        self.keep_reference = keep_reference
        self.reference_images: torch.Tensor | None = None  # (N, C, H, W), CPU
        self.by_key: dict[str, str] = {}  # (solver, steps, config) -> the name it was first sampled under
        self.full_depth: dict[tuple[str, int], str] = {}  # (solver, steps) -> its latest full-depth run's name

    def fraction(self, name: str) -> float:
        return self.block_evals[name] / self.block_evals["reference"]

    def fid(self, name: str) -> float:
        """FID of `name` under the primary network."""
        return self.paired[self.primary].point[name]

    def fids(self, name: str) -> dict[str, float]:
        return {net: p.point[name] for net, p in self.paired.items()}

    def difference(self, name: str, other: str) -> dict[str, dict[str, float]]:
        """Per network, FID(name) - FID(other) with its paired interval."""
        return {net: p.difference(name, other) for net, p in self.paired.items()}


class Sampler:
    """Samples a (solver, steps, exit config) on a phase's seeds, once per phase (deterministic: a repeat, such
    as the reference's own solver and steps among the candidates, reuses the features)."""

    def __init__(self, target: Any, schedulers: dict[str, Any], guidance: float | None, batch_size: int,
                 nets: dict[str, Callable[[torch.Tensor], torch.Tensor]], bar: Any,
                 on_sample: Callable[[str, str, SampleRun], None] | None) -> None:
        self.target, self.schedulers, self.guidance, self.batch_size = target, schedulers, guidance, batch_size
        self.nets, self.bar, self.on_sample = nets, bar, on_sample
        self._features: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def __call__(self, phase: Phase, name: str, solver: str, steps: int, config: EarlyExitConfig | None) -> None:
        if name in phase.block_evals:
            return
        if config is None:  # what the exit configs sampled next at these (solver, steps) are compared with
            phase.full_depth[(solver, steps)] = name
        key = json.dumps([solver, steps, None if config is None else config.to_dict()])
        if key in phase.by_key:
            first = phase.by_key[key]
            for net, paired in phase.paired.items():
                paired.add(name, self._features[(phase.name, first)][net])
            phase.block_evals[name] = phase.block_evals[first]
            if first in phase.fidelity:
                phase.fidelity[name] = phase.fidelity[first]
            return
        self.bar.set_postfix_str(f"{phase.name}: {name}")
        self.target.pipe.scheduler = self.schedulers[solver]
        run = sample_pipeline(self.target.pipe, range(phase.num_images), self.target.conditioning,
                              exit_config=config, heads=self.target.heads, bridges=self.target.bridges,
                              num_inference_steps=steps, guidance_scale=self.guidance, seed=phase.seed,
                              batch_size=self.batch_size)
        with torch.no_grad():
            features = {net: f(run.images).detach().double().cpu() for net, f in self.nets.items()}
        for net, paired in phase.paired.items():
            paired.add(name, features[net])
        phase.block_evals[name] = run.block_evals
        phase.by_key[key] = name
        self._features[(phase.name, name)] = features
        if phase.keep_reference:
            if name == "reference":
                phase.reference_images = run.images
            elif phase.reference_images is not None:
                phase.fidelity[name] = fidelity(run.images, phase.reference_images)
        if self.on_sample is not None:
            self.on_sample(phase.name, name, run)
        self.bar.update(1)


def fid_candidate(calib: Phase, name: str, family: str, solver: str, scheduler: str, steps: int,
                  config: EarlyExitConfig | None, tolerance: float) -> Candidate:
    """A candidate scored on the calibration seeds: its paired dFID against the reference (and, for an exit config,
    against full depth at its own solver and steps) under every feature network, and whether quality holds."""
    ref_fids, d = calib.fids("reference"), calib.difference(name, "reference")
    at = None if config is None else calib.full_depth[(solver, steps)]
    full = None if at is None else calib.difference(name, at)
    by_net = {net: {"fid": calib.paired[net].point[name], "dfid": d[net],
                    "holds": holds_quality(d[net], ref_fids[net], tolerance)} for net in calib.paired}
    if full is not None:
        for net in by_net:
            by_net[net]["dfid_full_depth"] = full[net]
    return Candidate(name, family, solver, scheduler, steps, config, calib.fraction(name), calib.fid(name),
                     d[calib.primary], holds_under_every_net(d, ref_fids, tolerance),
                     None if full is None else full[calib.primary],
                     None if full is None else holds_under_every_net(full, calib.fids(at), tolerance), by_net)


def fid_confirmation(holdout: Phase, candidate: Candidate, tolerance: float, budget: float | None) -> Confirmation:
    """A candidate re-measured on the held-out seeds: a tolerance goal confirms it when quality holds by the
    stricter `confirms_quality` under every network, a budget goal when its block fraction stays within it."""
    name, refs = candidate.name, holdout.fids("reference")
    d, fraction = holdout.difference(name, "reference"), holdout.fraction(name)
    holds = confirms_quality(d, refs, tolerance)
    within = None if budget is None else fraction <= budget + 1e-9
    by_net = {net: {"fid": holdout.paired[net].point[name], "dfid": d[net],
                    "holds": confirms_quality({net: d[net]}, {net: refs[net]}, tolerance)} for net in holdout.paired}
    return Confirmation(name, fraction, holdout.fid(name), d[holdout.primary], holds, within,
                        holds if budget is None else bool(within), by_net, holdout.fidelity.get(name))


def fid_versus_frontier(chosen: Candidate, candidates: list[Candidate], holdout: Phase,
                        sampler: Sampler) -> dict[str, Any]:
    """The chosen point against the best (lowest calibration FID) full-depth point that costs no more, on the
    held-out seeds: does the exit config beat fewer steps there (under every feature network)?"""
    pool = [c for c in candidates if c.exit_config is None and c.name != chosen.name
            and c.block_fraction <= chosen.block_fraction + 1e-9]
    if not pool:
        return {"frontier": None, "why": "no other full-depth candidate costs as little as the chosen point"}
    frontier = min(pool, key=lambda c: c.fid)
    sampler(holdout, frontier.name, frontier.solver, frontier.steps, None)
    d = holdout.difference(chosen.name, frontier.name)
    return {"frontier": frontier.name, "frontier_block_fraction": frontier.block_fraction,
            "holdout_frontier_fid": holdout.fid(frontier.name), "dfid_chosen_minus_frontier": d[holdout.primary],
            "by_net": {net: {"dfid_chosen_minus_frontier": x} for net, x in d.items()},
            "chosen_beats_frontier": all(x["high"] < 0 for x in d.values())}


def fid_baseline(holdout: Phase, chosen: str, row: str, point: Any) -> dict[str, Any]:
    """A baseline operating point (sampled as `row`) beside the chosen one on the held-out seeds."""
    d, vs = holdout.difference(row, "reference"), holdout.difference(chosen, row)
    return {"operating_point": point.to_dict(), "block_fraction": holdout.fraction(row), "dfid": d[holdout.primary],
            "dfid_chosen_minus_baseline": vs[holdout.primary],
            "by_net": {net: {"dfid": d[net], "dfid_chosen_minus_baseline": vs[net]} for net in holdout.paired},
            "fidelity": holdout.fidelity.get(row)}


def fid_reference(calib: Phase, holdout: Phase) -> dict[str, Any]:
    """The reference's FIDs on both image sets (held-out: None when nothing went to the held-out seeds)."""
    sampled = "reference" in holdout.block_evals
    return {"fid": calib.fid("reference"), "holdout_fid": holdout.fid("reference") if sampled else None,
            "fids": calib.fids("reference"), "holdout_fids": holdout.fids("reference") if sampled else None}
