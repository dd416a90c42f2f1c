"""The two image sets of an operating-point search and how a candidate is sampled and scored on them.

Every image goes through the benchmark's one engine (`eval.runner`): `MethodSampler` samples a (solver,
steps, exit config) on the phase's seeds, and a `Runner` keeps the images as uint8 shards in a `ShardCache` (a
rerun or an interrupted search reads back what exists; under `accelerate launch` each process samples its own
shards and every process computes the same scores, so all of them take the same decisions), encodes them under
every feature network and scores them on shared bootstrap resamples of the image indices.

A `Phase` is one set of seeds (calibration or held-out) over its `Runner`: per network its `PairedFID`, so each
network gives its own paired interval and the decision can ask for all of them (`frontier.holds_under_every_net`),
and per run its block fraction and its per-image fidelity (PSNR/SSIM against the reference image from the same
noise). Runs that do the same thing (the reference's solver and steps among the candidates, say) share their
images: the shard cache keys them by content, not by name.

`fid_candidate`, `fid_confirmation`, `fid_versus_frontier` and `fid_baseline` score the FID goals (tolerance,
budget) on them; `search_psnr` holds their PSNR-goal counterparts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch

from ..config import EarlyExitConfig
from ..eval.frontier import confirms_quality, holds_quality, holds_under_every_net
from ..eval.method import Method
from ..eval.paired import FrechetReference, PairedFID
from ..eval.runner import FeatureSpec, MethodSampler, Runner
from ..eval.sample_cache import modules_fingerprint
from ..eval.pipeline_sampling import SampleRun
from .operating_point_result import Candidate, Confirmation
from .search_psnr import PsnrPhase

#: A search's feature networks: name -> (images (N, C, H, W) in [0, 1] -> (N, F) features, real statistics).
FeatureNets = dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], FrechetReference]]


class Phase:
    """One set of seeds over its `Runner`: the runs' FIDs per feature network, block fractions and fidelity.

    Args:
        name: "calibration" or "held-out".
        seed: the noise seed of the set (image i: seed * stride + i).
        runner: the engine's `Runner` of this set (its `num_images`, feature networks and confidence).
        names: the runner's feature keys -> the search's network names (what results are keyed by).
    """

    def __init__(self, name: str, seed: int, runner: Runner, names: dict[str, str]) -> None:
        self.name, self.seed, self.runner = name, seed, runner
        self.num_images = runner.num_images
        self.paired: dict[str, PairedFID] = {names[key]: paired for key, paired in runner.scores.sets.items()}
        self.primary = names[runner.primary]
        self.full_depth: dict[tuple[str, int], str] = {}  # (solver, steps) -> its latest full-depth run's name

    @property
    def fidelity(self) -> dict[str, dict[str, Any]]:
        """name -> mean PSNR/SSIM against the reference image from the same noise."""
        return {name: row["fidelity"] for name, row in self.runner.rows.items()
                if name != "reference" and "fidelity" in row}

    def sampled(self, name: str) -> bool:
        return name in self.runner.rows

    def fraction(self, name: str) -> float:
        return self.runner.rows[name]["block_fraction"]

    def fid(self, name: str) -> float:
        """FID of `name` under the primary network."""
        return self.paired[self.primary].point[name]

    def fids(self, name: str) -> dict[str, float]:
        return {net: p.point[name] for net, p in self.paired.items()}

    def difference(self, name: str, other: str) -> dict[str, dict[str, float]]:
        """Per network, FID(name) - FID(other) with its paired interval."""
        return {net: p.difference(name, other) for net, p in self.paired.items()}

    def scored(self, name: str, solver: str, steps: int, config: EarlyExitConfig | None) -> None:
        """After `name` is measured: a full-depth run is what the exit configs at its (solver, steps) sampled
        next are compared with."""
        if config is None:
            self.full_depth[(solver, steps)] = name


class Sampler:
    """Measures a (solver, steps, exit config) on a phase's seeds through the phase's `Runner`, once per phase and
    name; `on_sample(phase, name, run)` is told after each (with the images read back from the shards)."""

    def __init__(self, bar: Any, on_sample: Callable[[str, str, SampleRun], None] | None) -> None:
        self.bar, self.on_sample = bar, on_sample

    def __call__(self, phase: Any, name: str, solver: str, steps: int, config: EarlyExitConfig | None) -> None:
        if phase.sampled(name):
            return
        self.bar.set_postfix_str(f"{phase.name}: {name}")
        phase.runner.measure(Method(name, "search", solver, steps, config, seed=phase.seed))
        phase.scored(name, solver, steps, config)
        if self.on_sample is not None:
            self.on_sample(phase.name, name, phase.runner.sample_run(name))
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
    sampled = holdout.sampled("reference")
    return {"fid": calib.fid("reference"), "holdout_fid": holdout.fid("reference") if sampled else None,
            "fids": calib.fids("reference"), "holdout_fids": holdout.fids("reference") if sampled else None}


def open_phases(target: Any, schedulers: dict[str, Any], guidance: float | None, batch_size: int,
                nets: dict[str, Callable[[torch.Tensor], torch.Tensor]], reals: dict[str, FrechetReference],
                cache: Any, sets: dict[str, tuple[int, int, float]], bootstrap: int, persistent: bool,
                progress: bool = False) -> dict[str, Any]:
    """The search's phases over one engine: a `MethodSampler` of the target, and per set (name -> (seed, images,
    confidence)) a `Runner` on `cache` (`ShardCache`) scored under `nets` with their `reals` (a `Phase`), or with no
    networks, a PSNR goal (a `search_psnr.PsnrPhase`; the held-out one keeps each try's fidelity). `persistent`: the
    cache folder outlives the search (a rerun resumes from it), so the run keys name the models' weights too.
    `progress`: a bar of images per run (under the search's bar of runs), on the main process."""
    sampler = MethodSampler(target.pipe, target.conditioning, guidance, schedulers, batch_size, heads=target.heads,
                            bridges=target.bridges)
    # What every image depends on beyond its method: the models (weights included: only for a folder that outlives
    # the search, hashing them reads every weight once), the conditioning and the guidance.
    what = {"pipeline": type(target.pipe).__name__, "conditioning": target.conditioning.to_dict(), "guidance": guidance}
    if persistent:
        components = [m for m in target.pipe.components.values() if isinstance(m, torch.nn.Module)]
        what["weights"] = modules_fingerprint(*components, target.heads, target.bridges)
    # A network's cached features are keyed by its real statistics (which a network and its data fix): a cache
    # folder reused with another network never reads back the features of this one.
    keys = {name: f"net{i}-" + hashlib.sha256(real.mean.double().cpu().numpy().tobytes()).hexdigest()[:16]
            for i, (name, real) in enumerate(reals.items())}
    specs = [FeatureSpec(name, keys[name], net, "as given", unit_input=True) for name, net in nets.items()]
    phases = {}
    for name, (seed, count, confidence) in sets.items():
        # Only the held-out tries report fidelity to the reference image; the calibration phase would compute it
        # for every candidate for nothing.
        runner = Runner(sampler, cache, specs, {keys[n]: real for n, real in reals.items()}, count, what, bootstrap,
                        confidence, progress, fidelity=name == "held-out")
        phases[name] = (Phase(name, seed, runner, {k: n for n, k in keys.items()}) if nets else
                        PsnrPhase(name, seed, runner, bootstrap, confidence, report_fidelity=name == "held-out"))
    return phases

