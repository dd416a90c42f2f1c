"""cache-dit rows of `bench-caches` on a tiny DiT pipeline, and every row's cost at DiT-XL/2 width (`xl_cost.py`)."""

from dataclasses import replace

import pytest
import torch
from diffusers import DDIMScheduler

from bench import caches_bench
from bench.cache_dit_rows import CacheDitBaseline, CacheDitSampler, cache_dit_methods
from bench.xl_cost import CostShape, WorkCounter, measure_parts, row_cost
from ee_diffusion.eval.method import Method
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.pipelines.conditioning import Conditioning
from ee_diffusion.testing import tiny_dit

pytest.importorskip("cache_dit")
pytestmark = pytest.mark.usefixtures("one_thread")
STEPS, BLOCKS, IMAGES = 6, 4, 4


@pytest.fixture(scope="module")
def sampler():
    pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=BLOCKS), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return CacheDitSampler(pipe, Conditioning("classes", class_ids=list(range(10))), 1.0, {"ddim": DDIMScheduler()},
                           IMAGES)


def _sample(sampler, method):
    with WorkCounter(sampler.pipe.transformer) as work:
        run = sampler(method, range(IMAGES))
    return run, {k: v / IMAGES for k, v in work.counts.items()}


def test_a_cache_dit_row_runs_caches_the_steps_it_reports_and_leaves_the_pipeline_as_found(sampler):
    pipe = sampler.pipe
    call_before = type(pipe).__call__
    stock, stock_work = _sample(sampler, Method("stock", "reference", "ddim", STEPS))
    # A threshold no change reaches: every call after the 2 warm-up calls is cached, computing the first block only.
    method = Method("cd", "cache_dit", "ddim", STEPS, cache=CacheDitBaseline(fn=1, threshold=100.0, warmup=2))
    cached, work = _sample(sampler, method)
    assert sampler.cached_steps[-1] == [2, 3, 4, 5]
    assert work == {"calls": STEPS, "entered": 2 * BLOCKS + 4, "attention": 2 * BLOCKS + 4, "feed_forward": 2 * BLOCKS + 4}
    assert cached.block_evals == IMAGES * (2 * BLOCKS + 4) and not torch.equal(cached.images, stock.images)
    # Taken off: the stock model again, bit for bit, with nothing of cache-dit left on the pipeline or the transformer.
    again, _ = _sample(sampler, Method("stock", "reference", "ddim", STEPS))
    assert torch.equal(again.images, stock.images)
    assert type(pipe).__call__ is call_before and "forward" not in vars(pipe.transformer)
    assert not hasattr(pipe.transformer, "_is_patched") and not hasattr(type(pipe), "_is_cached")

    # The XL-width cost: every block computed costs what the stock model does at its step count; each cached step
    # saves its skipped blocks (3 of 4) and pays the cache's per-call bookkeeping on every call.
    parts = measure_parts(CostShape(width=32, heads=2, latent_side=8, repeats=1))
    s, per_row = parts["seconds"], 1 / parts["shape"]["batch"]
    full = row_cost(stock_work, "reference", parts)
    assert full == pytest.approx(STEPS * (s["fixed"] + BLOCKS * s["block"]) * per_row)
    saved = 4 * (BLOCKS - 1) * s["block"] * per_row - STEPS * s["cache_op"] * per_row
    assert row_cost(work, "cache_dit", parts) == pytest.approx(full - saved)


def test_masks_and_calibrators_reach_cache_dit(sampler):
    import cache_dit

    # The "fast" mask computes the steps it marks 1; the threshold caches every other step after the warm-up.
    mask = cache_dit.steps_mask(total_steps=10, mask_policy="fast")
    method = Method("m", "cache_dit", "ddim", 10, cache=CacheDitBaseline(1, 100.0, 1, "fast", warmup=1))
    _sample(sampler, method)
    assert sampler.cached_steps[-1] == [i for i, m in enumerate(mask) if m == 0 and i >= 1]
    # cache-dit's TaylorSeer starts its state at the first computed step and takes a derivative from its third step on
    # (step index 3 of the run): after 3 warm-up steps it still has none and reuses the residual as is; after 4 it
    # extrapolates it.
    runs = {(order, w): _sample(sampler, Method("r", "cache_dit", "ddim", STEPS, cache=CacheDitBaseline(1, 100.0, order,
                                                                                                          warmup=w)))[0]
            for order in (0, 1) for w in (3, 4)}
    assert sampler.cached_steps[-4:] == [[3, 4, 5], [4, 5], [3, 4, 5], [4, 5]]
    assert torch.equal(runs[0, 3].images, runs[1, 3].images)
    assert not torch.equal(runs[0, 4].images, runs[1, 4].images)


def test_the_cost_of_a_forecast_block_is_its_implementation_s_and_unknown_forecasts_are_refused():
    parts = {"shape": {"batch": 2}, "seconds": {"fixed": 1.0, "block": 10.0, "cache_op": 0.5,
                                                "forecast_block": {"ours": 2.0, "diffusers": 3.0}}}
    work = {"calls": 2, "entered": 8, "attention": 6, "feed_forward": 6}
    assert row_cost(work, "block_forecast", parts) == pytest.approx((2 + 60 + 2 * 2.0 + 2 * 0.5) / 2)
    assert row_cost(work, "taylorseer_cache", parts) == pytest.approx((2 + 60 + 2 * 3.0 + 2 * 0.5) / 2)
    with pytest.raises(ValueError, match=r"family 'cache_dit' forecast 2 blocks per image.*known forecasting"):
        row_cost(work, "cache_dit", parts)
    with pytest.raises(ValueError, match=r"got attention 6 and feed_forward 5"):
        row_cost({**work, "feed_forward": 5}, "block_forecast", parts)


@pytest.mark.parametrize("kwargs, match", [
    ({"fn": 0, "threshold": 0.1}, r"fn must be an integer >= 1 \(first blocks computed on every call\), got 0"),
    ({"fn": 1, "threshold": 0.0}, r"threshold must be > 0 \(a relative L1 change\), got 0.0"),
    ({"fn": 1, "threshold": 0.1, "taylorseer_order": 3}, r"taylorseer_order must be 0 \(no calibrator\), 1 or 2, got 3"),
    ({"fn": 1, "threshold": 0.1, "mask": "ultra"}, r"mask must be one of \['slow', 'medium', 'fast'\] or None"),
])
def test_bad_cache_dit_settings_are_refused_with_the_allowed_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CacheDitBaseline(**kwargs)


def test_the_preset_names_its_cache_dit_rows_and_checks_them():
    rows = cache_dit_methods("dpmpp", 10, (1, 8), (0.2,), (0, 2), (("slow", 0.3, 1),), (2, 4))
    assert [m.name for m in rows] == ["cachedit_f1_r0.2_w2@dpmpp10", "cachedit_f1_r0.2_w4@dpmpp10",
                                      "cachedit_f1_r0.2_ts2_w2@dpmpp10", "cachedit_f1_r0.2_ts2_w4@dpmpp10",
                                      "cachedit_f8_r0.2_w2@dpmpp10", "cachedit_f8_r0.2_w4@dpmpp10",
                                      "cachedit_f8_r0.2_ts2_w2@dpmpp10", "cachedit_f8_r0.2_ts2_w4@dpmpp10",
                                      "cachedit_f1_r0.3_ts1_w4_mslow@dpmpp10"]
    assert len(caches_bench.PRESETS["cachedit10"].cache_dit_rows()) == 3 * 2 * 3 * 2 + 3
    with pytest.raises(ValueError, match="cache_dit_masks are rows at Fn 1 beside the Fn sweep"):
        replace(caches_bench.CachesPreset(), cache_dit_masks=(("slow", 0.2, 1),))
    with pytest.raises(ValueError, match="taylorseer_order must be"):
        replace(caches_bench.CachesPreset(), cache_dit_fns=(1,), cache_dit_orders=(5,))
    with pytest.raises(ValueError, match=r"cache_dit_fns \(1,\) need .* got \(0.1, 0.2, 0.3\), \(0, 1, 2\) and \(\)"):
        replace(caches_bench.CachesPreset(), cache_dit_fns=(1,), cache_dit_warmups=())
