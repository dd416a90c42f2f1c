"""Our research models beside the demo one (`bench.models`): each loads as its setting says and samples."""

import pytest
import torch

from bench.models import SETTINGS, load_digits_unet, load_pretrained_pipeline, load_setting_pipeline
from ee_diffusion import EarlyExitConfig
from ee_diffusion.default_model import SETTINGS as PACKAGE_SETTINGS
from ee_diffusion.eval.quality import real_images
from ee_diffusion.schedules import StaticDepth

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_settings_extend_the_packages_and_every_folder_is_present():
    assert SETTINGS["digits"] == PACKAGE_SETTINGS["digits"]
    for name, setting in SETTINGS.items():
        assert (setting.folder / "model_index.json").is_file(), name
    with pytest.raises(ValueError, match=r"unknown setting 'cifar'; known: digits, glyphs"):
        load_setting_pipeline("cifar")


def test_the_pretrained_twin_has_no_heads():
    pipe = load_pretrained_pipeline()
    assert pipe.exit_heads is None and pipe.transformer.config.num_layers == 8


def test_shipped_digits_unet_samples_with_exits():
    pipe = load_digits_unet()
    pipe.set_progress_bar_config(disable=True)
    assert next(pipe.unet.parameters()).dtype == torch.float32
    out = pipe([3, 7], num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt",
               exit_config=EarlyExitConfig(policy=StaticDepth(2)))
    assert out.images.shape == (2, 1, 8, 8) and torch.isfinite(out.images).all()
    assert out.exit_stats.depth_fraction == pytest.approx(2 / 3)


def test_the_shipped_glyphs_model_matches_its_setting():
    pipe = load_setting_pipeline("glyphs")
    real, labels = real_images("glyphs")
    config = pipe.transformer.config
    assert (config.in_channels, config.sample_size, config.num_embeds_ada_norm) == (1, real.shape[-1], 26)
    assert int(labels.max()) + 1 == 26 and pipe.exit_heads is not None
    out = pipe(class_labels=[0, 25], num_inference_steps=2, guidance_scale=1.0, output_type="np")
    assert out.images.shape == (2, 8, 8, 1)
