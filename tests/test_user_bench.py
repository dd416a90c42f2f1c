"""`ee-diffusion bench --pipeline`: the user's model, data and feature networks, end to end on tiny random pipelines
of every supported class, with a random-weight Inception-shaped network standing in for the user's weights file.
Resuming after an interruption, reusing shards, one vs two processes, and every bad input before sampling."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from _standard_features import random_inception_weights  # noqa: E402

from ee_diffusion import EarlyExitConfig  # noqa: E402
from ee_diffusion.cli import main  # noqa: E402
from ee_diffusion.eval.bench_prepare import prepare  # noqa: E402
from ee_diffusion.eval.paired import FrechetReference, moments  # noqa: E402
from ee_diffusion.eval.pipeline_bench import BenchConfig, run  # noqa: E402
from ee_diffusion.eval.real_images import ImageFolder, RealStats  # noqa: E402
from ee_diffusion.eval.runner import Runner  # noqa: E402
from ee_diffusion.eval.standard_features import ClipImageFeatures, clip_scores, load_inception  # noqa: E402
from ee_diffusion.schedules import TimestepSchedule  # noqa: E402
from ee_diffusion.testing import TINY_PIPELINES, tiny_dit, tiny_pipeline, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--threads", "1", "--inception-resolution", "75", "--num-images", "6", "--steps", "3", "--batch-size", "3",
        "--shard-size", "3", "--bootstrap", "20", "--timing-repeats", "1"]


def write_images(folder: Path, count: int, size=(20, 24), mode="RGB", seed=0, start=0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    for i in range(start, start + count):
        array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(array[..., 0] if channels == 1 else array, mode).save(folder / f"{i:03d}.png")
    return folder


def tiny_clip_folder(folder: Path) -> Path:
    """A tiny full CLIPModel (16x16 images, patches of 8) and its tokenizer, as a local folder."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 20, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 8, "pad_token_id": 0, "bos_token_id": 3,
                     "eos_token_id": 2},
        vision_config={"image_size": 16, "patch_size": 8, "hidden_size": 8, "intermediate_size": 16,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=4)
    CLIPModel(config).save_pretrained(folder)
    tiny_tokenizer(clip=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Pipeline folders of every tiny class (and ours), the stand-in Inception weights, a CLIP folder, real images
    and a prompt file."""
    root = tmp_path_factory.mktemp("user_bench")
    out = {"inception": random_inception_weights(root / "inception.safetensors"),
           "clip": tiny_clip_folder(root / "clip"), "real": write_images(root / "real", 12),
           "gray": write_images(root / "gray", 12, size=(8, 8), mode="L"),
           "prompts": root / "prompts.txt"}
    out["prompts"].write_text("a red cat\nthe big house\na photo of a dog\n")
    # An exit config as a bare JSON file and in the form `ee-diffusion calibrate` writes.
    policy = EarlyExitConfig(TimestepSchedule(boundaries=[500], depths=[4, 2]))
    (root / "bare.json").write_text(policy.to_json())
    (root / "calibrated.json").write_text(json.dumps({"exit_config": policy.to_dict(), "calibration": {}}))
    out["bare"], out["calibrated"] = root / "bare.json", root / "calibrated.json"
    for kind in TINY_PIPELINES:
        tiny_pipeline(kind).save_pretrained(root / kind)
        out[kind] = root / kind
    from diffusers import DDIMScheduler

    from ee_diffusion.pipelines import EarlyExitDiTPipeline

    EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=4), scheduler=DDIMScheduler()).save_pretrained(root / "ours")
    out["ours"] = root / "ours"
    return out


def bench(files, kind, out, *extra):
    """The CLI arguments of a fast run on `kind`; returns the exit status."""
    argv = ["bench", "--pipeline", str(files[kind]), "--out", str(out), *FAST, *extra]
    return main(argv)


ARGUMENTS = {
    "dit": ["--classes", "0", "goldfish", "--methods", "static:2", "fbc:0.1", "BARE@2"],
    "pixart": ["--prompts", "PROMPTS", "--methods", "static:0.5", "CALIBRATED", "--features", "inception", "clip"],
    "sd3": ["--prompts", "PROMPTS", "--methods", "ase:released", "--features", "inception", "clip"],
    "sd": ["--prompts", "PROMPTS", "--methods", "steps:1"],
    "ddpm": ["--methods", "steps:1"],
}


def policy_dict():
    return EarlyExitConfig(TimestepSchedule(boundaries=[500], depths=[4, 2])).to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("kind", TINY_PIPELINES)
def test_every_stock_pipeline_class_runs_end_to_end(kind, files, tmp_path, capsys):
    extra = [a.replace("PROMPTS", str(files["prompts"])).replace("BARE", str(files["bare"]))
             .replace("CALIBRATED", str(files["calibrated"])) for a in ARGUMENTS[kind]]
    assert bench(files, kind, tmp_path, "--real", str(files["real"]), "--inception-weights", str(files["inception"]),
                 "--clip", str(files["clip"]), *extra) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    features = extra[extra.index("--features") + 1:] if "--features" in extra else ["inception"]
    # One entry, every row scored under every feature network; FIDs of different networks are never compared.
    (entry,) = report["settings"]
    assert [n["name"].split()[0] for n in entry["feature_nets"]] == [
        "inception-v3" if f == "inception" else "clip" for f in features]
    keys = [n["key"] for n in entry["feature_nets"]]
    for name in [n["name"] for n in entry["feature_nets"]]:
        rows = entry["rows"]
        reference = rows[entry["reference"]]
        assert entry["reference"] == "pipeline3" and reference["family"] == "reference"
        assert {"pipeline2", "pipeline1"} <= set(rows)  # the fewer-steps sweep (40-80% of 3 steps)
        assert all(np.isfinite(r["fid"]) and len(r["fid_resamples"]) == 20 for r in rows.values())
        assert all(list(r["fid_by_net"]) == list(r["dfid_reference_by_net"]) == keys for r in rows.values())
        assert reference["dfid_reference"] == {"delta": 0.0, "low": 0.0, "high": 0.0}
        assert entry["real"]["count"] == 12 and entry["image_shape"] == [3, 16 if kind != "ddpm" else 8]
        assert entry["decisions"]["verdict"] and entry["decisions"]["recommended"] in rows
        assert entry["operating_point"]["num_inference_steps"] == rows[entry["decisions"]["recommended"]]["steps"]
        assert all("speedup" in r for r in rows.values())
        assert ("inception-v3" in name and "75x75" in name) or name.startswith("clip")
        assert any("12 images for 2048 features" in w for w in entry["warnings"]) == ("inception" in features)
        for other in rows.values():  # exit and cache methods: fewer block evaluations, or reported not attached
            if other["family"] in ("static_depth", "ase", "exit_config"):
                assert other["block_fraction"] < 1 and "vs_frontier" in other
        if kind == "dit":
            assert rows["bare@pipeline2"]["steps"] == 2 and rows["bare@pipeline2"]["exit_config"] == policy_dict()
        if kind == "pixart":
            assert rows["calibrated@pipeline3"]["exit_config"] == policy_dict()
        if "clip" in name and kind in ("pixart", "sd3"):
            assert all(0 <= r["clip_score"] <= 100 for r in rows.values())
    # Quality holds only where it holds under every network.
    for r in entry["rows"].values():
        assert r["holds_quality"] == all(d["low"] <= 0 or d["high"] < 0.1 * reference["fid_by_net"][net]
                                         for net, d in r["dfid_reference_by_net"].items())
    assert (tmp_path / "report.md").read_text().count("**Verdict.**") == 1
    assert (tmp_path / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert len(list(tmp_path.glob("real-stats-*.safetensors"))) == len(features)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_our_pipeline_with_our_feature_net_and_class_accuracy(files, tmp_path):
    assert bench(files, "ours", tmp_path, "--real", str(files["gray"]), "--features", "digits", "--solver", "dpmpp",
                 "--guidance", "1.0", "--methods", "static:3", "--timing-repeats", "0") == 0
    entry = json.loads((tmp_path / "report.json").read_text())["settings"][0]
    assert entry["image_shape"] == [1, 8] and entry["feature_net"]["resolution"] == "8x8 (native)"
    assert entry["solvers"]["dpmpp"]["class"] == "DPMSolverMultistepScheduler"
    assert entry["reference"] == "dpmpp3" and "static3@dpmpp3" in entry["rows"]
    assert all(0 <= r["accuracy"] <= 1 for r in entry["rows"].values())
    assert entry["timing"]["batches"] == [] and "of the blocks" in entry["decisions"]["verdict"]


@pytest.mark.slow
def test_interrupted_run_resumes_without_resampling_and_rerun_reuses(files, tmp_path, monkeypatch):
    config = BenchConfig(pipeline=str(files["dit"]), real=str(files["real"]), inception_weights=str(files["inception"]),
                         inception_resolution=75, classes=("0", "1"), methods=("static:2",), steps=3, num_images=6,
                         batch_size=3, shard_size=3, bootstrap=20, timing_repeats=0, frontier_steps=(2,),
                         match_frontier=False)
    # 3 methods x 2 shards; the run dies while sampling its fourth shard.
    original, calls = Runner._shard, []

    def dying(self, method, indices, bar):
        calls.append((method.name, indices[0]))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, method, indices, bar)

    monkeypatch.setattr(Runner, "_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, progress=False)
    monkeypatch.setattr(Runner, "_shard", original)
    assert len(list((tmp_path / "samples").rglob("shard-???????-???????.safetensors"))) == 3
    resumed = run(config, tmp_path, progress=False)
    assert resumed["sampled_shards"] == 6 - 3
    again = run(config, tmp_path, progress=False)
    assert again["sampled_shards"] == 0
    fids = [{n: r["fid"] for n, r in rep["settings"][0]["rows"].items()} for rep in (resumed, again)]
    assert fids[0] == fids[1] and set(fids[0]) == {"pipeline3", "pipeline2", "static2@pipeline3"}
    # A fresh run in another folder samples the same images: the same numbers as the resumed one.
    fresh = run(config, tmp_path / "fresh", progress=False)
    assert {n: r["fid"] for n, r in fresh["settings"][0]["rows"].items()} == fids[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(files, tmp_path):
    args = ["bench", "--pipeline", str(files["ours"]), "--real", str(files["gray"]), "--features", "digits",
            "--guidance", "1.0", "--methods", "static:2", "--timing-repeats", "0", "--threads", "1", "--num-images", "8",
            "--steps", "3", "--batch-size", "2", "--shard-size", "2", "--bootstrap", "20"]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "ee_diffusion.cli", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env={
        **__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    assert (two["environment"]["processes"], one["environment"]["processes"]) == (2, 1)
    rows_two, rows_one = two["settings"][0]["rows"], one["settings"][0]["rows"]
    assert list(rows_two) == list(rows_one)
    for name in rows_one:
        for key in ("fid", "fid_resamples", "block_fraction", "dfid_reference", "accuracy"):
            assert rows_two[name][key] == rows_one[name][key], (name, key)
    # Rank 0 sampled its own shards only (4 shards per method, half each).
    assert two["sampled_shards"] == one["sampled_shards"] // 2


# ----------------------------------------------------------------------------------------------- bad input
def no_samples(out: Path) -> bool:
    return not (out / "samples").exists()


@pytest.mark.parametrize("case, match", [
    ("empty_real", "holds no images"),
    ("unsupported", "holds a 'StableAudioPipeline' pipeline; supported pipeline classes: EarlyExitDiTPipeline"),
    ("no_weights", "pass --inception-weights PATH to pt_inception-2015-12-05-6726825d.pth"),
    ("wrong_weights", "Mixed_7c.branch_pool.conv.weight: expected (192, 2048, 1, 1), got (192, 2047, 1, 1)"),
    ("prompt_lines", "has 2 bad line(s): line 2: blank; line 4: blank"),
    ("empty_prompts", "is empty"),
    ("prompts_for_classes", "is class-conditional: pass --classes"),
    ("unknown_class", "unknown class names ['zebra']"),
    ("bad_method", "expected one of"),
    ("unreadable", "cannot be read as images: 999.png"),
])
def test_bad_input_is_refused_before_sampling(case, match, files, tmp_path, capsys):
    args = ["--real", str(files["real"]), "--inception-weights", str(files["inception"])]
    kind = "dit"
    if case == "empty_real":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no images here")
        args[1] = str(tmp_path / "empty")
    elif case == "unsupported":
        folder = tmp_path / "flux"
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableAudioPipeline"}))
        files = {**files, "flux": folder}
        kind = "flux"
    elif case == "no_weights":
        args = args[:2]
    elif case == "wrong_weights":
        from safetensors.torch import load_file, save_file

        weights = load_file(str(files["inception"]))
        weights["Mixed_7c.branch_pool.conv.weight"] = weights["Mixed_7c.branch_pool.conv.weight"][:, :2047].contiguous()
        save_file(weights, str(tmp_path / "wrong.safetensors"))
        args[3] = str(tmp_path / "wrong.safetensors")
    elif case in ("prompt_lines", "empty_prompts"):
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("a red cat\n\nthe big house\n   \na dog\n" if case == "prompt_lines" else "\n\n")
        kind, args = "pixart", [*args, "--prompts", str(prompts)]
    elif case == "prompts_for_classes":
        args += ["--prompts", str(files["prompts"])]
    elif case == "unknown_class":
        args += ["--classes", "0", "zebra"]
    elif case == "bad_method":
        args += ["--methods", "skip:3"]
    elif case == "unreadable":
        folder = write_images(tmp_path / "real", 3)
        (folder / "999.png").write_bytes(b"not a png")
        args[1] = str(folder)
    assert bench(files, kind, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert no_samples(tmp_path / "out")


def test_mixed_folder_is_converted_and_counted_and_small_sets_warn(files, tmp_path):
    folder = write_images(tmp_path / "mixed", 3, size=(16, 16))
    write_images(folder, 2, size=(30, 20), mode="L", start=3)
    real = ImageFolder(folder, resolution=16, channels=3)
    assert real.describe() == "5 images (2 converted from L to RGB; 2 sizes, 2 resized and center-cropped to 16x16)"
    assert real.summary()["modes"] == {"RGB": 3, "L": 2}
    batch = next(real.batches(8))
    assert batch.shape == (5, 3, 16, 16) and batch.dtype == torch.uint8
    # The gray images become three equal channels; a 30x20 image is cut to its central 16x16 after scaling.
    assert torch.equal(batch[3, 0], batch[3, 1])
    config = BenchConfig(pipeline=str(files["dit"]), real=str(folder), inception_weights=str(files["inception"]),
                         inception_resolution=75, classes=("1",), num_images=40)
    prepared = prepare(config)
    assert list(prepared.warnings.values()) == [[
        "inception-v3 (pool3) at 75x75, real images: 5 images for 2048 features - the covariance has rank at most 4 < "
        "2048, so FID is unstable and biased upwards; use more than 2048 images (Inception FID is reported on "
        "10,000-50,000)",
        "inception-v3 (pool3) at 75x75, generated images per method: 40 images for 2048 features - the covariance has "
        "rank at most 39 < 2048, so FID is unstable and biased upwards; use more than 2048 images (Inception FID is "
        "reported on 10,000-50,000)"]]


@pytest.mark.slow
def test_saved_real_statistics_replace_the_folder(files, tmp_path):
    config = BenchConfig(pipeline=str(files["dit"]), real=str(files["real"]), inception_weights=str(files["inception"]),
                         inception_resolution=75, classes=("0",), steps=2, num_images=4, shard_size=4, bootstrap=20,
                         timing_repeats=0, frontier_steps=(1,))
    first = run(config, tmp_path, progress=False)
    stats_file = next(tmp_path.glob("real-stats-*.safetensors"))
    stats = RealStats.load(stats_file)
    assert stats.count == 12 and stats.num_features == 2048
    again = run(BenchConfig(**{**config.__dict__, "real": None, "real_stats": (str(stats_file),)}), tmp_path,
                progress=False)
    assert again["sampled_shards"] == 0 and again["settings"][0]["real"]["count"] == 12
    assert [r["fid"] for r in again["settings"][0]["rows"].values()] == pytest.approx(
        [r["fid"] for r in first["settings"][0]["rows"].values()], rel=1e-9)
    # Statistics of Inception at 75x75 are not those of Inception at 80x80.
    with pytest.raises(ValueError, match=r"no real statistics for the feature network 'inception-v3 \(pool3\) at 80x80'"):
        prepare(BenchConfig(**{**config.__dict__, "real": None, "real_stats": (str(stats_file),),
                               "inception_resolution": 80}))


# ------------------------------------------------------------------------------------------ feature networks
@pytest.mark.slow
def test_inception_is_what_torchmetrics_fid_computes(files):
    from torchmetrics.image.fid import FrechetInceptionDistance

    net = load_inception(files["inception"], resolution=75)
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (12, 3, 16, 16), generator=g, dtype=torch.uint8)
    fake = (real.int() + torch.randint(-40, 41, real.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    metric = FrechetInceptionDistance(feature=net, normalize=False).double()
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.no_grad():
        ours = FrechetReference(net(real).double()).fid(net(fake).double())
    assert ours == pytest.approx(float(metric.compute()), rel=1e-5)
    assert ours > 0


def test_inception_loads_the_distributed_pickle_format_and_rejects_other_files(files, tmp_path):
    from safetensors.torch import load_file

    weights = load_file(str(files["inception"]))
    torch.save(weights, tmp_path / "pt_inception.pth")
    image = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        a, b = load_inception(tmp_path / "pt_inception.pth", 75)(image), load_inception(files["inception"], 75)(image)
    assert torch.equal(a, b)
    torch.save({"a": 1}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is not a state dict of tensors"):
        load_inception(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="resolution must be an int >= 75"):
        load_inception(files["inception"], resolution=32)


def test_clip_features_and_score(files):
    clip = ClipImageFeatures(files["clip"])
    images = torch.randint(0, 256, (3, 3, 20, 24), dtype=torch.uint8)
    with torch.no_grad():
        features = clip(images)
        text = clip.text_features(["a red cat", "a dog", "the big house"])
    assert features.shape == (3, 4) == text.shape and clip.resolution == 16
    scores = clip_scores(features, text)
    cosine = torch.nn.functional.cosine_similarity(features.double(), text.double())
    assert torch.allclose(scores, 100 * cosine.clamp(min=0)) and torch.all((scores >= 0) & (scores <= 100))


def test_fid_of_fewer_images_than_features_matches_the_covariance_form():
    g = torch.Generator().manual_seed(0)
    reference = FrechetReference(torch.randn(50, 30, generator=g))
    few = torch.randn(3, 12, 30, generator=g) * 1.5 + 0.3  # (R, N < F, F)
    gram = reference.of_features(few)
    direct = reference.distance(*moments(few))
    torch.testing.assert_close(gram, direct, rtol=1e-7, atol=0)


# ------------------------------------------------------------------------------------------- committed run
DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_our_feature_net_on_images_of_another_shape_is_refused(files, tmp_path):
    with pytest.raises(ValueError, match="takes 1-channel 8x8 images; DiTPipeline makes 3-channel 16x16 ones"):
        prepare(BenchConfig(pipeline=str(files["dit"]), real=str(files["real"]), features=("digits",), classes=("0",)))


def test_clip_vision_model_folder_gives_pooled_features_and_no_text(files, tmp_path):
    from transformers import CLIPModel, CLIPVisionModel

    full = CLIPModel.from_pretrained(str(files["clip"]))
    vision = CLIPVisionModel(full.config.vision_config)
    vision.load_state_dict(full.vision_model.state_dict())
    vision.save_pretrained(tmp_path / "vision")
    clip = ClipImageFeatures(tmp_path / "vision")
    images = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)  # grayscale: repeated to RGB
    with torch.no_grad():
        pooled = clip(images)
        projected = ClipImageFeatures(files["clip"])(images)
    assert (clip.num_features, pooled.shape, projected.shape) == (8, (2, 8), (2, 4))
    # The full model's image embedding is its projection of the same pooled output.
    torch.testing.assert_close(projected, full.visual_projection(pooled))
    with pytest.raises(ValueError, match="needs a full CLIPModel folder with its tokenizer; this folder holds a "
                                         "CLIPVisionModel"):
        clip.text_features(["a cat"])


@pytest.mark.slow
def test_rows_name_their_own_solver_against_the_reference(files, tmp_path, capsys):
    """One report places DPM-Solver++ rows against a DDIM reference; on a flow-matching folder the named solvers are
    their flow-matching versions, and DDIM (which has none) is refused before any sampling."""
    assert bench(files, "dit", tmp_path / "dit", "--real", str(files["real"]), "--inception-weights",
                 str(files["inception"]), "--solver", "ddim", "--methods", "dpmpp:2", "static:0.5@dpmpp:3",
                 "--timing-repeats", "0") == 0
    entry = json.loads((tmp_path / "dit" / "report.json").read_text())["settings"][0]
    rows = entry["rows"]
    assert entry["reference"] == "ddim3" and rows["ddim3"]["family"] == "reference"
    assert rows["dpmpp2"]["solver"] == rows["static2@dpmpp3"]["solver"] == "dpmpp"
    assert entry["solvers"]["dpmpp"]["class"] == "DPMSolverMultistepScheduler"
    # The fewer-steps frontier of every solver a row runs, at the static row's cost (half of 3 steps: 1 and 2).
    assert {"ddim1", "dpmpp1"} <= set(rows) and rows["dpmpp1"]["notes"] == {"matched": True}
    assert rows["dpmpp2"]["dfid_reference"]["delta"] == pytest.approx(rows["dpmpp2"]["fid"] - rows["ddim3"]["fid"])
    assert bench(files, "sd3", tmp_path / "sd3", "--real", str(files["real"]), "--inception-weights",
                 str(files["inception"]), "--prompts", str(files["prompts"]), "--methods", "dpmpp:2", "unipc:2",
                 "--timing-repeats", "0") == 0
    rows = json.loads((tmp_path / "sd3" / "report.json").read_text())["settings"][0]["rows"]
    assert {rows["dpmpp2"]["solver"], rows["unipc2"]["solver"], rows["pipeline3"]["solver"]} == {
        "dpmpp", "unipc", "pipeline"}
    assert bench(files, "sd3", tmp_path / "refused", "--real", str(files["real"]), "--inception-weights",
                 str(files["inception"]), "--prompts", str(files["prompts"]), "--methods", "ddim:2") == 2
    assert "solver 'ddim' needs a DDPM-type noise schedule" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "samples").exists()
