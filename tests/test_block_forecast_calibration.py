"""`BlockForecast` picked for users' step counts: windows placed among a solver's timesteps, the grid calibration
(`calibrate --kind block-forecast`) on stock folders, and BlockForecast candidates in the operating-point search."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

import ee_diffusion
from ee_diffusion import EarlyExitConfig
from ee_diffusion.calibration import CalibrationSet, SearchSpace, as_target, calibrate_block_forecast
from ee_diffusion.calibration.operating_point_search import search_operating_point
from ee_diffusion.cli import main
from ee_diffusion.eval.pipeline_sampling import sample_pipeline
from ee_diffusion.eval.solvers import solver_timesteps
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.pipelines.conditioning import Conditioning
from ee_diffusion.pipelines.stock import load_pipeline
from ee_diffusion.schedules import BlockForecast
from ee_diffusion.testing import tiny_dit, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
CALIB = CalibrationSet(num_images=4, num_inference_steps=4, guidance_scale=2.0, batch_size=4)
CLASSES = Conditioning("classes", class_ids=[0, 1, 2])


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit")
    pipe = tiny_pipeline("dit")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(path)
    return path


def load(path):
    pipe = load_pipeline(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_windows_sit_midway_between_the_runs_distinct_timesteps():
    policy = BlockForecast.for_calls([900.0, 700.0, 500.0, 300.0, 100.0], 2, True, interval=3)
    assert (policy.full_above_t, policy.full_below_t, policy.interval) == (600.0, 200.0, 3)
    heun = BlockForecast.for_calls([900.0, 700.0, 700.0, 500.0, 500.0, 300.0], 2, False)  # a repeat is one timestep
    assert (heun.full_above_t, heun.full_below_t) == (600.0, 0.0)
    assert BlockForecast.for_calls([900.0, 500.0]).full_above_t is None
    with pytest.raises(ValueError, match="first_calls must be below the run's 3 distinct timesteps, got 3"):
        BlockForecast.for_calls([900.0, 600.0, 600.0, 300.0], 3)
    scheduler, probe = DPMSolverMultistepScheduler(), DPMSolverMultistepScheduler()
    probe.set_timesteps(5)
    assert solver_timesteps(scheduler, 5) == [float(t) for t in probe.timesteps]
    assert scheduler.num_inference_steps is None  # the given scheduler is untouched


@pytest.mark.slow
def test_the_cheapest_forecast_that_meets_the_psnr_goal_and_the_most_faithful_within_a_budget(dit_folder):
    target = as_target(load(dit_folder), CLASSES)
    loose = calibrate_block_forecast(target, min_psnr=0.0, calib=CALIB, intervals=(2, 4), forecast_orders=(1,))
    trials = loose.info["trials"]
    # 4 distinct timesteps: every default window leaves something to forecast except (3, last).
    assert len(trials) == 2 * 3 and {(t["first_calls"], t["last_call"]) for t in trials} == {(1, False), (2, False),
                                                                                           (2, True)}
    cheapest = min(t["compute_fraction"] for t in trials)
    assert loose.info["compute_fraction"] == cheapest < 1.0 and loose.info["met"]
    assert isinstance(loose.exit_config.policy, BlockForecast) and loose.exit_config.policy.interval == 4
    # A goal above the cheapest trial's PSNR costs more, and is measured to hold.
    goal = min(t["psnr_db_mean"] for t in trials if t["compute_fraction"] == cheapest) + 1.0
    strict = calibrate_block_forecast(target, min_psnr=goal, calib=CALIB, intervals=(2, 4), forecast_orders=(1,))
    assert strict.info["psnr_db_mean"] >= goal and strict.info["compute_fraction"] > cheapest
    # What the result says is what the policy really does on the calibration set.
    reference = sample_pipeline(target.pipe, range(4), CLASSES, num_inference_steps=4, guidance_scale=2.0,
                                seed=CALIB.seed)
    run = sample_pipeline(target.pipe, range(4), CLASSES, num_inference_steps=4, guidance_scale=2.0, seed=CALIB.seed,
                          exit_config=strict.exit_config)
    mse = ((run.images.double() - reference.images.double()) ** 2).flatten(1).mean(1)
    assert float((10 * torch.log10(1 / mse.clamp(min=1e-10))).clamp(max=100).mean()) == pytest.approx(
        strict.info["psnr_db_mean"], abs=1e-6)
    unreachable = calibrate_block_forecast(target, min_psnr=101.0, calib=CALIB, intervals=(2,), forecast_orders=(1,))
    assert unreachable.exit_config.policy.interval == 1 and not unreachable.info["met"]
    within = calibrate_block_forecast(target, budget=0.7, calib=CALIB, intervals=(2, 4), forecast_orders=(1,))
    fitting = [t for t in within.info["trials"] if t["compute_fraction"] <= 0.7]
    assert within.info["psnr_db_mean"] == max(t["psnr_db_mean"] for t in fitting)
    with pytest.raises(ValueError, match="no BlockForecast of the grid fits the budget 0.01: the cheapest computes"):
        calibrate_block_forecast(target, budget=0.01, calib=CALIB, intervals=(2,), forecast_orders=(1,))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(min_psnr=30.0, budget=0.5), "give exactly one of min_psnr and budget"),
    (dict(budget=1.5), r"budget must be a fraction of compute in \(0, 1\], got 1.5"),
    (dict(min_psnr=30.0, intervals=(1,)), "every value of intervals must be an integer >= 2"),
    (dict(min_psnr=30.0, forecast_orders=(3,)), r"forecast_orders must be among \(0, 1, 2\), got \(3,\)"),
    (dict(min_psnr=30.0, windows=((0, True),)), "every windows entry must be .first timesteps computed >= 1"),
    (dict(min_psnr=30.0, windows=((4, False), (3, True))), "every window of .* computes all 4 timesteps at 4 steps"),
])
def test_bad_grids_are_refused(dit_folder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        calibrate_block_forecast(as_target(load(dit_folder), CLASSES), calib=CALIB, **kwargs)


def test_cli_block_forecast_json_drives_the_hook_api_on_the_stock_pipeline(dit_folder, tmp_path):
    out = tmp_path / "policy.json"
    code = main(["calibrate", "--model", str(dit_folder), "--kind", "block-forecast", "--min-psnr", "25",
                 "--classes", "0", "1", "--images", "4", "--steps", "6", "--guidance", "2", "--solver", "ddim",
                 "--forecast-intervals", "2", "3", "--forecast-orders", "1", "--forecast-windows", "1", "2L",
                 "--verify-thresholds", "0.5", "--out", str(out)])
    assert code == 0
    saved = json.loads(out.read_text())["calibration"]
    assert saved["kind"] == "block-forecast" and len(saved["trials"]) == 8  # 2 x 1 x 2 x (none, 0.5)
    assert {t["verify_threshold"] for t in saved["trials"]} == {None, 0.5}
    assert saved["calibration_set"]["num_inference_steps"] == 6
    config = EarlyExitConfig.from_file(out)
    assert isinstance(config.policy, BlockForecast)
    pipe = load(dit_folder)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # what --solver ddim sampled with
    run = sample_pipeline(pipe, range(4), Conditioning("classes", class_ids=[0, 1]), num_inference_steps=6,
                          guidance_scale=2.0, seed=9001, batch_size=16, exit_config=config)
    fraction = run.block_evals / (run.model_rows * len(pipe.transformer.transformer_blocks))
    assert fraction == pytest.approx(saved["compute_fraction"]) and fraction < 1.0
    # The one way back: the stock folder, enabled with the JSON, runs DDIM at 6 steps and guidance 2 with that
    # forecast on a bare call, and its run summary reports the computed fraction the calibration predicted.
    pipe = load(dit_folder)
    ee_diffusion.enable(pipe, out)
    assert type(pipe.scheduler) is DDIMScheduler
    pipe(class_labels=[0, 1, 1], output_type="np")
    stats = ee_diffusion.summary(pipe).denoisers[0].stats
    assert stats.num_calls == 6 and stats.compute_fraction == pytest.approx(saved["compute_fraction"])
    ee_diffusion.disable(pipe)
    assert type(pipe.scheduler) is not DDIMScheduler


def test_cli_refuses_a_unet_before_sampling(tmp_path, capsys):
    folder = tmp_path / "sd"
    tiny_pipeline("sd").save_pretrained(folder)
    (tmp_path / "p.txt").write_text("a cat\n")
    out = tmp_path / "policy.json"
    assert main(["calibrate", "--model", str(folder), "--kind", "block-forecast", "--min-psnr", "30", "--prompts",
                 str(tmp_path / "p.txt"), "--out", str(out)]) == 2
    assert "block-forecast calibration needs a transformer denoiser" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):  # argparse: a window must be W or WL
        main(["calibrate", "--model", str(folder), "--kind", "block-forecast", "--min-psnr", "30",
              "--forecast-windows", "L2"])


def test_block_forecasts_are_search_candidates_placed_per_step_count():
    space = SearchSpace(solvers=("dpmpp",), steps=(3, 6), static_fractions=(), ase=(), block_forecast_intervals=(2,),
                        block_forecast_windows=((1, False), (2, True)))
    verified = SearchSpace(block_forecast_intervals=(4,), block_forecast_verify=(None, 0.2))
    assert [n for n, _, _ in verified.step_configs(list(range(950, 0, -100)))] == ["bf4_o1_w2_l", "bf4_o1_w2_l_v0.2"]
    with pytest.raises(ValueError, match="every value of block_forecast_verify must be a number > 0.0"):
        SearchSpace(block_forecast_intervals=(4,), block_forecast_verify=(0.0,))
    assert [n for n, _, _ in space.step_configs(solver_timesteps(DPMSolverMultistepScheduler(), 3))] == ["bf2_o1_w1"]
    pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    real = torch.rand(50, 64, generator=torch.Generator().manual_seed(0))
    search = search_operating_point(pipe, space, budget=1.0, feature_net=torch.nn.Flatten(), real_features=real,
                                    reference_steps=6, calib_images=4, holdout_images=4, bootstrap=20)
    forecasts = {c.name: c for c in search.candidates if c.family == "block_forecast"}
    assert set(forecasts) == {"bf2_o1_w1@dpmpp3", "bf2_o1_w1@dpmpp6", "bf2_o1_w2_l@dpmpp6"}
    six = forecasts["bf2_o1_w2_l@dpmpp6"].exit_config.policy
    timesteps = solver_timesteps(DPMSolverMultistepScheduler(), 6)
    assert six.full_above_t == (timesteps[1] + timesteps[2]) / 2 and six.full_below_t == (timesteps[-2] + timesteps[-1]) / 2
    assert 0 < forecasts["bf2_o1_w1@dpmpp6"].block_fraction < 1
    with pytest.raises(ValueError, match="every block_forecast_windows entry must be"):
        SearchSpace(block_forecast_intervals=(2,), block_forecast_windows=((2, "last"),))
    with pytest.raises(ValueError, match="every value of block_forecast_intervals must be an integer >= 2"):
        SearchSpace(block_forecast_intervals=(1,))


def test_a_scheduler_that_cannot_place_the_windows_is_refused_before_sampling():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ee_diffusion.pipelines.conditioning import Prompt

    pipe = tiny_pipeline("sd3", num_layers=2)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)  # timesteps need the image size
    sampled = []
    space = SearchSpace(solvers=None, steps=(2,), static_fractions=(), ase=(), block_forecast_intervals=(2,),
                        block_forecast_windows=((1, False),))
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler cannot place 2 steps without the pipeline"):
        search_operating_point(pipe, space, budget=1.0, feature_net=torch.nn.Flatten(),
                               real_features=torch.rand(30, 3 * 16 * 16), reference_steps=2, calib_images=4,
                               holdout_images=4, conditioning=Conditioning("prompts", prompts=[Prompt("a red cat")]),
                               on_sample=lambda *a: sampled.append(a))
    assert not sampled
