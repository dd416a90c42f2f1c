"""`ee_diffusion.enable(pipe, ...)` / `disable(pipe)` / `summary(pipe)` on tiny stock pipelines: the stock computation
with no policy, everything restored by `disable`, the statistics of the whole call (not the last model call), and
every tool's output loading back into a bare call that runs what was found."""

from __future__ import annotations

import json

import pytest
import torch

import ee_diffusion
from ee_diffusion import EarlyExitConfig, UncertaintyHeads, get_exit_stats
from ee_diffusion.calibration import as_target, run_calibration, save_calibration
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.pipelines.conditioning import Conditioning
from ee_diffusion.results import EXIT_CONFIG_FILE, load_result
from ee_diffusion.schedules import BlockForecast, StaticDepth, UncertaintyThreshold
from ee_diffusion.testing import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

CALLS = {"dit": {"class_labels": [1, 2]}, "pixart": {"prompt": ["a red cat", "the big house"],
                                                      "use_resolution_binning": False, "clean_caption": False},
         "sd3": {"prompt": ["a red cat", "the big house"]}}


def _call(pipe, kind, **kwargs):
    return pipe(**CALLS[kind], generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)


@pytest.fixture(scope="module")
def pipes():
    out = {}
    for kind in CALLS:
        out[kind] = tiny_pipeline(kind)
        out[kind].set_progress_bar_config(disable=True)
    return out


@pytest.mark.parametrize("kind", list(CALLS))
def test_no_policy_is_the_stock_pipeline_and_disable_restores_it(pipes, kind):
    pipe = pipes[kind]
    cls, scheduler = type(pipe), pipe.scheduler
    stock = _call(pipe, kind, num_inference_steps=3).images
    ee_diffusion.enable(pipe)
    try:
        assert type(pipe).__name__ == cls.__name__ and isinstance(pipe, cls) and type(pipe) is not cls
        out = _call(pipe, kind, num_inference_steps=3)
        assert (out.images == stock).all()
        run = ee_diffusion.summary(pipe)
        assert out.exit_summary is run and [d.name for d in run.denoisers] == ["transformer"]
        stats = run.denoisers[0].stats
        # Every model call of the pipeline call (one per step: guidance is one batch here), not the last one only.
        assert stats.num_calls == 3 and get_exit_stats(pipe.transformer).num_calls == 1
        assert stats.depth_fraction == stats.compute_fraction == 1.0
        assert "no policy" in str(run) and "model calls       3" in str(run)
    finally:
        ee_diffusion.disable(pipe)
    assert type(pipe) is cls and pipe.scheduler is scheduler
    assert not ee_diffusion.is_early_exit_applied(pipe.transformer)
    assert (_call(pipe, kind, num_inference_steps=3).images == stock).all()


def test_a_policy_runs_every_row_to_its_depth_and_enable_again_replaces_it(pipes):
    pipe = pipes["dit"]
    ee_diffusion.enable(pipe, StaticDepth(2))
    try:
        _call(pipe, "dit", num_inference_steps=2)
        stats = ee_diffusion.summary(pipe).denoisers[0].stats
        assert [b.tolist() for b in stats.blocks_run] == [[2] * 4] * 2  # 2 images + their guidance partners
        ee_diffusion.enable(pipe, EarlyExitConfig(StaticDepth(3)))
        _call(pipe, "dit", num_inference_steps=2)
        assert ee_diffusion.summary(pipe).denoisers[0].stats.total_blocks == 2 * 4 * 3
    finally:
        ee_diffusion.disable(pipe)


def test_block_forecast_summary_reports_the_compute_fraction_its_calibration_predicted(pipes, tmp_path):
    pipe = pipes["dit"]
    result = run_calibration(as_target(pipe, Conditioning("classes", class_ids=[0, 1])), kind="block-forecast",
                             budget=0.7, num_images=2, steps=6, guidance_scale=2.0, batch_size=4,
                             forecast_intervals=(2, 3), forecast_orders=(1,))
    path = tmp_path / "policy.json"
    save_calibration(result, path)
    predicted = result.info["compute_fraction"]
    assert predicted < 1.0
    ee_diffusion.enable(pipe, path)
    try:
        out = pipe(class_labels=[3, 4, 5], output_type="np")  # a bare call: the calibration's steps and guidance
        run = ee_diffusion.summary(pipe)
        stats = run.denoisers[0].stats
        assert stats.num_calls == 6 and stats.depth_fraction == 1.0
        assert stats.compute_fraction == pytest.approx(predicted)
        assert out.images.shape[0] == 3 and str(path) in str(run)
        per_row = run.denoisers[0].per_row()
        assert len(per_row) == 6 and all(r[2] + r[3] == 6 and r[3] > 0 for r in per_row)
        assert run.denoisers[0].state_nbytes > 0
    finally:
        ee_diffusion.disable(pipe)


def test_a_trainer_folder_loads_back_through_enable_and_from_pretrained(tmp_path):
    # What the trainer writes for a stock pipeline: the pipeline folder, exit_heads/ and exit_config.json.
    stock = tiny_pipeline("dit")
    folder = tmp_path / "pipeline"
    stock.save_pretrained(folder)
    UncertaintyHeads.from_model(stock.transformer).save_pretrained(folder / "exit_heads")
    config = EarlyExitConfig(UncertaintyThreshold(0.001, patience=1))  # random heads pass it at once
    (folder / EXIT_CONFIG_FILE).write_text(config.to_json())
    saved = load_result(folder)
    assert saved.exit_config == config and saved.heads_folder == folder / "exit_heads"
    # Ours: from_pretrained picks both up; the bare call runs them.
    ours = EarlyExitDiTPipeline.from_pretrained(folder)
    ours.set_progress_bar_config(disable=True)
    assert isinstance(ours.exit_heads, UncertaintyHeads) and ours.default_exit_config == config
    out = ours(class_labels=[1], num_inference_steps=2)
    assert out.exit_stats.depth_fraction < 1.0
    # Stock: enable(pipe, folder) applies the config with the folder's heads.
    stock.set_progress_bar_config(disable=True)
    ee_diffusion.enable(stock, folder)
    try:
        stock(class_labels=[1], num_inference_steps=2, output_type="np")
        assert ee_diffusion.summary(stock).denoisers[0].stats.depth_fraction < 1.0
    finally:
        ee_diffusion.disable(stock)


def test_exit_config_from_json_takes_text_or_a_path(tmp_path):
    config = EarlyExitConfig(StaticDepth(3))
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"exit_config": config.to_dict(), "calibration": {}}))
    assert EarlyExitConfig.from_json(config.to_json()) == config
    assert EarlyExitConfig.from_json(str(path)) == EarlyExitConfig.from_json(path) == config
    with pytest.raises(ValueError, match="neither"):
        EarlyExitConfig.from_json(str(tmp_path / "missing.json"))


def test_bad_input_is_refused_with_what_is_allowed(pipes, tmp_path):
    pipe = pipes["dit"]
    with pytest.raises(TypeError, match="diffusers pipeline"):
        ee_diffusion.enable(object())
    with pytest.raises(TypeError, match="got int"):
        ee_diffusion.enable(pipe, 3)
    with pytest.raises(FileNotFoundError, match="no result at"):
        ee_diffusion.enable(pipe, tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no result"):
        ee_diffusion.enable(pipe, tmp_path / "empty")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ValueError, match="not a result"):
        ee_diffusion.enable(pipe, tmp_path / "list.json")
    with pytest.raises(ValueError, match="not enabled"):
        ee_diffusion.disable(pipe)
    with pytest.raises(ValueError, match="not enabled"):
        ee_diffusion.summary(pipe)
    ee_diffusion.apply_early_exit(pipe.transformer)
    try:
        with pytest.raises(ValueError, match="already has early exit applied"):
            ee_diffusion.enable(pipe)
    finally:
        ee_diffusion.remove_early_exit(pipe.transformer)
    assert type(pipe).__name__ == "DiTPipeline" and "_ee_diffusion_enabled" not in vars(pipe)
    ee_diffusion.enable(pipe)
    try:
        with pytest.raises(ValueError, match="has not been called"):
            ee_diffusion.summary(pipe)
    finally:
        ee_diffusion.disable(pipe)
    ours = EarlyExitDiTPipeline(transformer=pipe.transformer, scheduler=pipe.scheduler)
    with pytest.raises(ValueError, match="runs its own exits"):
        ee_diffusion.enable(ours, StaticDepth(2))


def test_a_refused_enable_leaves_the_previous_one_in_place(pipes):
    pipe = pipes["dit"]
    ee_diffusion.enable(pipe, StaticDepth(2))
    try:
        with pytest.raises(ValueError, match="depth"):
            ee_diffusion.enable(pipe, StaticDepth(99))  # the tiny DiT has 4 blocks
        _call(pipe, "dit", num_inference_steps=2)
        assert ee_diffusion.summary(pipe).denoisers[0].stats.total_blocks == 2 * 4 * 2
    finally:
        ee_diffusion.disable(pipe)
