"""Loading any supported pipeline folder and sampling it image by image (`pipelines.stock`, `pipelines.conditioning`,
`eval.pipeline_sampling`), on complete tiny stock pipelines (VAE, text encoders and tokenizers built in-process)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from ee_diffusion import EarlyExitConfig  # noqa: E402
from ee_diffusion.eval.pipeline_sampling import sample_pipeline  # noqa: E402
from ee_diffusion.pipelines.conditioning import Conditioning, Prompt, class_ids, read_prompts  # noqa: E402
from ee_diffusion.pipelines.stock import denoiser_of, kind_of, load_pipeline, pipeline_class_name  # noqa: E402
from ee_diffusion.schedules import TimestepSchedule  # noqa: E402
from ee_diffusion.testing import TINY_PIPELINES, tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = Conditioning("prompts", prompts=[Prompt("a red cat"), Prompt("the big house", seed=5)])


def conditioning(kind):
    return {"dit": Conditioning("classes", class_ids=[0, 2]), "ddpm": Conditioning("none")}.get(kind, PROMPTS)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for kind in TINY_PIPELINES:
        out[kind] = tmp_path_factory.mktemp(kind)
        tiny_pipeline(kind).save_pretrained(out[kind])
    return out


@pytest.mark.parametrize("kind", TINY_PIPELINES)
def test_saved_pipeline_samples_the_same_with_hooks_and_any_batching(kind, folders):
    pipe = load_pipeline(folders[kind])
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == pipeline_class_name(folders[kind])
    cond = conditioning(kind)
    guidance = None if kind == "ddpm" else 2.0
    stock = sample_pipeline(pipe, range(3), cond, num_inference_steps=2, guidance_scale=guidance, batch_size=3)
    assert stock.images.shape[:2] == (3, 3) and 0 <= stock.images.min() and stock.images.max() <= 1
    assert "exit_stats" not in stock.extra
    # Hooks without a policy: the stock images exactly, with statistics; another batching: the same images.
    hooked = sample_pipeline(pipe, range(3), cond, exit_config=EarlyExitConfig(), num_inference_steps=2,
                             guidance_scale=guidance, batch_size=2)
    torch.testing.assert_close(hooked.images, stock.images, rtol=0, atol=1e-5)
    assert hooked.extra["exit_stats"].num_calls == 2 * 2  # 2 steps x 2 batches
    assert hooked.block_evals == stock.block_evals > 0 and hooked.model_rows == stock.model_rows
    assert stock.model_rows == 3 * 2 * (1 if kind == "ddpm" else 2)  # guided pipelines run a pair per image
    if kind_of(pipe).denoiser == "transformer":
        n = len(denoiser_of(pipe).transformer_blocks)
        policy = TimestepSchedule(boundaries=[500], depths=[n, 1])
        early = sample_pipeline(pipe, range(3), cond, exit_config=EarlyExitConfig(policy=policy),
                                num_inference_steps=2, guidance_scale=guidance)
        assert early.block_evals < stock.block_evals
        assert not torch.equal(early.images, stock.images)


def test_prompt_seed_fixes_the_noise_whatever_the_run_seed(folders):
    pipe = load_pipeline(folders["pixart"])
    pipe.set_progress_bar_config(disable=True)
    a = sample_pipeline(pipe, [0, 1], PROMPTS, num_inference_steps=2, seed=0)
    b = sample_pipeline(pipe, [0, 1], PROMPTS, num_inference_steps=2, seed=1)
    assert not torch.equal(a.images[0], b.images[0])  # no seed of its own: the run's seed decides
    assert torch.equal(a.images[1], b.images[1])  # seed 5 in the prompt file


def test_unsupported_or_missing_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no model_index.json"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableAudioPipeline"}))
    with pytest.raises(ValueError, match="'StableAudioPipeline'.*supported pipeline classes: .*DiTPipeline"):
        load_pipeline(tmp_path)


def test_conditioning_mismatch_is_refused_before_sampling(folders):
    pipe = load_pipeline(folders["dit"])
    with pytest.raises(ValueError, match="conditioned on classes, got a prompts conditioning"):
        sample_pipeline(pipe, range(2), PROMPTS, num_inference_steps=1)


def test_class_names_and_ids(folders):
    pipe = load_pipeline(folders["dit"])
    assert class_ids(["goldfish", "2", 0, "white shark"], pipe) == [1, 2, 0, 2]
    with pytest.raises(ValueError, match=r"unknown class names \['zebra'\]"):
        class_ids(["zebra"], pipe)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 1000\), got \[1000\]"):
        class_ids([1000], pipe)


def test_bad_prompt_files_name_their_lines(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        read_prompts(empty)
    blank = tmp_path / "blank.txt"
    blank.write_text("a cat\n\na dog\n")
    with pytest.raises(ValueError, match="line 2: blank"):
        read_prompts(blank)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a cat"}\nnot json\n{"text": "x"}\n{"prompt": "a", "seed": -1}\n')
    with pytest.raises(ValueError, match=r"3 bad line\(s\): line 2: not JSON.*line 3: expected.*line 4: seed"):
        read_prompts(bad)
