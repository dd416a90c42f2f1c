"""The PSNR goal of the operating-point search (`min_psnr=`): fidelity to the reference, no real images.

Users without real images cannot compute FID, but they can ask that a cheaper point keep each image close to the
one the reference (full depth, the reference solver and steps) makes from the same noise. Image i of every run
starts from the same noise, so the per-image PSNRs of a candidate and the reference pair up like the FID
features do, and one set of bootstrap resamples of the image indices (drawn once per phase, as `PairedFID` does)
gives every candidate its interval of the mean PSNR, and any two candidates a paired interval of their difference.

- Screening (calibration seeds): a candidate holds when its mean PSNR >= min_psnr.
- Confirmation (held-out seeds): the cheapest holding candidate is sampled again, and holds when the low end of
  its interval (at the raised confidence 1 - (1 - confidence) / max_confirmations, as the FID confirmation uses:
  the tries share the held-out images) is >= min_psnr. The pick is the best-looking of many screened candidates,
  so its calibration mean is biased upwards; the bound, not the mean, must clear the bar.

`PsnrPhase` mirrors `search_phases.Phase`: its images go through the same engine (`search_phases.Sampler`, a
`eval.runner.Runner` with no feature networks), so a repeat of the same (solver, steps, exit config) reads
the first run's shards back.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import EarlyExitConfig
from .operating_point_result import Candidate, Confirmation
from .schedule import psnr_db

SCREENING_RULE = "mean per-image PSNR against the reference image from the same noise >= min_psnr dB"
CONFIRMATION_RULE = ("low end of the bootstrap interval of the mean per-image PSNR over the held-out images >= "
                     "min_psnr dB")


class PsnrPhase:
    """One set of seeds over its `Runner` (no feature networks): per run its (N,) PSNRs against the reference's
    images and against full depth at its own solver and steps (`vs_full`), both read back from the shards.

    Args:
        name, seed, runner: as `search_phases.Phase`.
        bootstrap, confidence: the resamples of the image indices (drawn once per phase, shared by every run) and
            the two-sided coverage of this phase's intervals.
        report_fidelity: keep each run's mean PSNR/SSIM (`fidelity`, the held-out tries report it).
    """

    def __init__(self, name: str, seed: int, runner: Any, bootstrap: int, confidence: float,
                 report_fidelity: bool = False) -> None:
        self.name, self.seed, self.runner, self.confidence = name, seed, runner, confidence
        self.num_images = runner.num_images
        generator = torch.Generator().manual_seed(0)
        self.indices = torch.randint(0, self.num_images, (bootstrap, self.num_images), generator=generator)  # (R, N)
        self.psnr: dict[str, torch.Tensor] = {}  # name -> (N,) float64 dB against the reference
        self.vs_full: dict[str, torch.Tensor] = {}  # name -> (N,) dB against full depth at its solver and steps
        self.fidelity: dict[str, dict[str, Any]] = {}  # name -> mean PSNR/SSIM (report_fidelity only)
        self.report_fidelity = report_fidelity
        self.full_depth: dict[tuple[str, int], str] = {}  # (solver, steps) -> its latest full-depth run's name

    def sampled(self, name: str) -> bool:
        return name in self.psnr

    def fraction(self, name: str) -> float:
        return self.runner.rows[name]["block_fraction"]

    def per_image(self, name: str, other: str) -> torch.Tensor:
        """(N,) PSNR of `name`'s images against `other`'s from the same noise, shard by shard."""
        ranges = self.runner.cache.ranges(self.num_images)
        return torch.cat([psnr_db(self.runner.images(name, s, e), self.runner.images(other, s, e)) for s, e in ranges])

    def scored(self, name: str, solver: str, steps: int, config: EarlyExitConfig | None) -> None:
        """After `name` is measured: its PSNRs (the reference is the first run measured)."""
        self.psnr[name] = self.per_image(name, "reference") if self.psnr else torch.full(
            (self.num_images,), 100.0, dtype=torch.float64)  # the reference against itself: psnr_db's cap
        if config is None:
            self.full_depth[(solver, steps)] = name
        elif (solver, steps) in self.full_depth:
            self.vs_full[name] = self.per_image(name, self.full_depth[(solver, steps)])
        if self.report_fidelity and name != "reference":
            self.fidelity[name] = self.runner.rows[name]["fidelity"]

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


def psnr_candidate(calib: PsnrPhase, name: str, family: str, solver: str, scheduler: str, steps: int,
                   config: EarlyExitConfig | None, min_psnr: float) -> Candidate:
    """A candidate scored on the calibration seeds: mean PSNR against the reference (and against full depth at
    its own solver and steps, for an exit config), each with its interval."""
    psnr = calib.summary(name)
    full = calib.interval(calib.vs_full[name]) if config is not None and name in calib.vs_full else None
    return Candidate(name, family, solver, scheduler, steps, config, calib.fraction(name), None, None,
                     psnr["mean"] >= min_psnr, None, None if full is None else full["mean"] >= min_psnr,
                     psnr=psnr, psnr_full_depth=full)


def psnr_confirmation(holdout: PsnrPhase, candidate: Candidate, min_psnr: float) -> Confirmation:
    """A candidate re-measured on the held-out seeds: confirmed when its interval's low end is >= min_psnr."""
    psnr = holdout.summary(candidate.name)
    holds = psnr["low"] >= min_psnr
    return Confirmation(candidate.name, holdout.fraction(candidate.name), None, None, holds, None, holds,
                        fidelity=holdout.fidelity.get(candidate.name), psnr=psnr)


def psnr_versus_frontier(chosen: Candidate, candidates: list[Candidate], holdout: PsnrPhase,
                         sampler: Any) -> dict[str, Any]:
    """The chosen point against the full-depth candidate of the highest calibration PSNR that costs no more, on
    the held-out seeds: does the exit config keep more of the reference than fewer steps do?"""
    pool = [c for c in candidates if c.exit_config is None and c.name != chosen.name
            and c.block_fraction <= chosen.block_fraction + 1e-9]
    if not pool:
        return {"frontier": None, "why": "no other full-depth candidate costs as little as the chosen point"}
    frontier = max(pool, key=lambda c: c.psnr["mean"])
    sampler(holdout, frontier.name, frontier.solver, frontier.steps, None)
    d = holdout.difference(chosen.name, frontier.name)
    return {"frontier": frontier.name, "frontier_block_fraction": frontier.block_fraction,
            "holdout_frontier_psnr": holdout.summary(frontier.name), "dpsnr_chosen_minus_frontier": d,
            "chosen_beats_frontier": d["low"] > 0}


def psnr_baseline(holdout: PsnrPhase, chosen: str, row: str, point: Any) -> dict[str, Any]:
    """A baseline operating point (sampled as `row`) beside the chosen one on the held-out seeds."""
    return {"operating_point": point.to_dict(), "block_fraction": holdout.fraction(row),
            "psnr": holdout.summary(row), "dpsnr_chosen_minus_baseline": holdout.difference(chosen, row),
            "fidelity": holdout.fidelity.get(row)}
