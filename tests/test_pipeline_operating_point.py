"""Operating points in a pipeline folder: what a call runs when it gives no steps, guidance or exit config."""

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from ee_diffusion import EarlyExitConfig, is_early_exit_applied
from ee_diffusion.operating_point import OperatingPoint
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.schedules import StaticDepth
from ee_diffusion.testing import tiny_dit

pytestmark = pytest.mark.usefixtures("one_thread")


def _point(**kwargs):
    values = dict(scheduler="DPMSolverMultistepScheduler", num_inference_steps=4, guidance_scale=1.0,
                  exit_config=EarlyExitConfig(StaticDepth(3)),
                  exit_configs_by_steps={4: EarlyExitConfig(StaticDepth(3)), 6: None, 8: EarlyExitConfig(StaticDepth(2))})
    values.update(kwargs)
    return OperatingPoint(**values)


def _pipe(point=None, scheduler=None):
    torch.manual_seed(0)
    pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=4),
                                scheduler=scheduler or DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"),
                                operating_point=point)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, **kwargs):
    return pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs)


def test_a_call_without_arguments_runs_the_operating_point():
    pipe = _pipe(_point(guidance_scale=1.0))
    out = _call(pipe)
    assert out.operating_point["source"] == "default operating point"
    assert out.operating_point["num_inference_steps"] == 4 and out.operating_point["guidance_scale"] == 1.0
    assert out.exit_stats.num_calls == 4 and out.exit_stats.depth_fraction == 0.75
    # The same as giving all three explicitly.
    explicit = _call(pipe, num_inference_steps=4, guidance_scale=1.0, exit_config=EarlyExitConfig(StaticDepth(3)))
    torch.testing.assert_close(out.images, explicit.images, rtol=0, atol=0)
    assert explicit.operating_point["source"] == "exit_config given"


@pytest.mark.parametrize("steps, depth, measured", [(4, 3, 4), (5, 4, 6), (7, 2, 8), (6, 4, 6), (30, 2, 8), (1, 3, 4)])
def test_a_call_with_steps_only_takes_the_nearest_measured_step_count(steps, depth, measured):
    out = _call(_pipe(_point()), num_inference_steps=steps)
    assert out.exit_stats.num_calls == steps
    assert out.exit_stats.depth_fraction == depth / 4
    assert f"nearest measured step count {measured}" in out.operating_point["source"]


def test_another_scheduler_gets_no_operating_point():
    pipe = _pipe(_point(reference_steps=5), scheduler=DDIMScheduler())
    out = _call(pipe)
    assert out.exit_stats.num_calls == 5 and out.exit_stats.depth_fraction == 1.0
    assert "measured with DPMSolverMultistepScheduler, this call uses DDIMScheduler" in out.operating_point["source"]


def test_the_operating_point_round_trips_through_a_folder(tmp_path):
    pipe = _pipe(_point(measured_in="docs/x.json"))
    pipe.save_pretrained(tmp_path)
    loaded = EarlyExitDiTPipeline.from_pretrained(tmp_path)
    assert loaded.operating_point == pipe.operating_point
    assert loaded.operating_point.measured_in == "docs/x.json"
    assert loaded.default_exit_config.policy == StaticDepth(3)
    loaded.set_default_exit_config(EarlyExitConfig(StaticDepth(1)))
    assert loaded.operating_point.exit_config.policy == StaticDepth(1)
    assert loaded.operating_point.exit_configs_by_steps[4].policy == StaticDepth(1)


def test_without_a_policy_the_stock_denoiser_runs_unhooked():
    pipe = _pipe(scheduler=DDIMScheduler())
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, a: seen.append(is_early_exit_applied(m)))
    full = _call(pipe, num_inference_steps=3, guidance_scale=4.0)
    assert seen == [False] * 3 and not is_early_exit_applied(pipe.transformer)
    assert full.exit_stats.num_calls == 3 and full.exit_stats.depth_fraction == 1.0
    assert [b.tolist() for b in full.exit_stats.blocks_run] == [[4, 4, 4, 4]] * 3  # guided: 2 rows per image
    assert full.operating_point["source"] == "pipeline default exit config (no operating point)"
    # Exactly what the hooked model gives with exits off.
    seen.clear()
    hooked = _call(pipe, num_inference_steps=3, guidance_scale=4.0, exit_config=EarlyExitConfig(StaticDepth(4)))
    assert seen == [True] * 3
    torch.testing.assert_close(full.images, hooked.images, rtol=0, atol=0)


@pytest.mark.parametrize("data, message", [
    ({"scheduler": "", "num_inference_steps": 4, "guidance_scale": 1.0}, "'' is not a diffusers scheduler class"),
    ({"scheduler": "NoSuchScheduler", "num_inference_steps": 4, "guidance_scale": 1.0},
     "'NoSuchScheduler' is not a diffusers scheduler class"),
    ({"scheduler": "DDIMScheduler", "num_inference_steps": 0, "guidance_scale": 1.0}, "num_inference_steps must be an integer >= 1"),
    ({"scheduler": "DDIMScheduler", "num_inference_steps": 4, "guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
    ({"scheduler": "DDIMScheduler", "num_inference_steps": 4, "guidance_scale": 1.0, "steps": 3}, r"unknown operating point fields \['steps'\]"),
    ({"scheduler": "DDIMScheduler", "num_inference_steps": 4, "guidance_scale": 1.0, "exit_configs_by_steps": {"x": None}},
     "exit_configs_by_steps keys must be step counts, got 'x'"),
])
def test_bad_operating_points_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        OperatingPoint.from_dict(data)
    with pytest.raises(ValueError, match=message):
        _pipe(data)
