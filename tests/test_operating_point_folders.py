"""`ee-diffusion calibrate --kind operating-point --model FOLDER`: the search on users' stock pipeline folders (tiny
random DiT, PixArt-alpha and SD3 stand-ins), scored with a random-weight Inception standing in for the user's weights
file against a real image folder, end to end: search -> --save-to -> reload -> a bare call runs the found point.
Bad input is refused before any sampling, with nothing written."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from _standard_features import random_inception_weights  # noqa: E402
from test_user_bench import write_images  # noqa: E402

from ee_diffusion import EarlyExitConfig, apply_early_exit, get_exit_stats, remove_early_exit  # noqa: E402
from ee_diffusion.calibration.search_command import EXIT_CONFIG_FILE, OPERATING_POINT_FILE  # noqa: E402
from ee_diffusion.cli import main  # noqa: E402
from ee_diffusion.operating_point import OperatingPoint  # noqa: E402
from ee_diffusion.pipelines.stock import denoiser_of, load_pipeline  # noqa: E402
from ee_diffusion.testing import tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CONDITIONING = {"dit": ["--classes", "0", "1", "2"], "pixart": ["--prompts", "PROMPTS"], "sd3": ["--prompts", "PROMPTS"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder_search")
    out = {"inception": random_inception_weights(root / "inception.safetensors"), "real": write_images(root / "real", 8),
           "prompts": root / "prompts.txt"}
    out["prompts"].write_text("a red cat\nthe big house\n")
    for kind in CONDITIONING:
        tiny_pipeline(kind).save_pretrained(root / kind)
        out[kind] = root / kind
    return out


def _args(files, kind, out, *extra):
    conditioning = [str(files["prompts"]) if a == "PROMPTS" else a for a in CONDITIONING[kind]]
    return ["calibrate", "--model", str(files[kind]), "--kind", "operating-point", "--budget", "0.7",
            "--real", str(files["real"]), "--features", "inception", "--inception-weights", str(files["inception"]),
            "--inception-resolution", "75", "--images", "4", "--holdout-images", "4", "--search-steps", "2", "3",
            "--reference-steps", "3", "--static-fractions", "0.5", "--tail-thresholds", "0.2",
            "--forecast-orders", "0", "--batch-size", "4", "--out", str(out / "search.json"), *conditioning, *extra]


@pytest.mark.parametrize("kind", list(CONDITIONING))
def test_a_stock_folder_goes_through_search_save_reload_and_a_bare_call(files, kind, tmp_path):
    saved = tmp_path / "point"
    assert main(_args(files, kind, tmp_path, "--save-to", str(saved))) == 0
    data = json.loads((tmp_path / "search.json").read_text())
    assert data["decision"]["feature_nets"] == ["inception-v3 (pool3) at 75x75"]
    assert data["confirmed"] and data["tries"][-1]["block_fraction"] <= 0.7
    flow = kind == "sd3"  # flow matching: the folder's own scheduler, not DDIM / DPM-Solver++
    assert {c["solver"] for c in data["candidates"]} == ({"own"} if flow else {"ddim", "dpmpp"})
    families = {c["family"] for c in data["candidates"]}
    assert {"full_depth", "static_depth", "ase", "tail_cache"} <= families
    # What --save-to wrote for a stock folder: the exit config for the hook API, and the whole point.
    point = OperatingPoint.from_dict(json.loads((saved / OPERATING_POINT_FILE).read_text()))
    assert point == OperatingPoint.from_dict(data["operating_point"])
    config = EarlyExitConfig.from_json((saved / EXIT_CONFIG_FILE).read_text())
    assert config == (point.exit_config or EarlyExitConfig())
    # Reload the stock folder, hook the point's exit config on, and call it with the point's steps.
    pipe = load_pipeline(str(files[kind]))
    pipe.set_progress_bar_config(disable=True)
    denoiser = denoiser_of(pipe)
    apply_early_exit(denoiser, config)
    call = {"class_labels": [0]} if kind == "dit" else {"prompt": "a red cat"}
    if kind == "pixart":  # the tiny model's size is not one of PixArt's aspect-ratio bins
        call.update(use_resolution_binning=False, clean_caption=False)
    out = pipe(**call, num_inference_steps=point.num_inference_steps, generator=torch.Generator().manual_seed(0),
               output_type="np")
    assert out.images.shape[0] == 1 and get_exit_stats(denoiser) is not None
    remove_early_exit(denoiser)


@pytest.mark.parametrize("extra, match", [
    (["--real", "MISSING"], r"real image folder .* does not exist"),
    (["--features", "digits"], r"takes 1-channel 8x8 images"),
    (["--inception-weights", "WRONG"], r"inception|Inception"),
    (["--tolerance", "0.1"], r"not allowed with argument --budget|one goal"),
])
def test_bad_input_is_refused_before_sampling_with_nothing_written(files, tmp_path, capsys, extra, match):
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3, 3)}, str(wrong))
    args = _args(files, "dit", tmp_path)
    for flag, value in zip(extra[::2], extra[1::2]):
        value = {"MISSING": str(tmp_path / "missing"), "WRONG": str(wrong)}.get(value, value)
        if flag in args and flag != "--tolerance":
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    try:
        code = main(args)
    except SystemExit as error:  # argparse refuses conflicting goals itself
        code = error.code
    assert code == 2
    assert any(__import__("re").search(match, text) for text in capsys.readouterr())
    assert list(tmp_path.iterdir()) == [wrong]  # no search JSON, no folder


def test_a_folder_without_real_images_is_refused(files, tmp_path, capsys):
    args = _args(files, "dit", tmp_path)
    i = args.index("--real")
    del args[i:i + 2]
    assert main(args) == 2
    assert "needs real images, --real DIR or --real-stats" in capsys.readouterr().err
    assert not (tmp_path / "search.json").exists()
