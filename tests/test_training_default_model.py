"""The shipped digits model: small, loadable, with heads and a default exit config that really exits."""

import json

import torch
from safetensors import safe_open

from ee_diffusion import EarlyExitConfig, load_default_pipeline
from ee_diffusion.default_model import DEFAULT_MODEL_DIR


def test_asset_is_small_safetensors_and_json():
    files = [f for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20
    assert {f.suffix for f in files} <= {".json", ".safetensors", ".md"}
    with safe_open(DEFAULT_MODEL_DIR / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    index = json.loads((DEFAULT_MODEL_DIR / "model_index.json").read_text())
    assert index["exit_heads"] == ["ee_diffusion.heads", "UncertaintyHeads"]


def test_default_pipeline_samples_with_its_exit_config():
    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.dtype == torch.float32 and pipe.exit_heads is not None
    assert pipe.default_exit_config.policy is not None
    kwargs = dict(class_labels=[0, 1, 2, 3], num_inference_steps=4, output_type="np")
    exited = pipe(generator=torch.Generator().manual_seed(0), **kwargs)
    full = pipe(generator=torch.Generator().manual_seed(0), exit_config=EarlyExitConfig(), **kwargs)
    assert exited.images.shape == (4, 8, 8, 1)
    assert exited.exit_stats.depth_fraction < 1.0 and full.exit_stats.depth_fraction == 1.0
