"""The two image sets of an operating-point search and how a candidate is scored on them, for each goal.

Every image goes through the benchmark's one engine (`eval.runner`): `MethodSampler` samples a (solver, steps,
exit config) on the phase's seeds, and a `Runner` keeps the images as uint8 shards in a `ShardCache` (a rerun
reads back what exists; under `accelerate launch` every process computes the same scores, so all of them take the
same decisions). Runs that do the same thing share their images: the cache keys them by content, not by name.

A phase is one set of seeds (calibration or held-out) over its `Runner`, and scores a run by the search's goal:

- `FidPhase` (tolerance, budget): per feature network its `PairedFID`, so each network gives its own paired
  interval and the decision can ask for all of them (`frontier.holds_under_every_net`);
- `PsnrPhase` (`min_psnr`, for users without real images): per run its (N,) PSNRs against the reference image
  from the same noise. Image i of every run starts from the same noise, so the PSNRs pair up as FID features do,
  and one set of bootstrap resamples of the image indices per phase gives every run its interval. Screening holds
  a candidate when its mean PSNR >= min_psnr; the held-out confirmation when the low end of its interval (at the
  raised confidence the FID confirmation uses) does: the pick is the best-looking of many, so its calibration mean
  is biased upwards and the bound, not the mean, must clear the bar.
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
from ..eval.pipeline_sampling import SampleRun
from ..eval.runner import FeatureSpec, MethodSampler, Runner
from ..eval.sample_cache import modules_fingerprint
from .common import psnr_db
from .operating_point_result import Candidate, Confirmation

SCREENING_RULE = "mean per-image PSNR against the reference image from the same noise >= min_psnr dB"
CONFIRMATION_RULE = ("low end of the bootstrap interval of the mean per-image PSNR over the held-out images >= "
                     "min_psnr dB")


class Phase:
    """One set of seeds over its `Runner`: what both goals read of a run (block fraction, fidelity), and the
    goal-specific scores (`candidate`, `confirmation`, `versus_frontier`, `baseline`) of its subclasses.

    Args:
        name: "calibration" or "held-out".
        seed: the noise seed of the set (image i: seed * stride + i).
        runner: the engine's `Runner` of this set (its `num_images`, feature networks and confidence).
    """

    def __init__(self, name: str, seed: int, runner: Runner) -> None:
        self.name, self.seed, self.runner = name, seed, runner
        self.num_images = runner.num_images
        self.full_depth: dict[tuple[str, int], str] = {}  # (solver, steps) -> its latest full-depth run's name

    @property
    def fidelity(self) -> dict[str, dict[str, Any]]:
        """name -> mean PSNR/SSIM against the reference image from the same noise (held-out runs only)."""
        return {name: row["fidelity"] for name, row in self.runner.rows.items()
                if name != "reference" and "fidelity" in row}

    def sampled(self, name: str) -> bool:
        return name in self.runner.rows

    def fraction(self, name: str) -> float:
        return self.runner.rows[name]["block_fraction"]

    def scored(self, name: str, solver: str, steps: int, config: EarlyExitConfig | None) -> None:
        """After `name` is measured: a full-depth run is what the exit configs at its (solver, steps) sampled
        next are compared with."""
        if config is None:
            self.full_depth[(solver, steps)] = name

    def versus_frontier(self, chosen: Candidate, candidates: list[Candidate], sampler: Sampler) -> dict[str, Any]:
        """The chosen point against the best-ranked (calibration) full-depth candidate that costs no more, on these
        (held-out) seeds: does the exit config beat fewer steps?"""
        pool = [c for c in candidates if c.exit_config is None and c.name != chosen.name
                and c.block_fraction <= chosen.block_fraction + 1e-9]
        if not pool:
            return {"frontier": None, "why": "no other full-depth candidate costs as little as the chosen point"}
        frontier = min(pool, key=lambda c: c.rank)
        sampler(self, frontier.name, frontier.solver, frontier.steps, None)
        return {"frontier": frontier.name, "frontier_block_fraction": frontier.block_fraction,
                **self._versus(chosen.name, frontier.name)}

    def _versus(self, chosen: str, frontier: str) -> dict[str, Any]:
        """The chosen run against the frontier run on these seeds, in the goal's metric (each subclass's)."""
        raise NotImplementedError


class FidPhase(Phase):
    """A phase scored by paired FID intervals under every feature network (a tolerance or budget goal).

    Args:
        names: the runner's feature keys -> the search's network names (what results are keyed by).
        tolerance: the relative FID tolerance of "holds quality"; budget: the budget goal's (None: tolerance goal).
    """

    def __init__(self, name: str, seed: int, runner: Runner, names: dict[str, str], tolerance: float,
                 budget: float | None) -> None:
        super().__init__(name, seed, runner)
        self.paired: dict[str, PairedFID] = {names[key]: paired for key, paired in runner.scores.sets.items()}
        self.primary = names[runner.primary]
        self.tolerance, self.budget = tolerance, budget

    def fid(self, name: str) -> float:
        """FID of `name` under the primary network."""
        return self.paired[self.primary].point[name]

    def fids(self, name: str) -> dict[str, float]:
        return {net: p.point[name] for net, p in self.paired.items()}

    def difference(self, name: str, other: str) -> dict[str, dict[str, float]]:
        """Per network, FID(name) - FID(other) with its paired interval."""
        return {net: p.difference(name, other) for net, p in self.paired.items()}

    def candidate(self, name: str, family: str, solver: str, scheduler: str, steps: int,
                  config: EarlyExitConfig | None) -> Candidate:
        """`name` scored on the calibration seeds: its paired dFID against the reference (and, for an exit config,
        against full depth at its own solver and steps) under every network, and whether quality holds."""
        tolerance, ref_fids, d = self.tolerance, self.fids("reference"), self.difference(name, "reference")
        at = None if config is None else self.full_depth[(solver, steps)]
        full = None if at is None else self.difference(name, at)
        by_net = {net: {"fid": self.paired[net].point[name], "dfid": d[net],
                        "holds": holds_quality(d[net], ref_fids[net], tolerance)} for net in self.paired}
        if full is not None:
            for net in by_net:
                by_net[net]["dfid_full_depth"] = full[net]
        return Candidate(name, family, solver, scheduler, steps, config, self.fraction(name), self.fid(name),
                         d[self.primary], holds_under_every_net(d, ref_fids, tolerance),
                         None if full is None else full[self.primary],
                         None if full is None else holds_under_every_net(full, self.fids(at), tolerance), by_net)

    def confirmation(self, candidate: Candidate) -> Confirmation:
        """A candidate re-measured on the held-out seeds: a tolerance goal confirms it when quality holds by the
        stricter `confirms_quality` under every network, a budget goal when its block fraction stays within it."""
        name, refs = candidate.name, self.fids("reference")
        d, fraction = self.difference(name, "reference"), self.fraction(name)
        holds = confirms_quality(d, refs, self.tolerance)
        within = None if self.budget is None else fraction <= self.budget + 1e-9
        by_net = {net: {"fid": self.paired[net].point[name], "dfid": d[net],
                        "holds": confirms_quality({net: d[net]}, {net: refs[net]}, self.tolerance)}
                  for net in self.paired}
        return Confirmation(name, fraction, self.fid(name), d[self.primary], holds, within,
                            holds if self.budget is None else bool(within), by_net, self.fidelity.get(name))

    def rules(self) -> tuple[str, str]:
        """The screening and the held-out confirmation bars, in words (the result's `decision`)."""
        return ("holds_quality under every feature network",
                "interval high <= tolerance x reference FID under every feature network" if self.budget is None
                else "held-out block fraction within the budget")

    def reference_scores(self, calib: FidPhase) -> dict[str, Any]:
        """The reference's FIDs on the calibration images and on these (None when nothing was sampled here)."""
        sampled = self.sampled("reference")
        return {"fid": calib.fid("reference"), "holdout_fid": self.fid("reference") if sampled else None,
                "fids": calib.fids("reference"), "holdout_fids": self.fids("reference") if sampled else None}

    def _versus(self, chosen: str, frontier: str) -> dict[str, Any]:
        d = self.difference(chosen, frontier)
        return {"holdout_frontier_fid": self.fid(frontier), "dfid_chosen_minus_frontier": d[self.primary],
                "by_net": {net: {"dfid_chosen_minus_frontier": x} for net, x in d.items()},
                "chosen_beats_frontier": all(x["high"] < 0 for x in d.values())}

    def baseline(self, chosen: str, row: str, point: Any) -> dict[str, Any]:
        """A baseline operating point (sampled as `row`) beside the chosen one on the held-out seeds."""
        d, vs = self.difference(row, "reference"), self.difference(chosen, row)
        return {"operating_point": point.to_dict(), "block_fraction": self.fraction(row), "dfid": d[self.primary],
                "dfid_chosen_minus_baseline": vs[self.primary],
                "by_net": {net: {"dfid": d[net], "dfid_chosen_minus_baseline": vs[net]} for net in self.paired},
                "fidelity": self.fidelity.get(row)}


class PsnrPhase(Phase):
    """A phase scored by per-image PSNR (a `min_psnr` goal): per run its (N,) PSNRs against the reference's images
    and against full depth at its own solver and steps (`vs_full`), both read back from the shards.

    Args:
        bootstrap, confidence: the resamples of the image indices (drawn once per phase, shared by every run) and
            the two-sided coverage of this phase's intervals.
        min_psnr: the goal, in dB.
    """

    def __init__(self, name: str, seed: int, runner: Runner, bootstrap: int, confidence: float,
                 min_psnr: float) -> None:
        super().__init__(name, seed, runner)
        self.confidence, self.min_psnr = confidence, min_psnr
        generator = torch.Generator().manual_seed(0)
        self.indices = torch.randint(0, self.num_images, (bootstrap, self.num_images), generator=generator)  # (R, N)
        self.psnr: dict[str, torch.Tensor] = {}  # name -> (N,) float64 dB against the reference
        self.vs_full: dict[str, torch.Tensor] = {}  # name -> (N,) dB against full depth at its solver and steps

    def per_image(self, name: str, other: str) -> torch.Tensor:
        """(N,) PSNR of `name`'s images against `other`'s from the same noise, shard by shard."""
        ranges = self.runner.cache.ranges(self.num_images)
        return torch.cat([psnr_db(self.runner.images(name, s, e), self.runner.images(other, s, e)) for s, e in ranges])

    def scored(self, name: str, solver: str, steps: int, config: EarlyExitConfig | None) -> None:
        """After `name` is measured: its PSNRs (the reference is the first run measured)."""
        self.psnr[name] = self.per_image(name, "reference") if self.psnr else torch.full(
            (self.num_images,), 100.0, dtype=torch.float64)  # the reference against itself: psnr_db's cap
        if config is not None and (solver, steps) in self.full_depth:
            self.vs_full[name] = self.per_image(name, self.full_depth[(solver, steps)])
        super().scored(name, solver, steps, config)

    def interval(self, values: torch.Tensor) -> dict[str, float]:
        """Mean of (N,) per-image values and its percentile bootstrap interval (this phase's confidence)."""
        means = values[self.indices].mean(dim=1)
        tail = (1 - self.confidence) / 2
        low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype))
        return {"mean": float(values.mean()), "low": float(low), "high": float(high)}

    def summary(self, name: str) -> dict[str, float]:
        """Mean PSNR of `name` against the reference, with its interval."""
        return self.interval(self.psnr[name])

    def difference(self, name: str, other: str) -> dict[str, float]:
        """Mean PSNR(name) - PSNR(other), paired over the images, with its interval (`delta`, `low`, `high`)."""
        d = self.interval(self.psnr[name] - self.psnr[other])
        return {"delta": d["mean"], "low": d["low"], "high": d["high"]}

    def candidate(self, name: str, family: str, solver: str, scheduler: str, steps: int,
                  config: EarlyExitConfig | None) -> Candidate:
        """`name` scored on the calibration seeds: mean PSNR against the reference (and against full depth at its
        own solver and steps, for an exit config), each with its interval."""
        psnr = self.summary(name)
        full = self.interval(self.vs_full[name]) if config is not None and name in self.vs_full else None
        return Candidate(name, family, solver, scheduler, steps, config, self.fraction(name), None, None,
                         psnr["mean"] >= self.min_psnr, None, None if full is None else full["mean"] >= self.min_psnr,
                         psnr=psnr, psnr_full_depth=full)

    def confirmation(self, candidate: Candidate) -> Confirmation:
        """A candidate re-measured on the held-out seeds: confirmed when its interval's low end is >= min_psnr."""
        psnr = self.summary(candidate.name)
        holds = psnr["low"] >= self.min_psnr
        return Confirmation(candidate.name, self.fraction(candidate.name), None, None, holds, None, holds,
                            fidelity=self.fidelity.get(candidate.name), psnr=psnr)

    def rules(self) -> tuple[str, str]:
        """The screening and the held-out confirmation bars, in words (the result's `decision`)."""
        return SCREENING_RULE, CONFIRMATION_RULE

    def reference_scores(self, calib: PsnrPhase) -> dict[str, Any]:
        """No FIDs: PSNR of the reference against itself says nothing."""
        return {"fid": None, "holdout_fid": None}

    def _versus(self, chosen: str, frontier: str) -> dict[str, Any]:
        d = self.difference(chosen, frontier)
        return {"holdout_frontier_psnr": self.summary(frontier), "dpsnr_chosen_minus_frontier": d,
                "chosen_beats_frontier": d["low"] > 0}

    def baseline(self, chosen: str, row: str, point: Any) -> dict[str, Any]:
        """A baseline operating point (sampled as `row`) beside the chosen one on the held-out seeds."""
        return {"operating_point": point.to_dict(), "block_fraction": self.fraction(row),
                "psnr": self.summary(row), "dpsnr_chosen_minus_baseline": self.difference(chosen, row),
                "fidelity": self.fidelity.get(row)}


class Sampler:
    """Measures a (solver, steps, exit config) on a phase's seeds through the phase's `Runner`, once per phase and
    name; `on_sample(phase, name, run)` is told after each (with the images read back from the shards)."""

    def __init__(self, bar: Any, on_sample: Callable[[str, str, SampleRun], None] | None) -> None:
        self.bar, self.on_sample = bar, on_sample

    def __call__(self, phase: Phase, name: str, solver: str, steps: int, config: EarlyExitConfig | None) -> None:
        if phase.sampled(name):
            return
        self.bar.set_postfix_str(f"{phase.name}: {name}")
        phase.runner.measure(Method(name, "search", solver, steps, config, seed=phase.seed))
        phase.scored(name, solver, steps, config)
        if self.on_sample is not None:
            self.on_sample(phase.name, name, phase.runner.sample_run(name))
        self.bar.update(1)


def open_phases(target: Any, schedulers: dict[str, Any], guidance: float | None, batch_size: int,
                nets: dict[str, Callable[[torch.Tensor], torch.Tensor]], reals: dict[str, FrechetReference],
                cache: Any, sets: dict[str, tuple[int, int, float]], bootstrap: int, persistent: bool,
                goal: dict[str, float | None], progress: bool = False) -> dict[str, Phase]:
    """The search's phases over one engine: a `MethodSampler` of the target, and per set (name -> (seed, images,
    confidence)) a `Runner` on `cache` (`ShardCache`) scored under `nets` with their `reals` (a `FidPhase` for the
    goal's tolerance and budget), or with no networks a `PsnrPhase` for `goal["min_psnr"]`. `persistent`: the
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
    phases: dict[str, Phase] = {}
    for name, (seed, count, confidence) in sets.items():
        # Only the held-out tries report fidelity to the reference image; the calibration phase would compute it
        # for every candidate for nothing.
        runner = Runner(sampler, cache, specs, {keys[n]: real for n, real in reals.items()}, count, what, bootstrap,
                        confidence, progress, fidelity=name == "held-out")
        phases[name] = (FidPhase(name, seed, runner, {k: n for n, k in keys.items()}, goal["tolerance"],
                                 goal["budget"]) if nets else
                        PsnrPhase(name, seed, runner, bootstrap, confidence, goal["min_psnr"]))
    return phases
