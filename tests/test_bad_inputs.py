"""A table of bad inputs at every boundary: each raises ValueError/TypeError (or FileNotFoundError/OSError for
files) naming what it received - never an IndexError or a shape error from deep inside torch."""

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler

from ee_diffusion import EarlyExitConfig, UncertaintyHeads, apply_early_exit, remove_early_exit
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.schedules import StaticDepth, TimestepSchedule, UncertaintyThreshold
from ee_diffusion.testing import tiny_dit

W = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    model = tiny_dit(num_layers=2)
    heads = UncertaintyHeads.from_model(model)
    pipe = EarlyExitDiTPipeline(transformer=model, scheduler=DDIMScheduler(), exit_heads=heads)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root / "pipe")
    heads.save_pretrained(root / "heads")
    EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DDIMScheduler()).save_pretrained(root / "plain")
    return SimpleNamespace(root=root, model=model, heads=heads, pipe=pipe)


def _copy(ctx, name):
    target = ctx.root / f"{name}-{len(list(ctx.root.iterdir()))}"
    shutil.copytree(ctx.root / name, target)
    return target


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def call(**kwargs):
    return lambda c: c.pipe(**{"class_labels": [1, 2], "num_inference_steps": 1, "output_type": "np", **kwargs})


def build(**kwargs):
    def run(c):
        parts = {"transformer": c.model, "scheduler": DDIMScheduler(), **kwargs}
        return EarlyExitDiTPipeline(**parts)

    return run


def heads_folder(change):
    def run(c):
        folder = _copy(c, "heads")
        change(folder)
        return UncertaintyHeads.from_pretrained(folder)

    return run


def pipe_folder(change, name="pipe"):
    def run(c):
        folder = _copy(c, name)
        change(folder)
        return EarlyExitDiTPipeline.from_pretrained(folder)

    return run


def model_call(config, x=(2, 1, 8, 8), t=(500.0, 500.0), y=(1, 2), heads=None):
    def run(c):
        model = tiny_dit(num_layers=2)
        apply_early_exit(model, config, heads=heads)
        try:
            return model(torch.randn(*x), timestep=torch.tensor(t), class_labels=torch.tensor(y, dtype=torch.long))
        finally:
            remove_early_exit(model)

    return run


NAN = float("nan")
CASES = [
    # ---------------------------------------------------------------------------------- pipeline call: labels
    ("labels-string", call(class_labels="cat"), TypeError, r"got the string 'cat'"),
    ("labels-empty-list", call(class_labels=[]), ValueError, r"empty sequence"),
    ("labels-empty-tensor", call(class_labels=torch.tensor([], dtype=torch.long)), ValueError, r"empty sequence"),
    ("labels-out-of-range", call(class_labels=[1, 10]), ValueError, r"out-of-range ids \[10\]"),
    ("labels-negative", call(class_labels=-3), ValueError, r"out-of-range ids \[-3\]"),
    ("labels-huge", call(class_labels=[2**70]), ValueError, r"out-of-range ids"),
    ("labels-float", call(class_labels=[1.5]), TypeError, r"non-integer entries \[1.5\]"),
    ("labels-none-entry", call(class_labels=[1, None]), TypeError, r"non-integer entries \[None\]"),
    ("labels-bool", call(class_labels=True), TypeError, r"got bool"),
    ("labels-none", call(class_labels=None), TypeError, r"got NoneType"),
    ("labels-dict", call(class_labels={1: 2}), TypeError, r"got dict"),
    ("labels-numpy-array", call(class_labels=np.array([1, 2])), TypeError, r"got ndarray"),
    ("labels-2d-tensor", call(class_labels=torch.tensor([[1, 2]])), TypeError, r"shape \(1, 2\)"),
    ("labels-float-tensor", call(class_labels=torch.tensor([1.0])), TypeError, r"torch.float32"),
    ("labels-bool-tensor", call(class_labels=torch.tensor([True])), TypeError, r"torch.bool"),
    # ----------------------------------------------------------------------------------- pipeline call: other
    ("steps-zero", call(num_inference_steps=0), ValueError, r"positive integer, got 0"),
    ("steps-negative", call(num_inference_steps=-5), ValueError, r"positive integer, got -5"),
    ("steps-float", call(num_inference_steps=2.0), TypeError, r"got 2.0"),
    ("steps-string", call(num_inference_steps="10"), TypeError, r"got '10'"),
    ("steps-more-than-trained", call(num_inference_steps=1001), ValueError, r"1001"),
    ("guidance-nan", call(guidance_scale=NAN), ValueError, r"got nan"),
    ("guidance-inf", call(guidance_scale=math.inf), ValueError, r"got inf"),
    ("guidance-negative", call(guidance_scale=-1.0), ValueError, r"got -1.0"),
    ("guidance-string", call(guidance_scale="4"), TypeError, r"got '4'"),
    ("output-type", call(output_type="jpg"), ValueError, r"got 'jpg'"),
    ("return-dict-string", call(return_dict="no"), TypeError, r"True or False, got 'no'"),
    ("generator-string", call(generator="seed"), TypeError, r"torch.Generator.*\['str'\]"),
    ("generator-int", call(generator=0), TypeError, r"\['int'\]"),
    ("generator-list-length", call(generator=[torch.Generator()] * 3), ValueError, r"one per image \(2\).*got 3"),
    ("generator-empty-list", call(generator=[]), TypeError, r"generator must be"),
    ("latents-wrong-shape", call(latents=torch.zeros(2, 1, 4, 4)), ValueError, r"\(2, 1, 8, 8\).*\(2, 1, 4, 4\)"),
    ("latents-wrong-batch", call(latents=torch.zeros(3, 1, 8, 8)), ValueError, r"got \(3, 1, 8, 8\)"),
    ("latents-nan", call(latents=torch.full((2, 1, 8, 8), NAN)), ValueError, r"finite.*rows \[0, 1\]"),
    ("latents-inf-one-row", call(latents=torch.zeros(2, 1, 8, 8).index_fill(0, torch.tensor([1]), math.inf)),
     ValueError, r"rows \[1\]"),
    ("latents-int", call(latents=torch.zeros(2, 1, 8, 8, dtype=torch.long)), TypeError, r"floating-point.*int64"),
    ("latents-list", call(latents=[0.0]), TypeError, r"torch.Tensor or None, got list"),
    ("exit-config-dict", call(exit_config={"policy": None}), TypeError, r"EarlyExitConfig or None, got dict"),
    ("exit-config-too-deep", call(exit_config=EarlyExitConfig(policy=StaticDepth(5))), ValueError,
     r"depth 5 but the model has 2 blocks"),
    ("schedule-too-deep", call(exit_config=EarlyExitConfig(policy=TimestepSchedule([500], [3, 1]))), ValueError,
     r"depth 3 but the model has 2"),
    # --------------------------------------------------------------------------------- pipeline construction
    ("transformer-wrong-kind", build(transformer=torch.nn.Linear(1, 1)), TypeError, r"DiTTransformer2DModel, got Linear"),
    ("scheduler-wrong-kind", build(scheduler=torch.nn.Linear(1, 1)), TypeError, r"diffusers scheduler.*got Linear"),
    ("scheduler-none", build(scheduler=None), TypeError, r"got NoneType"),
    ("vae-wrong-kind", build(vae=torch.nn.Linear(1, 1)), TypeError, r"AutoencoderKL.*got Linear"),
    ("vae-other-latent-channels", build(vae=AutoencoderKL(latent_channels=4, block_out_channels=(8,), norm_num_groups=4)),
     ValueError, r"latent_channels \(4\) must equal the transformer's in_channels \(1\)"),
    ("heads-wrong-kind", build(exit_heads=torch.nn.Linear(1, 1)), TypeError, r"UncertaintyHeads or None"),
    ("heads-other-model", build(exit_heads=UncertaintyHeads.from_model(tiny_dit(num_layers=3))), ValueError,
     r"different model \(num_blocks: heads have 3, model has 2\)"),
    ("id2label-bad-key", build(id2label={"x": "cat"}), ValueError, r"id2label keys must be class ids.*\['x'\]"),
    ("id2label-list", build(id2label=["cat"]), TypeError, r"id2label must be a dict"),
    ("default-exit-config-string", build(exit_config="static"), TypeError, r"got str"),
    # ------------------------------------------------------------------------------------- configs, policies
    ("config-policy-string", lambda c: EarlyExitConfig(policy="StaticDepth"), TypeError, r"got str"),
    ("config-policy-class", lambda c: EarlyExitConfig(policy=StaticDepth), TypeError, r"instantiate it"),
    ("config-cfg-pairing", lambda c: EarlyExitConfig(cfg_pairing="both"), ValueError, r"got 'both'"),
    ("config-on-nonfinite", lambda c: EarlyExitConfig(on_nonfinite="ignore"), ValueError,
     r"on_nonfinite must be one of \('fallback', 'raise'\), got 'ignore'"),
    ("config-from-dict-unknown-key", lambda c: EarlyExitConfig.from_dict({"polcy": None}), ValueError, r"\['polcy'\]"),
    ("config-from-dict-list", lambda c: EarlyExitConfig.from_dict([]), ValueError, r"must be a dict, got list"),
    ("config-from-json-garbage", lambda c: EarlyExitConfig.from_json("{not json"), ValueError, r"must be JSON text"),
    ("config-from-json-none", lambda c: EarlyExitConfig.from_json(None), TypeError, r"got NoneType"),
    ("config-from-file-missing", lambda c: EarlyExitConfig.from_file(c.root / "nope.json"), FileNotFoundError,
     r"nope.json"),
    ("policy-dict-no-type", lambda c: EarlyExitConfig(policy={"depth": 3}), ValueError, r"needs a 'type' key"),
    ("policy-dict-unknown-type", lambda c: EarlyExitConfig(policy={"type": "Magic"}), ValueError, r"'Magic'.*known"),
    ("policy-dict-unknown-field", lambda c: EarlyExitConfig(policy={"type": "StaticDepth", "depht": 2}), ValueError,
     r"unknown StaticDepth fields \['depht'\]"),
    ("static-depth-zero", lambda c: StaticDepth(0), ValueError, r"integer >= 1.*got 0"),
    ("static-depth-negative", lambda c: StaticDepth(-2), ValueError, r"got -2"),
    ("static-depth-float", lambda c: StaticDepth(2.5), ValueError, r"got 2.5"),
    ("static-depth-string", lambda c: StaticDepth("3"), ValueError, r"got '3'"),
    ("schedule-unsorted", lambda c: TimestepSchedule([500, 200], [1, 2, 3]), ValueError, r"strictly increasing"),
    ("schedule-duplicate", lambda c: TimestepSchedule([200, 200], [1, 2, 3]), ValueError, r"strictly increasing"),
    ("schedule-nan-boundary", lambda c: TimestepSchedule([NAN], [1, 2]), ValueError, r"must be numbers"),
    ("schedule-inf-boundary", lambda c: TimestepSchedule([math.inf], [1, 2]), ValueError, r"finite"),
    ("schedule-length-mismatch", lambda c: TimestepSchedule([500], [1]), ValueError, r"one entry more"),
    ("schedule-zero-depth", lambda c: TimestepSchedule([500], [2, 0]), ValueError, r"got 0"),
    ("schedule-string-boundaries", lambda c: TimestepSchedule("500", [1, 2]), ValueError, r"list of timesteps"),
    ("threshold-zero", lambda c: UncertaintyThreshold(0.0), ValueError, r"strictly between 0 and 1, got 0.0"),
    ("threshold-one", lambda c: UncertaintyThreshold(1.0), ValueError, r"got 1.0"),
    ("threshold-above-one", lambda c: UncertaintyThreshold(1.5), ValueError, r"got 1.5"),
    ("threshold-negative", lambda c: UncertaintyThreshold(-0.1), ValueError, r"got -0.1"),
    ("threshold-nan", lambda c: UncertaintyThreshold(NAN), ValueError, r"got nan"),
    ("threshold-string", lambda c: UncertaintyThreshold("0.9"), ValueError, r"got '0.9'"),
    ("patience-zero", lambda c: UncertaintyThreshold(0.9, patience=0), ValueError, r"patience.*got 0"),
    ("per-timestep-keys", lambda c: UncertaintyThreshold(0.9, per_timestep={"boundaries": []}), ValueError,
     r"exactly the keys"),
    ("per-timestep-threshold-range", lambda c: UncertaintyThreshold(0.9, per_timestep={"boundaries": [500],
     "thresholds": [0.5, 1.2]}), ValueError, r"got 1.2"),
    # ------------------------------------------------------------------------------------ engine boundaries
    ("apply-to-none", lambda c: apply_early_exit(None), TypeError, r"does not support NoneType"),
    ("apply-to-pipeline", lambda c: apply_early_exit(c.pipe), TypeError, r"EarlyExitDiTPipeline"),
    ("apply-config-dict", lambda c: apply_early_exit(tiny_dit(num_layers=2), {"policy": None}), TypeError,
     r"got dict"),
    ("apply-heads-other-model", lambda c: apply_early_exit(tiny_dit(num_layers=3), EarlyExitConfig(
        policy=UncertaintyThreshold(0.5)), heads=c.heads), ValueError, r"heads have 2, model has 3"),
    ("apply-uncertainty-without-heads", lambda c: apply_early_exit(tiny_dit(num_layers=2), EarlyExitConfig(
        policy=UncertaintyThreshold(0.5))), ValueError, r"needs certainties"),
    ("model-call-empty-batch", model_call(EarlyExitConfig(policy=StaticDepth(1)), x=(0, 1, 8, 8), t=(), y=()),
     ValueError, r"empty batch"),
    ("model-call-timestep-shape", model_call(EarlyExitConfig(policy=StaticDepth(1)), t=(1.0, 2.0, 3.0)), ValueError,
     r"timestep must be a scalar or have shape \(1,\) or \(2,\), got \(3,\)"),
    ("heads-forward-block-index", lambda c: c.heads(7, torch.zeros(1, 16, 32)), ValueError, r"0..1, got 7"),
    ("heads-forward-width", lambda c: c.heads(0, torch.zeros(1, 16, 7)), ValueError, r"\(batch, tokens, 32\).*7\)"),
    ("heads-forward-not-tensor", lambda c: c.heads(0, [[0.0]]), TypeError, r"got list"),
    # --------------------------------------------------------------------------------------------- loaders
    ("heads-load-missing-folder", lambda c: UncertaintyHeads.from_pretrained(c.root / "nope"), OSError, r"nope"),
    ("heads-load-truncated", heads_folder(lambda f: _truncate(f / W)), OSError, r"heads-\d+.*safetensors"),
    ("heads-load-garbage", heads_folder(lambda f: (f / W).write_bytes(b"garbage" * 50)), OSError, r"heads-\d+"),
    ("heads-load-missing-weights", heads_folder(lambda f: (f / W).unlink()), OSError, r"no file named .*safetensors"),
    ("heads-load-pickle-only", heads_folder(lambda f: (f / W).rename(f / "diffusion_pytorch_model.bin")), OSError,
     r"safetensors"),
    ("heads-load-broken-config", heads_folder(lambda f: (f / "config.json").write_text("{")), OSError,
     r"config.json.*not a valid JSON"),
    ("heads-load-more-blocks-than-weights", heads_folder(lambda f: _edit_json(f / "config.json", num_blocks=3)),
     ValueError, r"does not match its weights: missing \['heads.2.bias', 'heads.2.weight'\]"),
    ("heads-load-fewer-blocks-than-weights", heads_folder(lambda f: _edit_json(f / "config.json", num_blocks=1)),
     ValueError, r"unexpected \['heads.1.bias', 'heads.1.weight'\]"),
    ("heads-load-other-width", heads_folder(lambda f: _edit_json(f / "config.json", hidden_dim=64)), ValueError,
     r"heads-\d+.*expected shape"),
    ("pipe-load-missing-folder", lambda c: EarlyExitDiTPipeline.from_pretrained(c.root / "nope"), FileNotFoundError,
     r"no pipeline folder at .*nope"),
    ("pipe-load-truncated-transformer", pipe_folder(lambda f: _truncate(f / "transformer" / W)), OSError,
     r"transformer/diffusion_pytorch_model.safetensors"),
    ("pipe-load-broken-model-index", pipe_folder(lambda f: (f / "model_index.json").write_text("{")), OSError,
     r"model_index.json.*not a valid JSON"),
    ("pipe-load-missing-scheduler", pipe_folder(lambda f: shutil.rmtree(f / "scheduler")), OSError,
     r"scheduler_config.json"),
    ("pipe-load-transformer-config-deeper", pipe_folder(lambda f: _edit_json(f / "transformer" / "config.json",
     num_layers=3), name="plain"), ValueError, r"does not match .*transformer/config.json.*missing \['transformer_blocks.2"),
    ("pipe-load-heads-config-changed", pipe_folder(lambda f: _edit_json(f / "exit_heads" / "config.json",
     num_blocks=3)), ValueError, r"exit_heads.*does not match its weights"),
    ("pipe-load-bad-default-policy", pipe_folder(lambda f: _edit_json(f / "model_index.json",
     exit_config={"policy": {"type": "Nope"}})), ValueError, r"unknown policy type 'Nope'"),
]


def test_the_corpus_is_large_and_named_uniquely():
    names = [case[0] for case in CASES]
    assert len(names) >= 50 and len(set(names)) == len(names)


@pytest.mark.parametrize(("name", "run", "error", "match"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_raises_a_clear_error(ctx, name, run, error, match):
    with pytest.raises(error, match=match) as info:
        run(ctx)
    # Never an error from deep inside torch or Python's containers.
    assert not isinstance(info.value, (IndexError, KeyError, AttributeError, RuntimeError))
