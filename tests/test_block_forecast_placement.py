"""Where a `BlockForecast` computes: `full_windows` placed by `for_calls(..., calls=...)` (TaylorSeer's cadence or a
searched placement), the placement search of `calibrate_block_forecast(computes=...)`, and the block hooks a bare
forecast does without."""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from ee_diffusion import EarlyExitConfig, apply_early_exit, remove_early_exit
from ee_diffusion.calibration import CalibrationSet, as_target, calibrate_block_forecast
from ee_diffusion.calibration.forecast_placement import neighbours, search_placement, starts
from ee_diffusion.forward_chain import HOOK_ATTR
from ee_diffusion.eval.baselines import TAYLORSEER_DIT_MODULES, CacheBaseline, diffusers_cache, taylorseer_steps
from ee_diffusion.eval.solvers import solver_timesteps
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.pipelines.conditioning import Conditioning
from ee_diffusion.schedules import BlockForecast
from ee_diffusion.testing import tiny_dit, tiny_sd3

pytestmark = pytest.mark.usefixtures("one_thread")


def _computing_rows(model):
    """Per model call, how many rows block 0's attention really computes (a pre-hook inside it; 0: none)."""
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(0))

    def count(module, args):
        seen[-1] += args[0].shape[0]

    model.transformer_blocks[0].attn1.to_q.register_forward_pre_hook(count)
    return seen


@torch.no_grad()
def _sample(model, scheduler, steps, x, labels):
    """A plain sampling loop: one model call per scheduler timestep, every row at the same timestep."""
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        eps = model(x, timestep=t.expand(len(x)), class_labels=labels).sample[:, : x.shape[1]]
        x = scheduler.step(eps, t, x).prev_sample
    return x


def test_calls_compute_exactly_the_listed_timesteps():
    timesteps = solver_timesteps(DPMSolverMultistepScheduler(), 10)
    policy = BlockForecast.for_calls(timesteps, calls=[9, 4], forecast_order=1)  # index 0 is added
    assert policy.interval == 11 and len(policy.full_windows) == 2
    assert all(low <= timesteps[i] <= high for (low, high), i in zip(sorted(policy.full_windows, reverse=True), (4, 9)))
    model, x, labels = tiny_dit(num_layers=2), torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    apply_early_exit(model, EarlyExitConfig(policy=policy))
    seen = _computing_rows(model)
    with torch.no_grad():
        for t in timesteps:
            model(x, timestep=torch.full((3,), t), class_labels=labels)
    assert [i for i, n in enumerate(seen) if n] == [0, 4, 9] and set(seen) == {0, 3}
    remove_early_exit(model)
    # An explicit interval still bounds the run of forecast calls between two computed ones.
    bounded = BlockForecast.for_calls(timesteps, calls=[0, 9], interval=4)
    apply_early_exit(model, EarlyExitConfig(policy=bounded))
    seen = _computing_rows(model)
    with torch.no_grad():
        for t in timesteps:
            model(x, timestep=torch.full((3,), t), class_labels=labels)
    assert [i for i, n in enumerate(seen) if n] == [0, 4, 8, 9]
    remove_early_exit(model)


@pytest.mark.parametrize(("interval", "warmup", "last"), [(3, 1, False), (2, 2, True), (4, 1, False)])
def test_taylorseer_cadence_as_calls_is_diffusers_taylorseer_cache(interval, warmup, last):
    """At TaylorSeer's compute steps and order 1, the per-row forecast is diffusers' TaylorSeerCache (float32
    factors) on evenly spaced DDIM timesteps, where a step-index and a timestep extrapolation agree: same images.
    Both forecast the attention and feed-forward outputs and run the block's norms, modulation and residuals."""
    steps, model = 10, tiny_dit(num_layers=3)
    x, labels = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 3, 5, 7])
    stock = _sample(model, DDIMScheduler(), steps, x, labels)
    calls = taylorseer_steps(steps, interval, warmup, last)
    baseline = CacheBaseline("taylorseer_cache", {"cache_interval": interval, "disable_cache_before_step": warmup,
                                                  "max_order": 1, "cache_identifiers": TAYLORSEER_DIT_MODULES,
                                                  "disable_cache_after_step": steps - 1 if last else None})
    seen = _computing_rows(model)
    with diffusers_cache(model, baseline, DDIMScheduler(), steps):
        theirs = _sample(model, DDIMScheduler(), steps, x, labels)
    assert [i for i, n in enumerate(seen) if n] == calls  # the helper says where diffusers computes
    policy = BlockForecast.for_calls(solver_timesteps(DDIMScheduler(), steps), calls=calls, forecast_order=1)
    apply_early_exit(model, EarlyExitConfig(policy=policy))
    ours = _sample(model, DDIMScheduler(), steps, x, labels)
    remove_early_exit(model)
    assert not torch.allclose(theirs, stock, atol=1e-3)  # the forecasts change the images
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0)


@pytest.mark.parametrize("stepped", [False, True])
def test_a_bare_forecast_hooks_no_blocks_exits_checks_and_forecast_steps_do(stepped):
    """SD3 declares no forecast step: a plain BlockForecast hooks its sub-modules only; DiT's blocks are hooked for
    the step that stands in for a block whose every row forecasts."""
    model = tiny_dit(num_layers=2) if stepped else tiny_sd3(num_layers=2)

    def hooked_blocks():
        return [i for i, block in enumerate(model.transformer_blocks) if HOOK_ATTR in vars(block)]

    for policy, blocks in ((BlockForecast(interval=2), [0, 1] if stepped else []),
                           (BlockForecast(interval=2, depth=2), [0, 1]),
                           (BlockForecast(interval=2, verify_threshold=0.2), [0, 1])):
        apply_early_exit(model, EarlyExitConfig(policy=policy))
        assert hooked_blocks() == blocks and HOOK_ATTR in vars(model.transformer_blocks[0].ff)
        remove_early_exit(model)
        assert not hooked_blocks()


@pytest.mark.parametrize(("windows", "ok"), [
    (((100, 200), (500.5, 500.5)), True), ([[0, 1e9]], True), ((), True),
    (((200, 100),), False), (((1, 2, 3),), False), ((("a", 2),), False), ("12", False), (((True, 2),), False),
    (5, False),
])
def test_full_windows_are_validated_and_round_trip(windows, ok):
    if not ok:
        with pytest.raises(ValueError, match="full_windows must be a list of .low, high. timestep pairs with low <= high"):
            BlockForecast(full_windows=windows)
        return
    policy = BlockForecast(interval=3, full_windows=windows)
    assert policy.full_windows == tuple((float(a), float(b)) for a, b in windows)
    config = EarlyExitConfig(policy=policy)
    assert EarlyExitConfig.from_json(config.to_json()) == config


def test_bad_calls_are_refused():
    timesteps = [900.0, 700.0, 500.0, 300.0]
    with pytest.raises(ValueError, match=r"calls must be indices of the run's 4 distinct timesteps \(0..3\), got \[4\]"):
        BlockForecast.for_calls(timesteps, calls=[4])
    with pytest.raises(ValueError, match="calls must be indices"):
        BlockForecast.for_calls(timesteps, calls=[True])
    with pytest.raises(ValueError, match="give calls or first_calls/last_call, not both"):
        BlockForecast.for_calls(timesteps, 2, calls=[0, 2])


def test_the_search_starts_evenly_and_climbs_to_the_best_placement():
    assert starts(10, 3) == [(0, 4, 9), (0, 3, 7)] and starts(5, 1) == [(0,)]
    assert neighbours((0, 2, 4), 6) == [(0, 1, 4), (0, 3, 4), (0, 2, 3), (0, 2, 5)]
    target, scored = (0, 2, 3, 8), []

    def score(calls):  # a PSNR that falls with the distance from `target`
        scored.append(calls)
        return {"psnr_db_mean": 40.0 - sum(abs(a - b) for a, b in zip(calls, target))}

    trials = search_placement(score, 10, 4)
    assert max(trials, key=lambda t: t["psnr_db_mean"])["calls"] == list(target)
    assert len(scored) == len(set(scored)) == len(trials)  # each placement sampled once
    assert len(search_placement(score, 10, 4, max_trials=3)) == 3
    with pytest.raises(ValueError, match="a placement computes between 1 and 9 of the run's 10 timesteps, got 10"):
        search_placement(score, 10, 10)


def test_calibrated_placements_are_real_runs_and_the_pick_is_their_best():
    pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    calib = CalibrationSet(num_images=4, num_inference_steps=6, batch_size=4)
    target = as_target(pipe, Conditioning("classes", class_ids=[0, 1, 2]))
    result = calibrate_block_forecast(target, budget=0.6, calib=calib, intervals=(), forecast_orders=(1,),
                                      computes=(2, 3))
    placed = [t for t in result.info["trials"] if "calls" in t]
    assert {len(t["calls"]) for t in placed} == {2, 3} and all(t["calls"][0] == 0 for t in placed)
    # 6 distinct timesteps, k of them computed for every row: the compute fraction is k / 6 exactly.
    assert all(t["compute_fraction"] == pytest.approx(len(t["calls"]) / 6) for t in placed)
    fitting = [t for t in placed if t["compute_fraction"] <= 0.6]
    assert result.info["psnr_db_mean"] == max(t["psnr_db_mean"] for t in fitting)
    assert result.info["calls"] in [t["calls"] for t in fitting] and result.exit_config.policy.full_windows
    with pytest.raises(ValueError, match=r"every value of computes must be below the 6 sampling steps \(something"):
        calibrate_block_forecast(target, budget=0.6, calib=calib, intervals=(), computes=(6,))
    with pytest.raises(ValueError, match="every value of computes must be an integer >= 1"):
        calibrate_block_forecast(target, budget=0.6, calib=calib, computes=(0,))


@pytest.mark.slow
def test_cli_searches_placements_on_a_stock_folder(tmp_path, capsys):
    from ee_diffusion.cli import main
    from ee_diffusion.testing import tiny_pipeline

    folder, out = tmp_path / "dit", tmp_path / "policy.json"
    tiny_pipeline("dit").save_pretrained(folder)
    args = ["calibrate", "--model", str(folder), "--classes", "0", "1", "--images", "4", "--steps", "5",
            "--guidance", "1", "--solver", "dpmpp", "--forecast-orders", "1", "--forecast-intervals", "2",
            "--forecast-windows", "1", "--forecast-computes", "2", "--out", str(out)]
    assert main([*args[:3], "--kind", "block-forecast", "--min-psnr", "0", *args[3:]]) == 0
    saved = json.loads(out.read_text())["calibration"]
    assert [t["calls"] for t in saved["trials"] if "calls" in t][0][0] == 0 and len(saved["trials"]) > 1
    assert isinstance(EarlyExitConfig.from_file(out).policy, BlockForecast)
    out.unlink()
    assert main([*args[:3], "--kind", "schedule", "--budget", "0.5", *args[3:]]) == 2
    assert re.search("--forecast-computes places .* needs --kind block-forecast, got --kind schedule",
                     capsys.readouterr().err)
    assert not out.exists()
