"""Training stock pipeline folders (DiT, PixArt-alpha, SD3) in latent space, end to end on complete tiny random
pipelines: the latent/prompt cache, learning, the example configs, the README command, bad inputs, and the
scale features (gradient checkpointing, bf16, exact resume)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

pytest.importorskip("transformers")

from ee_diffusion import EarlyExitConfig, UncertaintyHeads  # noqa: E402
from ee_diffusion.cli import main  # noqa: E402
from ee_diffusion.eval.pipeline_sampling import sample_pipeline  # noqa: E402
from ee_diffusion.pipelines.conditioning import Conditioning, Prompt  # noqa: E402
from ee_diffusion.pipelines.stock import load_pipeline  # noqa: E402
from ee_diffusion.schedules import UncertaintyThreshold  # noqa: E402
from ee_diffusion.testing import tiny_pipeline, tiny_t5  # noqa: E402
from ee_diffusion.training.config import ExperimentConfig, PipelineTrainingConfig, TrainConfig  # noqa: E402
from ee_diffusion.training.latent_cache import CACHE_FILE, ShardBatches, build_cache  # noqa: E402
import ee_diffusion  # noqa: E402
from ee_diffusion.pipelines import EarlyExitDiTPipeline  # noqa: E402
from ee_diffusion.results import load_result  # noqa: E402
from ee_diffusion.training.pipeline_source import prepare_cache  # noqa: E402
from ee_diffusion.training.trainer import Trainer, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
WORDS = ["a red cat", "a blue dog", "the green tree", "a big house"]
ASE = {"schedule": {"type": "TimestepSchedule", "boundaries": [500], "depths": [4, 2]}}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    # accelerate keeps one process-wide state (mixed precision, accumulation); each run builds its own.
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def write_images(folder: Path, kind: str, count: int = 32) -> Path:
    """`count` 16x16 RGB images in 4 classes (a dominant colour each, plus seeded texture): `folder/<class>/` for a
    DiT, flat with a `.txt` caption beside each image for text pipelines."""
    rng = np.random.default_rng(0)
    for i in range(count):
        c = i % 4
        where = folder / str(c) if kind == "dit" else folder
        where.mkdir(parents=True, exist_ok=True)
        pixels = np.full((16, 16, 3), 30, np.uint8)
        pixels[..., c % 3] = 60 + 60 * c
        pixels += rng.integers(0, 25, (16, 16, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(where / f"{i:03d}.png")
        if kind != "dit":
            (where / f"{i:03d}.txt").write_text(WORDS[c])
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Saved tiny pipelines (PixArt with 28 blocks, as PixArt-alpha, for the ASE example schedule) and images."""
    root = tmp_path_factory.mktemp("pipelines")
    out = {}
    for kind, layers in (("dit", 4), ("pixart", 28), ("sd3", 4)):
        tiny_pipeline(kind, num_layers=layers).save_pretrained(root / kind)
        out[kind] = (root / kind, write_images(root / f"{kind}-images", kind))
    return out


def pipeline_config(folders, kind, cache, **train):
    pipe, images = folders[kind]
    section = PipelineTrainingConfig(folder=str(pipe), images=str(images), cache_dir=str(cache), shard_size=12,
                                     num_previews=2, preview_steps=2, max_sequence_length=None if kind == "dit" else 8)
    defaults = dict(mode="deediff", max_steps=2, batch_size=8, log_every=1, ema_decay=0.0)
    return ExperimentConfig(pipeline=section, train=TrainConfig(**{**defaults, **train}))


def held_out_loss(trainer, batches, key="simple"):
    with torch.no_grad():
        return sum(float(trainer.objective_module(*b[:3], **b[3])[key]) for b in batches) / len(batches)


# --------------------------------------------------------------------------------------------- the cache
def test_cache_build_resumes_after_an_interruption_with_whole_shards_only(tmp_path):
    calls = []

    def encode(start, stop):
        calls.append(start)
        if start == 8 and len(calls) == 3:
            raise KeyboardInterrupt  # killed while encoding the third shard
        return {"latent_mean": torch.arange(start, stop, dtype=torch.float32)[:, None]}

    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path, {"vae": "a"}, "items", 10, 4, encode, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CACHE_FILE, "shard_00000.safetensors", "shard_00001.safetensors"]
    assert json.loads((tmp_path / CACHE_FILE).read_text())["complete"] is False
    cache = build_cache(tmp_path, {"vae": "a"}, "items", 10, 4, encode, progress=False)
    assert calls == [0, 4, 8, 8]  # the resumed build encodes only the missing shard
    rows = torch.cat([cache.shard(i)["latent_mean"] for i in range(cache.num_shards)]).flatten()
    assert rows.tolist() == list(range(10))
    with pytest.raises(ValueError, match="images or their labels/captions changed"):
        build_cache(tmp_path, {"vae": "a"}, "other items", 10, 4, encode, progress=False)
    (tmp_path / CACHE_FILE).unlink()
    with pytest.raises(ValueError, match="is not empty and holds no cache.json: not a latent cache"):
        build_cache(tmp_path, {"vae": "a"}, "items", 10, 4, encode, progress=False)


def test_shard_batches_are_a_seeded_pure_function_of_the_step_and_split_over_ranks(tmp_path):
    cache = build_cache(tmp_path, {}, "x", 22, 5, lambda a, b: {"i": torch.arange(a, b)}, progress=False)
    one = ShardBatches(cache, batch_size=4, seed=3)
    epoch = torch.cat([one.batch(s)["i"] for s in range(one.steps_per_epoch)])
    assert len(set(epoch.tolist())) == 20  # each item at most once per epoch (5 steps of 4; 2 dropped)
    assert epoch.tolist() != sorted(epoch.tolist())
    # A fresh object (a resumed run) gives the same batch for any step; another seed another order.
    assert torch.equal(ShardBatches(cache, 4, seed=3).batch(7)["i"], one.batch(7)["i"])
    assert not torch.equal(ShardBatches(cache, 4, seed=4).batch(0)["i"], one.batch(0)["i"])
    ranks = [ShardBatches(cache, 4, seed=3, rank=r, world_size=2).batch(6)["i"] for r in (0, 1)]
    assert torch.cat(ranks).tolist() == one.batch(6)["i"].tolist()
    assert len(cache._loaded) <= 2  # never more than two shards in memory


def test_prepare_latents_encodes_once_and_refuses_a_cache_of_another_vae(folders, tmp_path, capsys):
    pipe_dir, images = folders["dit"]
    cache_dir = tmp_path / "cache"
    argv = ["prepare-latents", "--config", "dit-xl2-heads", "--pipeline", str(pipe_dir), "--images", str(images),
            "--cache-dir", str(cache_dir), "--cpu", "--no-progress"]
    assert main(argv) == 0
    assert f"32 images in 1 shards, cached in {cache_dir}" in capsys.readouterr().out
    shard = cache_dir / "shard_00000.safetensors"
    cached = prepare_cache(PipelineTrainingConfig(folder=str(pipe_dir), images=str(images),
                                                  cache_dir=str(cache_dir), shard_size=1024, cache_dtype="float16"))
    labels = cached.shard(0)["class_labels"]
    assert labels.tolist() == sorted(labels.tolist()) and set(labels.tolist()) == {0, 1, 2, 3}
    # The latents are the pipeline's own: (z - shift) * scaling_factor of the VAE posterior mean.
    pipe = load_pipeline(pipe_dir)
    with torch.no_grad():
        first = sorted((images / "0").iterdir())[0]
        pixels = torch.from_numpy(np.asarray(Image.open(first), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
        mean = pipe.vae.encode(pixels[None]).latent_dist.mean * pipe.vae.config.scaling_factor
    torch.testing.assert_close(cached.shard(0)["latent_mean"][0].float(), mean[0], atol=2e-3, rtol=1e-2)
    # Another VAE (other weights) or another resolution: refused, and the cache is left as it was.
    before = shard.read_bytes()
    other = tmp_path / "other-vae"
    pipe.vae = tiny_pipeline("dit", seed=7).vae
    pipe.save_pretrained(other)
    assert main([*argv[:4], str(other), *argv[5:]]) == 2
    assert re.search(r"prepare-latents: error: the cache in .* was made differently: vae: cached AutoencoderKL with "
                     r"weights sha256 \w{12}, expected AutoencoderKL with weights sha256 \w{12}", capsys.readouterr().err)
    bigger = tmp_path / "dit-16"
    from ee_diffusion.testing import tiny_dit

    pipe = load_pipeline(pipe_dir)
    pipe.transformer = tiny_dit(num_layers=2, sample_size=16, in_channels=4, num_classes=1000, learn_sigma=True)
    pipe.save_pretrained(bigger)
    assert main([*argv[:4], str(bigger), *argv[5:]]) == 2
    assert "resolution: cached 16, expected 32" in capsys.readouterr().err
    assert shard.read_bytes() == before and sorted(p.name for p in cache_dir.iterdir()) == [CACHE_FILE, shard.name]


def test_prepare_cache_killed_midway_resumes_to_the_same_shards(folders, tmp_path, monkeypatch):
    import ee_diffusion.training.pipeline_source as source

    pipe_dir, images = folders["pixart"]
    config = PipelineTrainingConfig(folder=str(pipe_dir), images=str(images), cache_dir=str(tmp_path / "a"),
                                    shard_size=12, encode_batch_size=5, max_sequence_length=8)
    fresh = prepare_cache(config, progress=False)
    real, calls = source.load_image, []

    def dies_at_the_third_shard(path, resolution):
        calls.append(path)
        if len(calls) == 25:
            raise KeyboardInterrupt
        return real(path, resolution)

    config.cache_dir = str(tmp_path / "b")
    monkeypatch.setattr(source, "load_image", dies_at_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(config, progress=False)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [CACHE_FILE, "null.safetensors",
                                                                  "shard_00000.safetensors", "shard_00001.safetensors"]
    resumed = prepare_cache(config, progress=False)
    assert len(calls) == 25 + 8  # 24 read + the fatal one; then only the missing last shard's 8 images
    for i in range(fresh.num_shards):
        assert fresh.shard(i).keys() == resumed.shard(i).keys()
        for key in fresh.shard(i):
            assert torch.equal(fresh.shard(i)[key], resumed.shard(i)[key]), key


# ------------------------------------------------------------------------------------------------ learning
@pytest.mark.slow
@pytest.mark.parametrize("kind, factor", [("dit", 3.0), ("pixart", 2.0), ("sd3", 1.3)])
def test_latent_training_learns(folders, tmp_path, kind, factor):
    # DeeDiff on the tiny pipelines' latents, 30 steps of batch 8: L_simple (eps for DiT and PixArt, velocity
    # for SD3) on four fixed held-out micro-batches falls by `factor` (measured: DiT 6.3 -> 1.1, PixArt 3.0 ->
    # 0.95, SD3 4.8 -> 3.2). SD3's velocity `noise - x0` keeps a higher floor: the random tiny VAE's posterior
    # std, scaled by SD3's 1.53, makes x0 itself noisy, and x0 is half of the target.
    steps = 30
    config = pipeline_config(folders, kind, tmp_path / "cache", max_steps=steps, learning_rate=3e-3,
                             label_dropout=0.0)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    batches = [trainer.micro_batch(10**6 + i) for i in range(4)]
    before = held_out_loss(trainer, batches)
    trainer.train()
    after = held_out_loss(trainer, batches)
    assert after < before / factor, (before, after)


@pytest.mark.parametrize("kind", ["dit", "pixart", "sd3"])
def test_noise_targets_and_guidance_dropout_follow_the_pipeline(folders, tmp_path, kind):
    trainer = Trainer(pipeline_config(folders, kind, tmp_path / "cache", label_dropout=1.0), tmp_path / "r",
                      progress=False)
    rows = trainer.batches.batch(0)
    noisy, target, t, cond = trainer.micro_batch(0)
    mean, std = rows["latent_mean"], rows["latent_std"]
    if kind == "sd3":  # flow matching: x_t = (1 - s) x0 + s eps, target eps - x0, timestep 1000 s
        sigma = (t / 1000).view(-1, 1, 1, 1)
        x0, noise = noisy - sigma * target, noisy + (1 - sigma) * target
    else:  # DDPM: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, target eps
        abar = trainer.source.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        noise = target
        x0 = (noisy - (1 - abar).sqrt() * noise) / abar.sqrt()
    # x0 is a posterior sample of the cached image latents, the noise standard normal.
    z = (x0 - mean) / std
    assert z.abs().max() < 6 and 0.5 < z.std() < 1.5 and 0.7 < noise.std() < 1.3
    if kind == "dit":  # every row dropped to the null class
        assert cond["class_labels"].tolist() == [1000] * 8
    else:  # ... or to the pipeline's empty-prompt embedding
        for key, null in trainer.source.null.items():
            assert torch.equal(cond[key], null.expand_as(cond[key]))
            assert not torch.equal(rows[key].float(), cond[key])


# ----------------------------------------------------------------------- example configs and the README
def test_train_help_lists_the_shipped_example_configs_and_each_loads(capsys):
    from ee_diffusion.training.cli import CONFIG_DIR, EXAMPLE_CONFIGS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = capsys.readouterr().out
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.json")) == sorted(EXAMPLE_CONFIGS)
    for name, text in EXAMPLE_CONFIGS.items():
        assert f"{name:<18} {text}" in shown
        assert ExperimentConfig.load(CONFIG_DIR / f"{name}.json").pipeline is not None


def run_example(folders, tmp_path, name, kind):
    pipe_dir, images = folders[kind]
    out = tmp_path / "run"
    argv = ["train", "--config", name, "--pipeline", str(pipe_dir), "--images", str(images), "--cache-dir",
            str(tmp_path / "cache"), "--output-dir", str(out), "--max-steps", "2", "--cpu", "--no-progress"]
    assert main(argv) == 0
    return out


def sample_with_exits(folder, kind, exit_config, heads):
    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    cond = Conditioning("classes", class_ids=[1, 2]) if kind == "dit" else \
        Conditioning("prompts", prompts=[Prompt(WORDS[0]), Prompt(WORDS[1])])
    return sample_pipeline(pipe, range(2), cond, exit_config=exit_config, heads=heads, num_inference_steps=3,
                           guidance_scale=3.0)


@pytest.mark.slow
@pytest.mark.parametrize("name, kind", [("dit-xl2-heads", "dit"), ("sd3-heads", "sd3")])
def test_heads_example_configs_end_in_a_folder_that_samples_with_its_heads(folders, tmp_path, name, kind):
    out = run_example(folders, tmp_path, name, kind)
    folder = out / "pipeline"
    assert type(load_pipeline(folder)).__name__ == type(load_pipeline(folders[kind][0])).__name__
    saved = load_result(folder)
    exit_config, heads = saved.exit_config, saved.load_heads()
    assert isinstance(exit_config.policy, UncertaintyThreshold) and isinstance(heads, UncertaintyHeads)
    # The one way back: the trained folder runs its heads and exit config with one call.
    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    ee_diffusion.enable(pipe, folder)
    pipe(**({"class_labels": [1]} if kind == "dit" else {"prompt": WORDS[0]}), num_inference_steps=2, output_type="np")
    run = ee_diffusion.summary(pipe).denoisers[0]
    assert run.stats.num_calls == 2 and run.policy.startswith("UncertaintyThreshold")
    ee_diffusion.disable(pipe)
    if kind == "dit":
        ours = EarlyExitDiTPipeline.from_pretrained(folder)
        assert isinstance(ours.exit_heads, UncertaintyHeads) and ours.default_exit_config == exit_config
    # The backbone was frozen: the saved transformer is the original one.
    original = load_pipeline(folders[kind][0]).transformer.state_dict()
    saved = load_pipeline(folder).transformer.state_dict()
    assert all(torch.equal(original[k], saved[k]) for k in original)
    full = sample_with_exits(folder, kind, None, None)
    hooked = sample_with_exits(folder, kind, exit_config, heads)
    assert hooked.images.shape == full.images.shape == (2, 3, 16, 16)
    # A threshold the barely trained heads pass: rows exit before the last block, through the saved heads.
    low = EarlyExitConfig(policy=UncertaintyThreshold(0.05, patience=1))
    early = sample_with_exits(folder, kind, low, heads)
    assert early.block_evals < full.block_evals
    previews = sorted((out / "samples").rglob("*.png"))
    assert len(previews) == (8 if kind == "dit" else 4)  # num_previews of the example config
    assert Image.open(previews[0]).size == (16, 16)  # decoded by the VAE: 8x8 latents -> 16x16 RGB


@pytest.mark.slow
def test_pixart_ase_example_config_fine_tunes_and_samples_with_its_schedule(folders, tmp_path):
    out = run_example(folders, tmp_path, "pixart-alpha-ase", "pixart")
    saved = load_result(out / "pipeline")
    exit_config, heads = saved.exit_config, saved.load_heads()
    assert heads is None and exit_config.policy.depths == [28, 24, 20, 16]
    original = load_pipeline(folders["pixart"][0]).transformer.state_dict()
    saved = load_pipeline(out / "pipeline").transformer.state_dict()
    changed = [k for k in original if not torch.equal(original[k], saved[k])]
    assert changed and not any(".timestep_embedder." in k for k in changed)  # ASE keeps the embedding of t
    full = sample_with_exits(out / "pipeline", "pixart", None, None)
    ase = sample_with_exits(out / "pipeline", "pixart", exit_config, None)
    assert ase.block_evals < full.block_evals
    record = json.loads(next((out / "samples").rglob("preview.json")).read_text())
    assert record["images"] == 4 and record["depth_fraction"] < 1


def test_readme_train_heads_for_a_local_dit_xl2_folder_runs_on_the_tiny_stand_in(folders, tmp_path, monkeypatch):
    """docs/training.md's "Train heads for a local DiT-XL/2 folder" (the README links it), commands and code."""
    text = (ROOT / "docs" / "training.md").read_text()
    section = text.split("## Train heads for a local DiT-XL/2 folder", 1)[1].split("\n## ", 1)[0]
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip().splitlines()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    pipe_dir, images = folders["dit"]
    load_pipeline(pipe_dir).save_pretrained(tmp_path / "DiT-XL-2-256")
    (tmp_path / "images").symlink_to(images)
    for line in commands:
        argv = shlex.split(line)
        assert argv[0] == "ee-diffusion"
        extra = ["--cpu", "--no-progress"] + (["--max-steps", "2"] if argv[1] == "train" else [])
        assert main(argv[1:] + extra) == 0
    scope: dict = {}
    exec(compile(code, "docs/training.md", "exec"), scope)
    assert scope["image"].size == (16, 16)
    run = ee_diffusion.summary(scope["pipe"]).denoisers[0]
    assert run.policy.startswith("UncertaintyThreshold(threshold=0.92") and run.stats.num_calls == 25


def test_captions_from_a_jsonl_file_and_its_bad_lines(tmp_path):
    from ee_diffusion.training.image_items import caption_items

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16)).save(images / name)
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"file_name": "b.png", "prompt": " a blue car "}\n\n{"file_name": "a.png", "prompt": "a cat"}\n')
    assert [(i.file, i.prompt) for i in caption_items(images, captions)] == [("a.png", "a cat"), ("b.png", "a blue car")]
    captions.write_text('{"file_name": "a.png", "prompt": "a cat"}\nnot json\n{"file_name": "c.png", "prompt": "x"}\n'
                        '{"prompt": "no file"}\n')
    with pytest.raises(ValueError, match=r"3 bad line\(s\): line 2: not JSON .*; line 3: no image 'c.png' under the "
                                         r"image folder; line 4: expected \{\"file_name\""):
        caption_items(images, captions)


# ------------------------------------------------------------------------------------------------ bad input
def _nothing_trained(out: Path) -> bool:
    return not (out / "log.jsonl").exists() and not (out / "checkpoints").exists()


def test_bad_inputs_are_refused_before_any_step_and_nothing_cached_is_touched(folders, tmp_path):
    # VAE / latent-size mismatch.
    config = pipeline_config(folders, "dit", tmp_path / "c1")
    config.pipeline.resolution = 32
    with pytest.raises(ValueError, match=r"resolution 32 encode to latents 4x16x16 with this VAE, but the "
                                         r"DiTTransformer2DModel takes 4x8x8; set resolution to 16"):
        Trainer(config, tmp_path / "r1", progress=False)
    assert not (tmp_path / "c1").exists() and _nothing_trained(tmp_path / "r1")
    # A caption missing for an image.
    images = write_images(tmp_path / "captioned", "pixart", count=4)
    (images / "002.txt").unlink()
    config = pipeline_config(folders, "pixart", tmp_path / "c2")
    config.pipeline.images = str(images)
    with pytest.raises(ValueError, match=r"1 of 4 images under .* have no caption \(002.png\); every image needs a "
                                         r"\.txt caption of the same name"):
        Trainer(config, tmp_path / "r2", progress=False)
    assert not (tmp_path / "c2").exists()
    # An empty prompt (caption) file.
    empty = tmp_path / "captions.jsonl"
    empty.write_text("\n")
    config.pipeline.captions = str(empty)
    with pytest.raises(ValueError, match="caption file .* is empty: expected one"):
        Trainer(config, tmp_path / "r3", progress=False)
    # A pipeline folder of an unsupported class.
    sd = tmp_path / "sd"
    tiny_pipeline("sd").save_pretrained(sd)
    config = pipeline_config(folders, "pixart", tmp_path / "c4")
    config.pipeline.folder = str(sd)
    with pytest.raises(ValueError, match=r"holds a StableDiffusionPipeline; training on a stock pipeline supports "
                                         r"DiTPipeline, PixArtAlphaPipeline, StableDiffusion3Pipeline"):
        Trainer(config, tmp_path / "r4", progress=False)
    # Text-encoder outputs the transformer cannot take (an 8-wide T5 for 16 caption channels).
    narrow = tmp_path / "narrow-t5"
    pipe = load_pipeline(folders["pixart"][0])
    pipe.text_encoder = tiny_t5(8)
    pipe.save_pretrained(narrow)
    config.pipeline.folder = str(narrow)
    with pytest.raises(ValueError, match=r"encoder_hidden_states has 8 features, the transformer takes 16"):
        Trainer(config, tmp_path / "r5", progress=False)
    assert not (tmp_path / "c4").exists() and _nothing_trained(tmp_path / "r5")


# ------------------------------------------------------------------------------------------------- scale
def test_resume_from_a_checkpoint_continues_the_shard_stream_exactly(folders, tmp_path):
    # Shards of 12 and batches of 8: steps cross shard boundaries; previews every 2 steps draw no training RNG.
    config = pipeline_config(folders, "dit", tmp_path / "cache", max_steps=4, checkpoint_every=2, ema_decay=0.9)
    config.pipeline.preview_every = 2
    whole = train(config, tmp_path / "whole", progress=False)
    part = Trainer(config, tmp_path / "part", progress=False)
    part.train(max_steps=2)
    part.save_checkpoint()
    resumed = train(config, tmp_path / "part", resume="latest", progress=False)
    assert resumed.step == 4
    for (key, a), b in zip(whole.objective_module.state_dict().items(), resumed.objective_module.state_dict().values()):
        assert torch.equal(a, b), key

    def records(run):  # every logged term but the wall-clock
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]

    assert len(records("whole")) == 4 and records("part") == records("whole")
    assert sorted(p.name for p in (tmp_path / "whole" / "samples").iterdir()) == ["step_0000002", "step_0000004"]


def test_pipeline_section_round_trips_and_excludes_our_model_sections(tmp_path, monkeypatch):
    import argparse

    from ee_diffusion.training.cli import add_train_arguments, load_config

    config = ExperimentConfig(pipeline=PipelineTrainingConfig(folder="p", images="i", cache_dir="c"),
                              train=TrainConfig(mode="heads"))
    assert sorted(config.to_dict()) == ["exit_config", "pipeline", "train"]
    assert ExperimentConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match=r"takes its model, data and schedulers from the pipeline folder; remove "
                                         r"\['model'\]"):
        ExperimentConfig.from_dict({**config.to_dict(), "model": {"num_layers": 3}})
    with pytest.raises(ValueError, match=r"cache_dtype must be one of \('float32', 'float16', 'bfloat16'\), got 'int8'"):
        PipelineTrainingConfig(folder="p", images="i", cache_dir="c", cache_dtype="int8")
    # Folder flags fill a 'pipeline' section only.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits.json").write_text(ExperimentConfig().to_json())
    args = add_train_arguments(argparse.ArgumentParser()).parse_args(
        ["--config", "digits.json", "--images", "x", "--output-dir", "o"])
    with pytest.raises(ValueError, match=r"--images set the 'pipeline' section, but 'digits.json' trains our own model"):
        load_config(args)


@pytest.mark.parametrize("kind, mode", [("dit", "deediff"), ("pixart", "ase"), ("sd3", "deediff")])
def test_gradient_checkpointing_recomputes_blocks_with_the_same_gradients(folders, tmp_path, kind, mode):
    grads, calls = [], []
    for checkpointing in (False, True):
        config = pipeline_config(folders, kind, tmp_path / "cache", mode=mode, gradient_checkpointing=checkpointing,
                                 ase={"schedule": {"type": "TimestepSchedule", "boundaries": [500],
                                                   "depths": [28, 14]}} if kind == "pixart" else ASE)
        trainer = Trainer(config, tmp_path / f"run{checkpointing}", progress=False)
        block = trainer.denoiser.transformer_blocks[1]
        seen = []
        handle = block.register_forward_pre_hook(lambda *args: seen.append(1))
        noisy, target, t, cond = trainer.micro_batch(0)
        trainer.objective_module(noisy, target, t, **cond)["loss"].backward()
        handle.remove()
        calls.append(len(seen))
        grads.append([p.grad for p in trainer.objective_module.parameters()])
    assert calls == [1, 2]  # recomputed once in backward
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_bf16_mixed_precision_trains_with_float32_weights(folders, tmp_path):
    losses = {}
    for precision in ("no", "bf16"):
        AcceleratorState._reset_state(reset_partial_state=True)
        config = pipeline_config(folders, "sd3", tmp_path / "cache", mixed_precision=precision, ema_decay=0.9)
        trainer = Trainer(config, tmp_path / precision, cpu=True, progress=False)
        losses[precision] = trainer.train()["loss"]
        assert all(p.dtype == torch.float32 for p in trainer.objective_module.parameters())
        assert all(p.dtype == torch.float32 for p in trainer.ema.shadow_params)
    # The same batches under bf16 autocast: close to float32, but not equal (autocast really ran).
    assert losses["bf16"] != losses["no"] and losses["bf16"] == pytest.approx(losses["no"], rel=0.1)
