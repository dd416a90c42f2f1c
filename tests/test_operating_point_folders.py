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

import ee_diffusion  # noqa: E402
from ee_diffusion import EarlyExitConfig, apply_early_exit, record_exit_stats, remove_early_exit  # noqa: E402
from ee_diffusion.results import EXIT_CONFIG_FILE, OPERATING_POINT_FILE  # noqa: E402
from ee_diffusion.cli import main  # noqa: E402
from ee_diffusion.eval.solvers import scheduler_of_point  # noqa: E402
from ee_diffusion.operating_point import OperatingPoint  # noqa: E402
from ee_diffusion.pipelines.stock import denoiser_of, load_pipeline  # noqa: E402
from ee_diffusion.testing import tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CONDITIONING = {"dit": ["--classes", "0", "1", "2"], "pixart": ["--prompts", "PROMPTS"], "sd3": ["--prompts", "PROMPTS"]}
#: U-Net folders: a stock U-Net exits only through UNetExitBridges, which a stock folder does not hold, so the
#: search there is over solvers and steps alone.
UNET_CONDITIONING = {"sd": ["--prompts", "PROMPTS"], "ddpm": []}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder_search")
    out = {"inception": random_inception_weights(root / "inception.safetensors"), "real": write_images(root / "real", 8),
           "prompts": root / "prompts.txt"}
    out["prompts"].write_text("a red cat\nthe big house\n")
    for kind in [*CONDITIONING, *UNET_CONDITIONING]:
        tiny_pipeline(kind).save_pretrained(root / kind)
        out[kind] = root / kind
    return out


def _args(files, kind, out, *extra):
    conditioning = [str(files["prompts"]) if a == "PROMPTS" else a
                    for a in {**CONDITIONING, **UNET_CONDITIONING}[kind]]
    return ["calibrate", "--model", str(files[kind]), "--kind", "operating-point", "--budget", "0.7",
            "--real", str(files["real"]), "--features", "inception", "--inception-weights", str(files["inception"]),
            "--inception-resolution", "75", "--images", "4", "--holdout-images", "4", "--search-steps", "2", "3",
            "--reference-steps", "3", "--static-fractions", "0.5", "--tail-thresholds", "0.2",
            "--forecast-orders", "0", "--batch-size", "4", "--out", str(out / "search.json"), *conditioning, *extra]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CONDITIONING))
def test_a_stock_folder_goes_through_search_save_reload_and_a_bare_call(files, kind, tmp_path):
    saved = tmp_path / "point"
    assert main(_args(files, kind, tmp_path, "--save-to", str(saved))) == 0
    data = json.loads((tmp_path / "search.json").read_text())
    assert data["decision"]["feature_nets"] == ["inception-v3 (pool3) at 75x75"]
    # No --reference: the folder is measured against what it ships, its own scheduler.
    assert data["reference"]["solver"] == "own" and data["reference"]["scheduler"] == type(
        load_pipeline(str(files[kind])).scheduler).__name__
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
    # The one way back: the stock folder, reloaded, runs the point with `enable(pipe, saved)` and a bare call -
    # the same images and blocks as the point applied by hand (its scheduler, exit config, steps and guidance).
    call = {"class_labels": [0]} if kind == "dit" else {"prompt": "a red cat"}
    if kind == "pixart":  # the tiny model's size is not one of PixArt's aspect-ratio bins
        call.update(use_resolution_binning=False, clean_caption=False)
    pipe = load_pipeline(str(files[kind]))
    pipe.set_progress_bar_config(disable=True)
    ee_diffusion.enable(pipe, saved)
    out = pipe(**call, generator=torch.Generator().manual_seed(0), output_type="np")
    stats = ee_diffusion.summary(pipe).denoisers[0].stats
    ee_diffusion.disable(pipe)
    pipe.scheduler = scheduler_of_point(point, pipe.scheduler)
    denoiser = denoiser_of(pipe)
    apply_early_exit(denoiser, config)
    with record_exit_stats(denoiser) as by_hand:
        expected = pipe(**call, num_inference_steps=point.num_inference_steps, guidance_scale=point.guidance_scale,
                        generator=torch.Generator().manual_seed(0), output_type="np")
    remove_early_exit(denoiser)
    assert (out.images == expected.images).all() and stats.num_calls == by_hand.num_calls >= point.num_inference_steps
    assert [b.tolist() for b in stats.blocks_run] == [b.tolist() for b in by_hand.blocks_run]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(UNET_CONDITIONING))
def test_a_stock_unet_folder_searches_solvers_and_steps(files, kind, tmp_path):
    saved = tmp_path / "point"
    assert main(_args(files, kind, tmp_path, "--save-to", str(saved))) == 0
    data = json.loads((tmp_path / "search.json").read_text())
    assert {c["family"] for c in data["candidates"]} == {"full_depth"}
    assert {c["solver"] for c in data["candidates"]} == {"ddim", "dpmpp"}
    point = OperatingPoint.from_dict(json.loads((saved / OPERATING_POINT_FILE).read_text()))
    assert point.exit_config is None and point == OperatingPoint.from_dict(data["operating_point"])
    # The reloaded folder runs the point with `enable(pipe, saved)`: its scheduler rebuilt from the saved class and
    # options, its steps the bare call's.
    pipe = load_pipeline(str(files[kind]))
    pipe.set_progress_bar_config(disable=True)
    ee_diffusion.enable(pipe, saved)
    assert type(pipe.scheduler).__name__ == point.scheduler
    call = {"prompt": "a red cat"} if kind == "sd" else {}
    out = pipe(**call, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape[0] == 1
    assert ee_diffusion.summary(pipe).denoisers[0].stats.num_calls == point.num_inference_steps
    ee_diffusion.disable(pipe)


def _shards(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.safetensors")}


def _decisions(data):
    """What a search decided and measured, without what depends on the run (command, wall-clock)."""
    return {k: data[k] for k in ("goal", "reference", "candidates", "tries", "chosen", "vs_frontier", "operating_point")}


@pytest.mark.slow
def test_a_rerun_resumes_from_the_shard_cache_and_samples_nothing(files, tmp_path):
    assert main(_args(files, "dit", tmp_path, "--keep-samples")) == 0
    cache = tmp_path / "search-samples"  # the default: OUT's name with -samples, beside it
    first, shards = json.loads((tmp_path / "search.json").read_text()), _shards(cache)
    assert len(shards) > 10
    assert main(_args(files, "dit", tmp_path, "--keep-samples")) == 0
    assert _shards(cache) == shards  # every shard and feature file read back, none written again
    assert _decisions(json.loads((tmp_path / "search.json").read_text())) == _decisions(first)


@pytest.mark.slow
def test_two_processes_make_the_pick_of_one(files, tmp_path):
    """`accelerate launch` with 2 processes: each samples its own shards, both take the same decisions, the main
    one writes the same search JSON as a single process does."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_user_bench import _free_port

    two = _args(files, "dit", tmp_path / "two")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "ee_diffusion.cli", *two]
    (tmp_path / "two").mkdir()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={
        **os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("search saved to") == 1  # the main process reports, the other is silent
    (tmp_path / "one").mkdir()
    assert main(_args(files, "dit", tmp_path / "one")) == 0
    one = json.loads((tmp_path / "one" / "search.json").read_text())
    assert _decisions(json.loads((tmp_path / "two" / "search.json").read_text())) == _decisions(one)
    assert one["confirmed"] and len(one["candidates"]) > 4


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


def _readme_commands() -> list[list[str]]:
    """The `ee-diffusion calibrate` commands of docs/calibration.md's "On your own pipeline folder" block (the README
    links it), as argument lists."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "calibration.md").read_text()
    block = text.split("### On your own pipeline folder", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [c for c in block.replace("\\\n", " ").splitlines() if c.startswith("ee-diffusion calibrate")]
    return [shlex.split(c)[1:] for c in commands]


@pytest.mark.slow
def test_the_readme_commands_run_on_stand_ins(files, tmp_path):
    """docs/calibration.md's DiT-XL/2 and PixArt commands (the README links them), as written, on tiny stand-in
    folders: paths point at the stand-ins and the sizes shrink (steps, images, classes, device); every other flag is
    the page's."""
    from test_user_bench import tiny_clip_folder

    commands = _readme_commands()
    assert len(commands) == 2 and all(c[c.index("--kind") + 1] == "operating-point" for c in commands)
    paths = {"./DiT-XL-2-256": files["dit"], "./PixArt-XL-2-512x512": files["pixart"], "./imagenet/val": files["real"],
             "./pt_inception-2015-12-05-6726825d.pth": files["inception"], "prompts.txt": files["prompts"],
             "./clip-vit-base-patch32": tiny_clip_folder(tmp_path / "clip")}
    small = {"--images": ["4"], "--holdout-images": ["4"], "--search-steps": ["2", "3"], "--classes": ["0", "1"],
             "--device": ["cpu"], "--dtype": ["float32"]}
    for args in commands:
        out = []
        i = 0
        while i < len(args):
            flag = args[i]
            values = []
            while i + 1 < len(args) and not args[i + 1].startswith("--"):
                values.append(args[i + 1])
                i += 1
            i += 1
            if flag == "--reference":  # the page's reference solver, at a stand-in's step count
                values = [values[0].split(":")[0] + ":3"]
            elif flag in ("--out", "--save-to"):
                values = [str(tmp_path / values[0])]
            else:
                values = small.get(flag, [str(paths.get(v, v)) for v in values])
            out += [flag, *values]
        out += ["--inception-resolution", "75", "--batch-size", "4"]
        assert main(out) == 0, out
        data = json.loads((tmp_path / out[out.index("--out") + 1]).read_text())
        goal = "tolerance" if "--tolerance" in out else "min_psnr"
        assert goal in data["goal"] and (tmp_path / out[out.index("--save-to") + 1] / OPERATING_POINT_FILE).is_file()
        if goal == "tolerance":  # Inception and CLIP: the decision names both networks
            assert len(data["decision"]["feature_nets"]) == 2
        else:
            assert {c["solver"] for c in data["candidates"]} == {"dpmpp", "unipc"}


@pytest.mark.slow
def test_an_unsupported_folder_and_a_reference_its_scheduler_cannot_run_are_refused(files, tmp_path, capsys):
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "StableAudioPipeline"}))
    args = _args(files, "dit", tmp_path)
    args[args.index("--model") + 1] = str(flux)
    assert main(args) == 2
    assert "StableAudioPipeline" in capsys.readouterr().err
    # DDIM has no flow-matching version: refused on SD3 before any sampling.
    args = _args(files, "sd3", tmp_path, "--reference", "ddim:3")
    del args[args.index("--reference-steps"):args.index("--reference-steps") + 2]
    assert main(args) == 2
    assert "['dpmpp', 'unipc']" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flux"]  # no search JSON, no shard folder


@pytest.mark.slow
def test_a_stock_folder_times_its_point_against_its_own_scheduler(files, tmp_path):
    assert main(_args(files, "dit", tmp_path, "--time-batch", "2", "--time-repeats", "1")) == 0
    timing = json.loads((tmp_path / "search.json").read_text())["timing"]
    assert timing["batch"] == 2 and timing["points"]["reference"]["solver"] == "own"
    assert timing["points"]["searched"]["speedup"] > 0 and len(timing["points"]["searched"]["seconds"]) == 1
