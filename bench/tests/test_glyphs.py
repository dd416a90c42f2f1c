"""The glyphs benchmark set: deterministic per seed, independent across seeds, every font renders every class."""

import pytest
import torch

from ee_diffusion.training.data import get_dataset


def test_glyphs_are_a_pure_function_of_the_seed():
    a = get_dataset("glyphs", per_font=1, charset="digits", seed=3)
    b = get_dataset("glyphs", per_font=1, charset="digits", seed=3)
    c = get_dataset("glyphs", per_font=1, charset="digits", seed=4)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.equal(a.labels, c.labels)
    # Every glyph has ink and background.
    ink = (a.images > 0).flatten(1).float().mean(1)
    assert bool((ink > 0.005).all() and (ink < 0.7).all())


def test_the_glyphs_feature_nets_are_small_and_accurate():
    from bench.glyphs import FEATURE_NET_DIR
    from ee_diffusion.eval.features import load_feature_net

    for name in ("glyphs", "glyphs-pool"):
        assert load_feature_net(name).meta["held_out_accuracy"] >= 0.85
    assert all(f.stat().st_size < 2 * 2**20 for f in FEATURE_NET_DIR.iterdir())


def test_glyphs_reject_bad_options():
    with pytest.raises(ValueError, match="charset"):
        get_dataset("glyphs", charset="greek")
    with pytest.raises(ValueError, match="per_font"):
        get_dataset("glyphs", per_font=0)


def test_a_class_balanced_glyph_subset_draws_from_every_font():
    """The renderer goes font by font; the real sets are shuffled once, so a balanced subset of 8 images per
    class is a fair sample: its FID against the reference is small, unlike that of the first fonts alone."""
    from ee_diffusion.eval.features import load_feature_net
    from bench.glyphs import balanced_subset
    from ee_diffusion.eval.quality import REAL_SETS, QualityEvaluator, real_images

    reference, _ = real_images("glyphs", "reference")
    images, labels = real_images("glyphs", "floor")
    subset, subset_labels = balanced_subset(images, labels, 208, 26)
    assert torch.bincount(subset_labels).tolist() == [8] * 26
    evaluator = QualityEvaluator(load_feature_net("glyphs"), reference)
    score = evaluator.score(subset, subset_labels, kid=False)
    assert score["fid"] < 15
    assert score["accuracy"] > 0.8
    # The same draw in rendering order: the balanced subset then comes from the first fonts only.
    rendered = get_dataset("glyphs", **REAL_SETS["glyphs"]["floor"])
    first_fonts, _ = balanced_subset((rendered.images + 1) / 2, rendered.labels, 208, 26)
    assert evaluator.score(first_fonts, kid=False)["fid"] > 2 * score["fid"]
