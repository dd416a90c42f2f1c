"""The operating-point search (`calibrate --kind operating-point --min-psnr`) on every image family's tiny stock
pipeline, then the point saved as `--save-to` writes it and loaded with `ee_diffusion.enable(pipe, folder)`: a bare
call runs the point's steps and exit config. The candidates include `CachedTailResidual` thresholds (deciding where
the model allows: AuraFlow, Chroma and HiDream in their joint stacks) and, where the scheduler can place them in
advance, `BlockForecast` windows. Video pipelines are refused by the search (tests/test_video_calibration.py)."""

from __future__ import annotations

import pytest

import ee_diffusion
from ee_diffusion.calibration import SearchSpace, as_target, search_operating_point
from ee_diffusion.calibration.search_command import save_point_files
from ee_diffusion.pipelines.conditioning import Conditioning, Prompt
from ee_diffusion.pipelines.stock import VIDEO_PIPELINES
from ee_diffusion.testing.family_pipelines import FAMILY_PIPELINES, TINY_CALLS, tiny_family_pipeline

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

#: Flow-matching schedulers with dynamic shifting take their shift from the image size at call time, so a
#: BlockForecast window cannot be placed among their timesteps in advance (the search refuses it, naming why).
DYNAMIC_SHIFT = ("cogview4",)
IMAGE_PIPELINES = [n for n in FAMILY_PIPELINES if n not in ("wan", "wan2.2", "cogvideox", "hunyuanvideo", "ltx")]


def test_the_image_list_is_every_family_pipeline_but_the_videos():
    for name in FAMILY_PIPELINES:
        pipe = tiny_family_pipeline(name)
        assert (name in IMAGE_PIPELINES) == (type(pipe).__name__ not in VIDEO_PIPELINES), name


@pytest.mark.parametrize("name", IMAGE_PIPELINES)
def test_the_search_on_a_stock_pipeline_loads_back_into_a_bare_call(name, tmp_path):
    pipe = tiny_family_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    target = as_target(pipe, Conditioning("prompts", prompts=[Prompt("a red cat"), Prompt("the big dog")]))
    space = SearchSpace(solvers=None, steps=(3, 4), static_fractions=(0.5,), ase=(), tail_thresholds=(0.2,),
                        forecast_orders=(1,), block_forecast_intervals=() if name in DYNAMIC_SHIFT else (2,))
    search = search_operating_point(target, space, min_psnr=10.0, reference_steps=5, calib_images=4,
                                    holdout_images=4, bootstrap=20, batch_size=4)
    assert search.confirmed
    names = {c.name for c in search.candidates}
    assert any(n.startswith("tail0.2") for n in names)  # the tail cache ran at the model's own decision block
    assert any(n.startswith("bf2") for n in names) != (name in DYNAMIC_SHIFT)
    point = search.operating_point
    save_point_files(search, tmp_path / "point")
    ee_diffusion.enable(pipe, tmp_path / "point")
    try:
        # no steps, guidance or exit config: the point's (the tiny size, which Sana's call does not default to)
        pipe(["a blue car"], output_type="np", **TINY_CALLS[name])
        runs = ee_diffusion.summary(pipe).denoisers
    finally:
        ee_diffusion.disable(pipe)
    assert runs[0].policy == repr(point.exit_config.policy if point.exit_config is not None else None)
    calls = runs[0].stats.num_calls
    assert calls in (point.num_inference_steps, 2 * point.num_inference_steps)  # one call per step or per branch
