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

`PsnrPhase` / `PsnrSampler` mirror `search_phases.Phase` / `Sampler`: sampled once per phase and name, repeats of
the same (solver, steps, exit config) reuse the first run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from ..config import EarlyExitConfig
from ..eval.paired import fidelity
from ..eval.pipeline_sampling import sample_pipeline
from ..eval.sampling import SampleRun
from .operating_point_result import Candidate, Confirmation
from .schedule import psnr_db

SCREENING_RULE = "mean per-image PSNR against the reference image from the same noise >= min_psnr dB"
CONFIRMATION_RULE = ("low end of the bootstrap interval of the mean per-image PSNR over the held-out images >= "
                     "min_psnr dB")


class PsnrPhase:
    """One set of seeds: per run its (N,) PSNRs against the reference's images and its block evaluations.

    Only two image sets are held: the reference's, and the latest full-depth run (each exit config is also
    compared with full depth at its own solver and steps, `vs_full`, which is sampled just before it)."""

    def __init__(self, name: str, seed: int, num_images: int, bootstrap: int, confidence: float,
                 report_fidelity: bool = False) -> None:
        self.name, self.seed, self.num_images, self.confidence = name, seed, num_images, confidence
        generator = torch.Generator().manual_seed(0)
        self.indices = torch.randint(0, num_images, (bootstrap, num_images), generator=generator)  # (R, N)
        self.block_evals: dict[str, int] = {}
        self.psnr: dict[str, torch.Tensor] = {}  # name -> (N,) float64 dB against the reference
        self.vs_full: dict[str, torch.Tensor] = {}  # name -> (N,) dB against full depth at its solver and steps
        self.fidelity: dict[str, dict[str, Any]] = {}  # name -> mean PSNR/SSIM (report_fidelity only)
        self.report_fidelity = report_fidelity
        self.reference_images: torch.Tensor | None = None
        self.full: tuple[tuple[str, int], str, torch.Tensor] | None = None  # ((solver, steps), name, images)
        self.by_key: dict[str, str] = {}

    def fraction(self, name: str) -> float:
        return self.block_evals[name] / self.block_evals["reference"]

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

    def images_of(self, name: str) -> torch.Tensor | None:
        if name == "reference":
            return self.reference_images
        return self.full[2] if self.full is not None and self.full[1] == name else None


class PsnrSampler:
    """Samples a (solver, steps, exit config) on a `PsnrPhase`'s seeds; the reference first."""

    def __init__(self, target: Any, schedulers: dict[str, Any], guidance: float | None, batch_size: int, bar: Any,
                 on_sample: Callable[[str, str, SampleRun], None] | None) -> None:
        self.target, self.schedulers, self.guidance, self.batch_size = target, schedulers, guidance, batch_size
        self.bar, self.on_sample = bar, on_sample

    def __call__(self, phase: PsnrPhase, name: str, solver: str, steps: int, config: EarlyExitConfig | None) -> None:
        if name in phase.block_evals:
            return
        key = json.dumps([solver, steps, None if config is None else config.to_dict()])
        full = phase.full if phase.full is not None and phase.full[0] == (solver, steps) else None
        first = phase.by_key.get(key)
        images = None if first is None else phase.images_of(first)
        # A repeat reuses the first run, unless it needs images no longer held (a new full depth, or vs_full).
        needs_images = config is None or (full is not None and first not in phase.vs_full)
        if first is not None and (images is not None or not needs_images):
            phase.block_evals[name], phase.psnr[name] = phase.block_evals[first], phase.psnr[first]
            if first in phase.fidelity:
                phase.fidelity[name] = phase.fidelity[first]
            if first in phase.vs_full and full is not None:
                phase.vs_full[name] = phase.vs_full[first]
        else:
            images = self._sample(phase, name, solver, steps, config)
            phase.by_key[key] = name
        if config is None:
            phase.full = ((solver, steps), name, images)  # the previous full depth's images are let go
        elif full is not None and name not in phase.vs_full:
            phase.vs_full[name] = psnr_db(images, full[2])

    def _sample(self, phase: PsnrPhase, name: str, solver: str, steps: int,
                config: EarlyExitConfig | None) -> torch.Tensor:
        self.bar.set_postfix_str(f"{phase.name}: {name}")
        self.target.pipe.scheduler = self.schedulers[solver]
        run = sample_pipeline(self.target.pipe, range(phase.num_images), self.target.conditioning,
                              exit_config=config, heads=self.target.heads, bridges=self.target.bridges,
                              num_inference_steps=steps, guidance_scale=self.guidance, seed=phase.seed,
                              batch_size=self.batch_size)
        images = run.images.detach().cpu()
        if name == "reference":
            phase.reference_images = images
        phase.block_evals[name] = run.block_evals
        phase.psnr[name] = psnr_db(images, phase.reference_images)
        if phase.report_fidelity and name != "reference":
            phase.fidelity[name] = fidelity(images, phase.reference_images)
        if self.on_sample is not None:
            self.on_sample(phase.name, name, run)
        self.bar.update(1)
        return images


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
                         sampler: PsnrSampler) -> dict[str, Any]:
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
