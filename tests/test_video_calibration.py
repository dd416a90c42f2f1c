"""The video pipelines through the tools: `ee-diffusion calibrate` on a saved tiny Wan, Wan 2.2, CogVideoX,
HunyuanVideo or LTX folder at a small `--height/--width/--num-frames`, then the folder reloaded, `enable`d with the
JSON, and called bare: it runs at the calibrated size, steps and exit config (a video is scored as its frames side by
side). The operating-point search, which scores images, refuses a video folder before loading it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ee_diffusion
from ee_diffusion.cli import main
from ee_diffusion.eval.pipeline_sampling import _as_images
from ee_diffusion.pipeline_hooks import find_denoisers
from ee_diffusion.pipelines.stock import load_pipeline
from ee_diffusion.testing.family_pipelines import TINY_CALLS, tiny_family_pipeline


def test_frames_are_laid_side_by_side():
    frames = np.random.default_rng(0).random((2, 3, 4, 5, 3), dtype=np.float32)  # (N, F, H, W, C)
    images = _as_images({"frames": frames})
    assert images.shape == (2, 3, 4, 15)
    torch.testing.assert_close(images[1, :, :, 5:10], torch.from_numpy(frames[1, 1]).permute(2, 0, 1))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wan", "wan2.2", "cogvideox", "hunyuanvideo", "ltx"])
def test_calibrate_a_video_folder_and_run_it_bare(name, tmp_path):
    folder, prompts, saved = tmp_path / "pipe", tmp_path / "prompts.txt", tmp_path / "policy.json"
    tiny_family_pipeline(name).save_pretrained(folder)
    prompts.write_text("a red cat\nthe big dog\n")
    size = {k: TINY_CALLS[name][k] for k in ("height", "width", "num_frames")}
    flags = [f for k, v in size.items() for f in (f"--{k.replace('_', '-')}", str(v))]
    assert main(["calibrate", "--model", str(folder), "--prompts", str(prompts), "--kind", "block-forecast",
                 "--budget", "0.8", "--images", "2", "--steps", "4", "--batch-size", "2", "--forecast-intervals", "2",
                 "3", "--forecast-orders", "1", *flags, "--out", str(saved)]) == 0
    data = json.loads(saved.read_text())["calibration"]
    assert data["calibration_set"]["call_options"] == size
    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    ee_diffusion.enable(pipe, saved)
    try:
        frames = pipe("a blue car", output_type="np").frames  # bare: the calibrated size and steps
        summary = ee_diffusion.summary(pipe)
    finally:
        ee_diffusion.disable(pipe)
    assert np.asarray(frames).shape[:4] == (1, size["num_frames"], size["height"], size["width"])
    # both of Wan 2.2's experts ran the saved policy; the calls of every denoiser add up to the calibration's steps
    runs = summary.denoisers
    assert len(runs) == len(find_denoisers(pipe)) == (2 if name == "wan2.2" else 1)
    calls = sum(run.stats.num_calls for run in runs if run.stats is not None)
    assert calls in (4, 8)  # one call per step, or one per guidance branch
    computed = sum(run.stats.compute_fraction * run.stats.num_calls for run in runs if run.stats is not None)
    assert computed / calls == pytest.approx(data["compute_fraction"]) and data["compute_fraction"] < 1.0


def test_the_operating_point_search_refuses_a_video_folder(tmp_path, capsys):
    folder = tmp_path / "pipe"
    tiny_family_pipeline("wan").save_pretrained(folder)
    assert main(["calibrate", "--model", str(folder), "--kind", "operating-point", "--min-psnr", "20",
                 "--out", str(tmp_path / "point.json")]) == 2
    assert "makes videos" in capsys.readouterr().err and not (tmp_path / "point.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--height", "0"], "--height"), (["--num-frames", "x"], "--num-frames"),
])
def test_bad_sizes_are_refused_naming_the_flag(flags, message, tmp_path, capsys):
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--model", str(folder), "--kind", "block-forecast", "--budget", "0.8", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
