"""Calibration on stock pipeline folders (DiTPipeline, PixArtAlphaPipeline, StableDiffusion3Pipeline) with tiny
complete components: the CLI writes an exit-config JSON that `EarlyExitConfig` loads and the hook API applies to
the stock denoiser; PSNR goals hold on the calibration set; schedules hold across step counts."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("transformers")

from ee_diffusion import EarlyExitConfig, UncertaintyHeads, early_exit  # noqa: E402
from ee_diffusion.calibration import (  # noqa: E402
    CalibrationSet,
    as_target,
    calibrate_schedule,
    calibrate_tail_cache,
    calibrate_thresholds,
)
from ee_diffusion.calibration.common import psnr_db  # noqa: E402
from ee_diffusion.cli import main  # noqa: E402
from ee_diffusion.eval.pipeline_sampling import sample_pipeline  # noqa: E402
from ee_diffusion.pipelines.conditioning import Conditioning, Prompt  # noqa: E402
from ee_diffusion.pipelines.stock import load_pipeline  # noqa: E402
from ee_diffusion.schedules import CachedTailResidual, TimestepSchedule  # noqa: E402
from ee_diffusion.testing import tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = Conditioning("prompts", prompts=[Prompt("a red cat"), Prompt("a big blue car"), Prompt("the tree")])
CALIB = CalibrationSet(num_images=4, num_inference_steps=4, guidance_scale=2.0, batch_size=4, num_buckets=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    def make(kind):
        path = tmp_path_factory.mktemp(kind)
        tiny_pipeline(kind).save_pretrained(path)
        return path
    return {kind: make(kind) for kind in ("dit", "pixart", "sd3", "sd")}


def load(path):
    pipe = load_pipeline(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pixart", "sd3"])
def test_cli_tail_cache_for_a_psnr_goal_applies_to_the_stock_denoiser(kind, folder, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na big blue car\n")
    out = tmp_path / "policy.json"
    code = main(["calibrate", "--model", str(folder[kind]), "--kind", "tail-cache", "--min-psnr", "30",
                 "--prompts", str(prompts), "--images", "4", "--steps", "4", "--guidance", "2", "--out", str(out)])
    assert code == 0
    saved = json.loads(out.read_text())["calibration"]
    assert saved["psnr_db_mean"] >= 30 and saved["conditioning"]["kind"] == "prompts"
    config = EarlyExitConfig.from_file(out)
    assert isinstance(config.policy, CachedTailResidual)
    # The JSON drives the hook API on a freshly loaded stock pipeline and reproduces the calibration's fraction.
    pipe = load(folder[kind])
    cond = Conditioning.from_prompt_file(prompts)
    with early_exit(pipe.transformer, config) as stats:
        sample_pipeline(pipe, range(4), cond, num_inference_steps=4, guidance_scale=2.0, seed=9001, batch_size=16,
                        exit_config=None)
    assert stats.depth_fraction == pytest.approx(saved["block_fraction"])


@pytest.mark.slow
def test_tail_cache_bisection_trades_compute_for_fidelity(folder):
    target = as_target(load(folder["sd3"]), PROMPTS)
    loose = calibrate_tail_cache(target, min_psnr=0.0, calib=CALIB, forecast_orders=(0,))  # met at the top
    assert loose.info["threshold"] == 1.0 and len(loose.info["trials"]) == 1
    goal = loose.info["psnr_db_mean"] + 3.0  # not met there: bisection towards threshold 0 (the full model)
    strict = calibrate_tail_cache(target, min_psnr=goal, calib=CALIB, forecast_orders=(0,))
    assert strict.info["psnr_db_mean"] >= goal and strict.info["threshold"] < 1.0
    assert strict.info["block_fraction"] >= loose.info["block_fraction"]
    assert len(strict.info["trials"]) == 1 + 7 + (strict.info["threshold"] == 0.0)
    budget = calibrate_tail_cache(target, budget=strict.info["block_fraction"], calib=CALIB, forecast_orders=(0,))
    assert budget.info["block_fraction"] <= strict.info["block_fraction"] + 1e-9


@pytest.mark.slow
def test_tail_cache_picks_the_cheapest_forecast_order_that_meets_the_goal(folder):
    target = as_target(load(folder["pixart"]), PROMPTS)
    loose = calibrate_tail_cache(target, min_psnr=0.0, calib=CALIB, forecast_orders=(0,))
    result = calibrate_tail_cache(target, min_psnr=loose.info["psnr_db_mean"] + 2.0, calib=CALIB)
    # Each order's own search ends at a trial that meets the goal; the result is the cheapest of those.
    finals = {}
    for trial in result.info["trials"]:
        if trial["psnr_db_mean"] >= result.info["min_psnr"]:
            best = finals.get(trial["forecast_order"])
            if best is None or trial["threshold"] > best["threshold"]:
                finals[trial["forecast_order"]] = trial
    assert set(finals) == {0, 1}
    assert result.info["block_fraction"] == min(t["block_fraction"] for t in finals.values())
    policy = result.exit_config.policy
    assert (policy.forecast_order, policy.threshold) == (result.info["forecast_order"], result.info["threshold"])


@pytest.mark.slow
def test_schedule_for_a_psnr_goal_is_measured_to_meet_it(folder):
    target = as_target(load(folder["pixart"]), PROMPTS)
    cheapest = calibrate_schedule(target, budget=0.25, calib=CALIB)  # one block everywhere
    floor = float(psnr_db(*[sample_pipeline(target.pipe, range(4), PROMPTS, num_inference_steps=4, guidance_scale=2.0,
                                            seed=CALIB.seed, exit_config=c).images
                            for c in (cheapest.exit_config, None)]).mean())
    goal = floor + 4.0  # one block everywhere misses it: the schedule must spend more
    result = calibrate_schedule(target, min_psnr=goal, calib=CALIB)
    last = result.info["measured"][-1]
    assert isinstance(result.exit_config.policy, TimestepSchedule)
    # Either a measured schedule met the goal, or nothing cheaper did and the result is the full model.
    full = all(k == 4 for k in result.exit_config.policy.depths)
    assert full or (last["psnr_db_mean"] >= goal and last["depths"] == result.exit_config.policy.depths)
    assert result.info["block_fraction"] > 0.25
    reference = sample_pipeline(target.pipe, range(4), PROMPTS, num_inference_steps=4, guidance_scale=2.0,
                                seed=CALIB.seed)
    run = sample_pipeline(target.pipe, range(4), PROMPTS, num_inference_steps=4, guidance_scale=2.0,
                          seed=CALIB.seed, exit_config=result.exit_config)
    assert float(psnr_db(run.images, reference.images).mean()) == pytest.approx(last["psnr_db_mean"], abs=1e-6)


@pytest.mark.slow
def test_schedule_budget_holds_at_other_step_counts(folder):
    """Bucket boundaries are scheduler timesteps, not step indices: a schedule calibrated at 4 steps keeps about
    its block fraction at 8 (SD3's flow-matching sigmas)."""
    target = as_target(load(folder["sd3"]), PROMPTS)
    result = calibrate_schedule(target, budget=0.5, calib=CALIB)
    assert result.info["block_fraction"] <= 0.5
    with early_exit(target.pipe.transformer, result.exit_config) as stats:
        sample_pipeline(target.pipe, range(2), PROMPTS, num_inference_steps=8, guidance_scale=2.0)
    assert abs(stats.depth_fraction - result.info["block_fraction"]) <= 0.15


def test_thresholds_with_heads_on_a_stock_dit(folder):
    pipe = load(folder["dit"])
    torch.manual_seed(0)
    heads = UncertaintyHeads.from_model(pipe.transformer)
    with torch.no_grad():  # spread the random heads' certainties so that thresholds separate rows
        for p in heads.parameters():
            p.mul_(20)
    target = as_target(pipe, Conditioning.from_classes(["goldfish", 0, 2], pipe), heads=heads)
    result = calibrate_thresholds(target, budget=0.7, calib=CALIB)
    assert result.info["block_fraction"] <= 0.7


def test_bad_calibration_inputs_are_refused_before_sampling(folder, tmp_path, capsys):
    args = ["calibrate", "--kind", "tail-cache", "--min-psnr", "30", "--images", "2", "--steps", "2",
            "--out", str(tmp_path / "policy.json")]
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "model_index.json").write_text(json.dumps({"_class_name": "StableAudioPipeline"}))
    for argv, message in [
        ([*args, "--model", str(folder["pixart"])], "conditioned on prompts: give the calibration a prompt file"),
        ([*args, "--model", str(folder["dit"]), "--prompts", str(prompts)],
         "conditioned on classes, got a prompts conditioning"),
        ([*args, "--model", str(folder["sd"]), "--prompts", str(prompts)],
         "tail-cache calibration needs a transformer denoiser"),
        (["calibrate", "--model", str(folder["sd"]), "--prompts", str(prompts), "--budget", "0.5"],
         "needs trained UNetExitBridges"),
        (["calibrate", "--model", str(folder["dit"]), "--classes", "1", "--kind", "thresholds", "--budget", "0.5"],
         "thresholds calibration needs exit heads"),
        ([*args, "--model", str(tmp_path / "flux")], "supported pipeline classes"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "ee-diffusion calibrate: error: " in err and re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "policy.json").exists()
