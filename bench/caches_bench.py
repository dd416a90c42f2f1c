"""`python -m bench bench-caches`: per-row caches (reuse and forecast) against diffusers' caches and cache-dit.

Setting: a pre-trained model without heads (default `digits-deep-pretrained`, 28 blocks), one solver at the
conventional steps, no guidance, image i from the noise seeded by (0, i) for every method. Rows:

- `ddim25`: the stock model (the reference), and fewer steps at full depth (the frontier);
- `tail{τ}_o{p}`: `CachedTailResidual(threshold=τ, forecast_order=p)`, per-row decisions and per-row state; p = 0
  reuses a row's last tail residual, p = 1 extrapolates it in the timestep. `every{k}_o{p}`: the same forecast on a
  fixed cadence, a row running fully every k-th call (TaylorSeer's interval, kept per row). A row's result does
  not depend on its batch, so these are sampled once (batch 64) and checked at batch 1 (`batch_independence`);
- diffusers' FirstBlockCache, TaylorSeerCache, SeaCache and MagCache (calibrated) with their thresholds swept.
  They decide once per batch, so their images depend on the batch: each is sampled at every batch size it is
  timed at (`fbc0.1|b64`, `|b8`, `|b1`), and once more at batch 64 with every batch holding a single class
  (`|b64sorted`), which shows how much the batch's composition moves a batch-global decision;
- cache-dit's DBCache (`cachedit_f{Fn}_r{threshold}[_ts{TaylorSeer order}]_w{warm-up}[_m{step mask}]`, see
  `cache_dit_rows.py`),
  attached through cache-dit's `BlockAdapter` as a user attaches it; batch-global like diffusers' caches and sampled
  the same way. Each row records the steps cache-dit reports cached in each pipeline call (`cached_steps`) and the
  report the cache-dit version that ran.

The presets `cachedit10` and `cachedit15` sweep cache-dit against the rows that led the earlier runs; `lead20` asks
how few computed steps hold quality at 20 steps; `place12|15|20` and `glyphs-place15` run `BlockForecast` on given
placements (`placements`, rows `bfp{calls}`: calibrate's picks) against TaylorSeerCache's cadences of as many
computes, and `confirm15|confirm12|confirm15b1` score the fastest of those again on images no earlier run scored
(`first_image`); the presets
`dpmpp10`, `dpmpp15`, `dpmpp20` and `ddim25` measure where users sample: every row at that solver and
step count against the stock model at 25 DDIM steps (`reference_solver`, `reference_steps`), the solver's own
fewer steps as the frontier (`frontier_comparisons`), `BlockForecast` rows (`bf{interval}_o{order}_w{first calls
computed}[_l: last call computed][_v{threshold}: with the per-row change criterion]`), `BlockForecast` rows placed
where TaylorSeerCache computes (`bfts{interval}_o{order}_w{warm-up}[_l]`: the per-block forecast at TaylorSeer's own
cadence, which its windows and interval alone cannot express) and on k timesteps spread evenly over the run, the first
and the last among them (`bfe{k}_o{order}`), and TaylorSeerCache at intervals 2-4, orders 1-2 and warm-up/last-step
windows.

Quality is FID under every shipped feature net of the setting's data (the first one's is a row's `fid`), with
paired bootstrap intervals (`eval/paired.py`, `caches_compare.py`): every row at batch >= 8 is scored on the same `num_images` images, the batch-1 rows on the first `batch1_images` (sampling a
pipeline image by image is slow). Wall-clock: one pipeline call on `batch` images per method per round,
interleaved rounds after a warm-up, hooks and caches put on outside the timed region (`runner.MethodSampler.timed`),
speedup = median over rounds of stock time / method time, at every batch size.

Matched speed: for every cache row at batch b, the per-row row that is at least as fast at batch b (a median
speedup no lower, or no more block evaluations per image and a speedup lower by less than the run's timing noise at
b: `caches_compare.as_fast`, `caches_compare.timing_noise`; the fewer-steps frontier is matched by the same rule) with the
lowest worst-net FID relative to the reference; the paired interval of FID(ours) - FID(cache) says whether ours wins
(whole interval below 0 under every net), loses (above 0 under any) or ties. This is done for the tail forecasts
(p >= 1), for all per-row rows and for the `BlockForecast` rows, by wall-clock and again by the cost at DiT-XL/2
width (`comparisons_xl`): every row's model calls, blocks entered, and attention and feed-forward computed are
counted while it samples (`row["work"]`, per image), and priced by a DiT-XL/2-width block's parts timed once per
run (`xl_cost.py`; `row["xl_cost"]`). The per-row state
(`exit_state_nbytes`) is measured after calls at batch 64 and compared with its formula, for this model and for
DiT-XL/2's hidden states (256 tokens x 1152).

Writes OUT/report.json, report.md and pareto.png (`caches_report.py`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ee_diffusion._command_line import int_at_least
from ee_diffusion._io import check_output_folder
from ee_diffusion._validation import check_int
from ee_diffusion.eval.features import feature_nets_of, load_feature_net
from ee_diffusion.eval.method import Method
from ee_diffusion.eval.paired import PairedFIDs
from ee_diffusion.eval.quality import real_images
from ee_diffusion.eval.solvers import SOLVERS, make_schedulers, solver_timesteps
from ee_diffusion.eval.timing import load_average, speedups
from ee_diffusion.pipelines.conditioning import Conditioning

from .cache_dit_rows import CacheDitSampler, cache_dit_methods
from .cache_dit_rows import version as cache_dit_version
from .caches_compare import frontier_comparisons, matched_comparisons, summarize, timing_noise
from .caches_report import write
from .caches_rows import forecast_methods, sorted_by_class, tail_methods
from .caches_state import state_memory
from .grid import cache_methods
from .models import SETTINGS, load_setting_pipeline, setting_dataset
from .presets import Preset
from .xl_cost import CostShape, WorkCounter, add_costs, measure_parts

@dataclass
class CachesPreset:
    """What `bench-caches` measures (see the module doc); `PRESETS` has `ci` and `full`."""

    setting: str = "digits-deep-pretrained"
    solver: str = "ddim"
    steps: int = 25
    # The stock model every speedup and dFID is against (the solver at `steps` is a frontier row when they differ).
    reference_solver: str = "ddim"
    reference_steps: int = 25
    num_images: int = 1000
    # Image i comes from the noise seeded by (0, i): the scored images are first_image .. first_image + num_images - 1
    # (a confirmation on images no earlier run of a preset scored takes a first_image past them).
    first_image: int = 0
    batch1_images: int = 200
    frontier_steps: tuple[int, ...] = (8, 10, 12, 14, 16, 18, 20)
    tail_thresholds: tuple[float, ...] = (0.1, 0.2)
    # Rows on a fixed cadence: a row may skip on every call (criterion "timestep" with skip_above_t=0) and runs
    # fully after `c` skipped calls, i.e. every (c + 1)-th call - TaylorSeer's cache interval, decided per row.
    tail_cadences: tuple[int, ...] = (1, 2)
    forecast_orders: tuple[int, ...] = (0, 1)
    fbc_thresholds: tuple[float, ...] = (0.1, 0.15, 0.2)
    taylorseer_intervals: tuple[int, ...] = (2, 3)
    taylorseer_orders: tuple[int, ...] = (1,)
    taylorseer_windows: tuple[tuple[int, bool], ...] = ()  # (warm-up steps, last step computed); (): max(1, steps // 8)
    # BlockForecast rows: (interval, forecast order, first calls computed, last call computed); the windows become
    # full_above_t / full_below_t among the solver's timesteps (`BlockForecast.for_calls`).
    block_forecasts: tuple[tuple[int, int, int, bool], ...] = ()
    # BlockForecast rows with the per-row change criterion: (interval, order, first calls, last call, verify threshold)
    block_verifies: tuple[tuple[int, int, int, bool, float], ...] = ()
    # BlockForecast rows placed by `BlockForecast.for_calls(calls=...)`, at each of these forecast orders: computing
    # where TaylorSeerCache computes (`taylorseer_steps` of every TaylorSeer interval and window; `bfts{interval}_o
    # {order}_w{warm-up}[_l]`), and computing `even_computes` timesteps spread evenly over the run, its first and last
    # among them (`bfe{k}_o{order}`).
    placed_orders: tuple[int, ...] = ()
    even_computes: tuple[int, ...] = ()
    # ... and on these placements, as given (indices of the run's timesteps, 0 first; `bfp{i-j-...}_o{order}`): e.g.
    # the ones `calibrate --kind block-forecast --forecast-computes K` picks by PSNR.
    placements: tuple[tuple[int, ...], ...] = ()
    sea_thresholds: tuple[float, ...] = (0.05, 0.1, 0.2)
    mag_thresholds: tuple[float, ...] = (0.02, 0.05)
    # cache-dit's DBCache (`cache_dit_rows.py`; Bn 0): every Fn x threshold x TaylorSeer order (0: no calibrator),
    # x warm-up (calls computed before any is cached), and each (step mask, threshold, order) at Fn 1.
    cache_dit_fns: tuple[int, ...] = ()
    cache_dit_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3)
    cache_dit_orders: tuple[int, ...] = (0, 1, 2)
    cache_dit_masks: tuple[tuple[str, float, int], ...] = ()
    cache_dit_warmups: tuple[int, ...] = (2, 4)
    # The DiT whose block parts are timed to cost every row at DiT-XL/2 width (`xl_cost.py`).
    cost_shape: CostShape = CostShape()
    batches: tuple[int, ...] = (64, 8, 1)
    sorted_batches: bool = True
    timing_repeats: int = 5
    timing_warmup: int = 1
    calib_images: int = 20
    bootstrap: int = 200
    confidence: float = 0.9

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {sorted(SETTINGS)}, got {self.setting!r}")
        for name in ("solver", "reference_solver"):
            if getattr(self, name) not in SOLVERS:
                raise ValueError(f"{name} must be one of {sorted(SOLVERS)}, got {getattr(self, name)!r}")
        check_int(self.steps, "steps", 2, "sampling steps")
        check_int(self.reference_steps, "reference_steps", 2, "the reference's sampling steps")
        for interval, order, first, _last, *_ in (*self.block_forecasts, *self.block_verifies):
            check_int(interval, "block_forecasts interval", 1)
            check_int(first, "block_forecasts first calls", 1, "calls computed before the first forecast")
            if first >= self.steps:
                raise ValueError(f"block_forecasts first calls must be below steps ({self.steps}), got {first}")
            if order not in (0, 1, 2):
                raise ValueError(f"block_forecasts orders must be 0, 1 or 2, got {order!r}")
        if any(order not in (0, 1, 2) for order in self.placed_orders):
            raise ValueError(f"placed_orders must be forecast orders 0, 1 or 2, got {self.placed_orders!r}")
        for k in self.even_computes:
            check_int(k, "every value of even_computes", 2, f"timesteps computed; below steps ({self.steps})")
            if k >= self.steps:
                raise ValueError(f"every value of even_computes must be below steps ({self.steps}), got {k}")
        for calls in self.placements:
            if not calls or calls[0] != 0 or list(calls) != sorted(set(calls)) or calls[-1] >= self.steps:
                raise ValueError(f"every placement must be increasing step indices from 0, below steps "
                                 f"({self.steps}), got {calls!r}")
        check_int(self.num_images, "num_images", 2, "images per scored set")
        check_int(self.first_image, "first_image", 0, "the index of the first scored image")
        check_int(self.batch1_images, "batch1_images", 2, "images sampled at batch 1")
        if self.batch1_images > self.num_images:
            raise ValueError(f"batch1_images must be at most num_images ({self.num_images}), got {self.batch1_images}")
        if not self.batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batches):
            raise ValueError(f"batches must be positive batch sizes, got {self.batches!r}")
        if max(self.batches) > self.num_images:
            raise ValueError(f"the largest batch ({max(self.batches)}) exceeds num_images ({self.num_images})")
        bad = [k for k in self.frontier_steps if not 1 <= k < self.steps]
        if bad:
            raise ValueError(f"frontier_steps must lie in [1, {self.steps}), got {bad}")
        if (self.reference_solver, self.reference_steps) in {(self.solver, k) for k in self.frontier_steps}:
            raise ValueError("the reference cannot also be a frontier row")
        if not self.tail_thresholds or any(not 0 < t < 1 for t in self.tail_thresholds):
            raise ValueError(f"tail_thresholds must be non-empty, each in (0, 1), got {self.tail_thresholds!r}")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.tail_cadences):
            raise ValueError(f"tail_cadences must be skipped calls >= 1 between full calls, got {self.tail_cadences!r}")
        if not self.forecast_orders or any(p not in (0, 1, 2) for p in self.forecast_orders):
            raise ValueError(f"forecast_orders must be a non-empty subset of (0, 1, 2), got {self.forecast_orders!r}")
        for name in ("timing_repeats", "calib_images", "bootstrap"):
            check_int(getattr(self, name), name, 1)
        check_int(self.timing_warmup, "timing_warmup", 0)
        if self.cache_dit_masks and not self.cache_dit_fns:
            raise ValueError("cache_dit_masks are rows at Fn 1 beside the Fn sweep: give cache_dit_fns too")
        if self.cache_dit_fns and not (self.cache_dit_thresholds and self.cache_dit_orders and self.cache_dit_warmups):
            raise ValueError(f"cache_dit_fns {self.cache_dit_fns} need cache_dit_thresholds, cache_dit_orders and "
                             f"cache_dit_warmups, got {self.cache_dit_thresholds}, {self.cache_dit_orders} and "
                             f"{self.cache_dit_warmups}")
        self.cache_dit_rows()  # each setting checked (`CacheDitBaseline`)

    def scored_images(self) -> tuple[range, range]:
        """The indices of the images every batch >= 8 row is scored on, and of those the batch-1 rows are."""
        return (range(self.first_image, self.first_image + self.num_images),
                range(self.first_image, self.first_image + self.batch1_images))

    def cache_dit_rows(self) -> list[Method]:
        if not self.cache_dit_fns:
            return []
        return cache_dit_methods(self.solver, self.steps, self.cache_dit_fns, self.cache_dit_thresholds,
                                 self.cache_dit_orders, self.cache_dit_masks, self.cache_dit_warmups)


# `full` on the deep pre-trained digits DiT takes about 45 minutes on one core; `ci` is a smoke run of every path.
def _at_user_steps(solver: str, steps: int, frontier: tuple[int, ...], even: tuple[int, ...]) -> CachesPreset:
    """Every cache and per-block forecast at `solver` `steps` (where users sample), against the stock model at 25
    DDIM steps and the solver's own fewer steps; batch 64 and 1, 500 and 100 images, 9 timed rounds (the verdicts
    at equal wall-clock against TaylorSeer's fastest settings turn on a few percent; 13-26 min on one core in the
    committed runs).
    `even`: the counts of the evenly placed rows, around TaylorSeer's at intervals 4 and 3."""
    windows = ((1, False), (2, False), (2, True), (3, True))
    return CachesPreset(
        solver=solver, steps=steps, num_images=500, batch1_images=100, frontier_steps=frontier, tail_thresholds=(0.2,),
        tail_cadences=(), forecast_orders=(1,), fbc_thresholds=(0.1,), taylorseer_intervals=(2, 3, 4),
        taylorseer_orders=(1, 2), taylorseer_windows=((1, False), (3, False), (2, True)), sea_thresholds=(0.1,),
        mag_thresholds=(0.05,), batches=(64, 1), sorted_batches=False, timing_repeats=9,
        block_forecasts=tuple((i, o, w, last) for i in (2, 3, 4) for o in (1, 2) for w, last in windows),
        block_verifies=((6, 1, 1, False, 0.2), (6, 1, 2, True, 0.2), (6, 1, 2, True, 0.3)), placed_orders=(1,),
        even_computes=even, cache_dit_fns=(1, 4, 8), cache_dit_masks=tuple((m, 0.2, 1) for m in ("slow", "medium", "fast")))


def _against_cache_dit(solver: str, steps: int, frontier: tuple[int, ...]) -> CachesPreset:
    """cache-dit's DBCache swept (Fn 1/4/8, thresholds 0.15 and 0.3, no calibrator and TaylorSeer orders 1-2, warm-ups
    of 2 and 4 steps, the three step masks) against the rows that led the earlier runs (`BlockForecast` at TaylorSeerCache's interval-3 and -4
    cadences after 2 warm-up steps, TaylorSeerCache itself, the per-row tail forecast, FirstBlockCache) and the
    solver's fewer steps: batch 64 only, 320 images, 5 timed rounds, so that both step counts fit in about 30
    minutes on one core."""
    return CachesPreset(
        solver=solver, steps=steps, num_images=320, batch1_images=64, frontier_steps=frontier, tail_thresholds=(0.2,),
        tail_cadences=(), forecast_orders=(1,), fbc_thresholds=(0.1,), taylorseer_intervals=(3, 4),
        taylorseer_orders=(1,), taylorseer_windows=((2, False),), sea_thresholds=(), mag_thresholds=(), batches=(64,),
        sorted_batches=False, timing_repeats=5, placed_orders=(1,), cache_dit_fns=(1, 4, 8),
        cache_dit_thresholds=(0.15, 0.3), cache_dit_masks=tuple((m, 0.2, 1) for m in ("slow", "medium", "fast")))


def _lead(solver: str, steps: int, frontier: tuple[int, ...]) -> CachesPreset:
    """Few computed steps, the last one among them: `BlockForecast` at intervals 4-7 (the first call, or the first
    two, and the last computed), with the per-row change criterion at interval 8, and on 4-6 evenly placed computes,
    against TaylorSeerCache at intervals 4-8 with the last step computed and cache-dit's DBCache at Fn 1/4/8 and
    thresholds 0.3-0.5 (TaylorSeer order 1); batch 64, 320 images, 5 timed rounds (about 15 minutes on one core)."""
    return CachesPreset(
        solver=solver, steps=steps, num_images=320, batch1_images=64, frontier_steps=frontier, tail_thresholds=(0.2,),
        tail_cadences=(), forecast_orders=(1,), fbc_thresholds=(0.1,), taylorseer_intervals=(4, 5, 6, 7, 8),
        taylorseer_orders=(1,), taylorseer_windows=((1, True), (2, True)), sea_thresholds=(), mag_thresholds=(),
        batches=(64,), sorted_batches=False, timing_repeats=5,
        block_forecasts=((4, 1, 2, True), (5, 1, 1, True), (5, 1, 2, True), (6, 1, 1, True), (7, 1, 1, True)),
        block_verifies=((8, 1, 1, True, 0.3), (8, 1, 1, True, 0.4)), placed_orders=(1,), even_computes=(4, 5, 6),
        cache_dit_fns=(1, 4, 8), cache_dit_thresholds=(0.3, 0.4, 0.5), cache_dit_orders=(1,), cache_dit_warmups=(2,))


def _placed(steps: int, placements: tuple[tuple[int, ...], ...], intervals: tuple[int, ...],
            frontier: tuple[int, ...] | None = None) -> CachesPreset:
    """`BlockForecast` at DPM-Solver++ `steps` on given placements of 3-5 computed steps (the picks of `calibrate
    --kind block-forecast --forecast-computes K` by PSNR, and for comparison others) against TaylorSeerCache at
    `intervals` with its warm-up step and the last step computed, and DPM-Solver++ at `frontier` steps (default 12,
    10 for a 12-step run); batch 64, 320 images, 5 timed rounds (about 6 minutes on one core)."""
    return CachesPreset(
        solver="dpmpp", steps=steps, num_images=320, batch1_images=64,
        frontier_steps=frontier or (12 if steps > 12 else 10,),
        tail_thresholds=(0.2,), tail_cadences=(), forecast_orders=(1,), fbc_thresholds=(0.1,),
        taylorseer_intervals=intervals, taylorseer_orders=(1,), taylorseer_windows=((1, True),), sea_thresholds=(),
        mag_thresholds=(), batches=(64,), sorted_batches=False, timing_repeats=5, placed_orders=(1,),
        placements=placements)


# The 15-step row of place15 that held quality, and TaylorSeerCache's 4- and 5-compute cadences, on 640 images none
# of the place runs scored.
_CONFIRM15 = replace(_placed(15, ((0, 4, 9, 13),), (5, 6)), first_image=320, num_images=640)


def _third_set(steps: int, placements: tuple[tuple[int, ...], ...], intervals: tuple[int, ...],
               frontier: tuple[int, ...]) -> CachesPreset:
    """`_placed` on a third set of 640 images (960 on), none of which the place and confirm runs scored, with
    cache-dit's DBCache beside TaylorSeerCache (Fn 1 and 4, thresholds 0.3 and 0.4, TaylorSeer order 1: the settings
    that held quality fastest in `lead20`) and DPM-Solver++ at `frontier` steps; batch 64 and 1, 7 timed rounds
    (about 10 minutes on one core)."""
    return replace(_placed(steps, placements, intervals, frontier), first_image=960, num_images=640, batches=(64, 1),
                   timing_repeats=7, cache_dit_fns=(1, 4), cache_dit_thresholds=(0.3, 0.4), cache_dit_orders=(1,),
                   cache_dit_warmups=(2,))


PRESETS = {
    "full": CachesPreset(),
    "dpmpp10": _at_user_steps("dpmpp", 10, (6, 7, 8), (3, 4, 5)),
    "dpmpp15": _at_user_steps("dpmpp", 15, (7, 8, 10, 12), (4, 5, 6)),
    "dpmpp20": _at_user_steps("dpmpp", 20, (8, 10, 12, 15), (5, 6, 7)),
    "ddim25": _at_user_steps("ddim", 25, (10, 12, 14, 16, 20), (6, 7, 8)),
    "cachedit10": _against_cache_dit("dpmpp", 10, (6, 7, 8)),
    "cachedit15": _against_cache_dit("dpmpp", 15, (8, 10, 12)),
    "lead20": _lead("dpmpp", 20, (10, 12, 15)),
    # The placements: calibrate's picks (by PSNR on 40 images of other seeds) of 5, 4 and 3 computes at 20 steps, 4
    # and 3 at 15 and at 12; TaylorSeerCache's own (0, 2, 8, 14, 19); and four more 4-compute ones at 20 steps.
    "place20": _placed(20, ((0, 4, 9, 14, 18), (0, 5, 12, 18), (0, 7, 16), (0, 2, 8, 14, 19), (0, 2, 10, 18),
                            (0, 3, 11, 19), (0, 2, 9, 17), (0, 1, 9, 18)), (6, 9, 10, 17)),
    "place15": _placed(15, ((0, 4, 9, 13), (0, 7, 13)), (5, 6, 12)),
    "place12": _placed(12, ((0, 4, 9, 11), (0, 5, 10)), (4, 5, 9)),
    # The glyphs DiT's own picks at 15 steps (calibrate on bench/assets/glyphs-dit, the same flags).
    "glyphs-place15": replace(_placed(15, ((0, 4, 10, 13), (0, 5, 12)), (5, 6, 12)), setting="glyphs"),
    "confirm15": _CONFIRM15,
    "confirm12": replace(_placed(12, (), (4, 5)), first_image=320, num_images=640),  # TaylorSeerCache's, as above
    # confirm15 timed at batch 1 too (TaylorSeerCache sampled image by image on the first 64 of its images).
    "confirm15b1": replace(_CONFIRM15, batches=(64, 1)),
    # The calibrated placements (and a 3-compute one) on images 960-1599, the forecast step on (docs/tail_cache.md).
    "third15": _third_set(15, ((0, 4, 9, 13), (0, 7, 13)), (5, 6), (10, 12)),
    "third12": _third_set(12, ((0, 4, 9, 11), (0, 3, 7, 10)), (4, 5), (8, 10)),
    "ci": CachesPreset(solver="dpmpp", steps=6, reference_steps=8, block_forecasts=((2, 1, 2, True),), block_verifies=((3, 1, 1, False, 0.2),),
                       placed_orders=(1,), even_computes=(3,), placements=((0, 3),),
                       taylorseer_windows=((1, False), (2, True)), num_images=24, batch1_images=6, frontier_steps=(3,), tail_thresholds=(0.2,), tail_cadences=(1,),
                       fbc_thresholds=(0.2,), taylorseer_intervals=(2,), sea_thresholds=(0.2,), mag_thresholds=(0.05,),
                       batches=(8, 1), timing_repeats=1, timing_warmup=0, calib_images=4, bootstrap=20,
                       cache_dit_fns=(1, 4), cache_dit_thresholds=(0.3,), cache_dit_orders=(0, 1),
                       cache_dit_masks=(("fast", 0.3, 1),), cache_dit_warmups=(1,),
                       cost_shape=CostShape(width=32, heads=2, latent_side=8, repeats=1)),
}


def run(preset: CachesPreset, progress: bool = True, command: str = "") -> dict[str, Any]:
    """Measure every row of `preset` (see the module doc); returns the report (not yet written)."""
    from .presets import _Progress

    log = _Progress(progress)
    started = time.perf_counter()
    load_before = load_average()
    pipe = load_setting_pipeline(preset.setting)
    pipe.set_progress_bar_config(disable=True)
    n = len(pipe.transformer.transformer_blocks)
    data = setting_dataset(preset.setting)
    nets = {name: load_feature_net(name) for name in feature_nets_of(data)}  # the primary net first
    real, _ = real_images(data, "reference")
    with torch.no_grad():
        reals = {name: net(real) for name, net in nets.items()}
    N, N1, S = preset.num_images, preset.batch1_images, preset.steps
    images, images1 = preset.scored_images()
    sets = {"all": PairedFIDs(reals, N, preset.bootstrap, preset.confidence),
            "batch1": PairedFIDs(reals, N1, preset.bootstrap, preset.confidence)}
    big = max(b for b in preset.batches)
    sampler = CacheDitSampler(pipe, Conditioning("classes", class_ids=list(range(pipe.num_classes))), 1.0,
                              make_schedulers(pipe.scheduler), big, big)
    rows: dict[str, dict[str, Any]] = {}
    methods: dict[str, Method] = {}
    reference_evals: list[float] = []

    def score(name: str, method: Method, indices: list[int] | range, batch: int, scored_as: str) -> dict:
        t0 = time.perf_counter()
        first_call = len(sampler.cached_steps)
        with WorkCounter(pipe.transformer) as work:  # what ran: the rows' cost at DiT-XL/2 width (`xl_cost.py`)
            run_ = sampler(method, indices, batch_size=batch)
        order = np.argsort(np.asarray(list(indices)))  # back to index order: pairing is by image index
        with torch.no_grad():
            images = run_.images[torch.as_tensor(order)]
            features = {name: net(images) for name, net in nets.items()}
        evals = run_.block_evals / len(indices)
        if not reference_evals:
            reference_evals.append(evals)
        row = {**method.describe(), "name": name, "batch": batch, "scored_on": scored_as,
               "block_fraction": evals / reference_evals[0], "sample_s": time.perf_counter() - t0,
               "work": {k: v / len(indices) for k, v in work.counts.items()}}
        if method.family == "cache_dit":  # the steps cache-dit itself reports cached, one list per pipeline call
            row["cached_steps"] = sampler.cached_steps[first_call:]
            row["mean_cached_steps"] = float(np.mean([len(c) for c in row["cached_steps"]]))
        row["fid_by_net"] = sets[scored_as].add(name, features)
        row["fid"] = row["fid_by_net"][sets[scored_as].primary]
        if scored_as == "all" and method.cache is None:  # per-row and full-depth rows: also scored on the first N1
            row["fid_batch1_set_by_net"] = sets["batch1"].add(name, {k: v[:N1] for k, v in features.items()})
            row["fid_batch1_set"] = row["fid_batch1_set_by_net"][sets["batch1"].primary]
        rows[name], methods[name] = row, method
        log(f"{name:32s} FID {row['fid']:8.3f}  blocks {row['block_fraction']:.3f}  ({row['sample_s']:.1f}s)")
        return row

    # 1. Batch-independent rows, on all images: the reference, fewer steps, the per-row caches.
    reference = Method(f"{preset.reference_solver}{preset.reference_steps}", "reference", preset.reference_solver,
                       preset.reference_steps)
    score(reference.name, reference, images, big, "all")
    frontier_steps = sorted({*preset.frontier_steps, S} - ({preset.reference_steps}
                                                           if preset.solver == preset.reference_solver else set()))
    for k in frontier_steps:
        score(f"{preset.solver}{k}", Method(f"{preset.solver}{k}", "fewer_steps", preset.solver, k), images, big, "all")
    sampler.use_solver(preset.solver)
    tails = tail_methods(preset) + forecast_methods(preset, solver_timesteps(pipe.scheduler, S))
    for method in tails:
        score(method.name, method, images, big, "all")

    # 2. diffusers' caches (MagCache calibrated first), sampled at every batch size they are timed at.
    sampler.use_solver(preset.solver)
    grid_preset = replace(Preset(), fbc_thresholds=preset.fbc_thresholds, taylorseer_intervals=preset.taylorseer_intervals,
                          taylorseer_orders=preset.taylorseer_orders, taylorseer_windows=preset.taylorseer_windows,
                          sea_thresholds=preset.sea_thresholds, mag_thresholds=preset.mag_thresholds,
                          calib_images=preset.calib_images)
    caches, mag_ratios, not_attached = cache_methods(pipe, (preset.solver, S), grid_preset, 1.0, sampler)
    for method in preset.cache_dit_rows():
        try:  # a two-image trial, as for diffusers' caches: one that cannot attach is reported, not fatal
            sampler(method, range(2), batch_size=2)
            caches.append(method)
        except (ValueError, RuntimeError, TypeError, KeyError, AssertionError) as error:
            not_attached[method.family] = f"{type(error).__name__}: {error}"
    for method in caches:
        for batch in preset.batches:
            if batch == 1:
                score(f"{method.name}|b1", method, images1, 1, "batch1")
            else:
                score(f"{method.name}|b{batch}", method, images, batch, "all")
        if preset.sorted_batches:
            score(f"{method.name}|b{big}sorted", method, sorted_by_class(images, pipe.num_classes), big, "all")

    # 3. Per-row rows do not depend on the batch: check it at batch 1 on a few images (bitwise is not required,
    #    matmuls of other shapes round differently; decisions are thresholded, so a flip is possible in principle).
    check = tails[len(tails) // 2]
    few = range(min(N1, 8))
    alone = sampler(check, few, batch_size=1).images
    together = sampler(check, few, batch_size=big).images
    independence = {"method": check.name, "images": len(few),
                    "max_abs_difference": float((alone - together).abs().max())}

    # 4. Wall-clock at every batch size: the batch-independent rows and the caches.
    timed_methods = [reference] + [methods[f"{preset.solver}{k}"] for k in frontier_steps] + tails + caches
    timing: dict[str, dict[str, dict[str, float]]] = {}
    noise: dict[str, float] = {}
    for batch in preset.batches:
        times = sampler.timed(timed_methods, batch, preset.timing_repeats, preset.timing_warmup)
        for name, entry in speedups(times, reference.name).items():
            timing.setdefault(name, {})[str(batch)] = entry
        noise[str(batch)] = timing_noise(times, reference.name)
        log(f"timing at batch {batch} done ({len(timed_methods)} methods x {preset.timing_repeats} rounds)")
    for name, row in rows.items():  # a cache's timing is its method's, whatever batch its images were sampled at
        row["timing"] = timing[name.split("|")[0]]

    # 5. Every row's cost at DiT-XL/2 width, from the parts timed once and the work it did.
    parts = measure_parts(preset.cost_shape)
    add_costs(rows, parts, reference.name)
    log(f"DiT-XL/2-width parts timed ({parts['elapsed_s']:.0f}s)")

    # 6. Intervals, matched-speed comparisons (by wall-clock and at DiT-XL/2 width), state memory.
    for name, row in rows.items():
        paired = sets[row["scored_on"]]
        row["dfid_reference"] = paired.difference(name, reference.name)
        row["fid_resamples"] = [round(float(v), 5) for v in paired.resampled[name]]  # the primary net's
    comparisons = matched_comparisons(rows, sets, tails, noise)
    against_frontier = frontier_comparisons(rows, sets, tails, preset.batches, noise)
    comparisons_xl = matched_comparisons(rows, sets, tails, xl=True)
    against_frontier_xl = frontier_comparisons(rows, sets, tails, (big,), xl=True)
    composition = {}
    for method in caches if preset.sorted_batches else ():
        composition[method.name] = sets["all"].difference(f"{method.name}|b{big}sorted", f"{method.name}|b{big}")
    # The state of each rule's rows at each forecast order (the residual criterion stores one tensor more).
    first_rules = (f"tail{preset.tail_thresholds[0]}_", *(f"every{c + 1}_" for c in preset.tail_cadences[:1]))
    memory = {m.name: state_memory(pipe, m, 64) for m in tails if m.name.startswith(first_rules)
              or (m.family == "block_forecast" and m.notes["first_calls"] == 1 and not m.notes["last_call"]
                  and m.notes["interval"] == preset.block_forecasts[0][0])}
    return {
        "command": command, "preset": asdict(preset), "setting": preset.setting, "num_blocks": n,
        "reference": reference.name, "feature_net": data, "feature_nets": list(nets), "num_images": N, "batch1_images": N1,
        "first_image": preset.first_image,
        "rows": rows, "timing_noise": noise, "comparisons": comparisons, "frontier_comparisons": against_frontier,
        "batch_composition": composition, "mag_ratios": mag_ratios,
        "not_attached": not_attached, "batch_independence": independence, "state_memory": memory,
        "summary": summarize(comparisons), "xl_parts": parts, "comparisons_xl": comparisons_xl,
        "frontier_comparisons_xl": against_frontier_xl, "summary_xl": summarize(comparisons_xl),
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "cache_dit": cache_dit_version() if preset.cache_dit_fns else None,
                        "load_average_before": load_before, "load_average_after": load_average()},
        "elapsed_s": time.perf_counter() - started,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default=None, help="default: the preset's")
    parser.add_argument("--num-images", type=int_at_least(2), default=None,
                        help="images per scored set (default: the preset's)")
    parser.add_argument("--batch1-images", type=int_at_least(2), default=None, help="images sampled at batch 1")
    parser.add_argument("--threads", type=int_at_least(1), default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/caches"))


def main(args: argparse.Namespace, command: str = "") -> dict:
    """`python -m bench bench-caches` with parsed `args`; the flags are checked against the preset, naming them,
    before anything loads."""
    preset = PRESETS[args.preset]
    check_output_folder(args.out, "--out")
    images = args.num_images or preset.num_images
    batch1 = args.batch1_images or preset.batch1_images
    if batch1 > images:
        given = "--batch1-images" if args.batch1_images else f"the {args.preset} preset's images at batch 1"
        raise ValueError(f"--num-images {images} is below {given} ({batch1}): the batch-1 rows are scored on the "
                         f"first of the same images; give --num-images >= {batch1} or a smaller --batch1-images")
    if max(preset.batches) > images:
        raise ValueError(f"--num-images {images} is below the {args.preset} preset's largest batch "
                         f"({max(preset.batches)}); give --num-images >= {max(preset.batches)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    changes = {k: v for k, v in (("setting", args.setting), ("num_images", args.num_images),
                                 ("batch1_images", args.batch1_images)) if v is not None}
    preset = replace(preset, **changes)  # re-validated by __post_init__
    with torch.no_grad():
        report = run(preset, command=command)
    write(report, args.out)
    return report
