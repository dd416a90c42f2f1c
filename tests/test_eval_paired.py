"""Paired statistics: our Frechet distance against torchmetrics', paired intervals that see what unpaired ones
miss, and per-image fidelity."""

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from ee_diffusion.eval.paired import FrechetReference, PairedFID, fidelity, ssim_kernel_size


class _Identity(torch.nn.Module):
    num_features = 6

    def forward(self, x):
        return x


def _features(n, seed, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64) * scale + shift


def test_frechet_distance_equals_torchmetrics():
    real, fake = _features(400, 0), _features(300, 1, shift=0.3, scale=1.2)
    metric = FrechetInceptionDistance(feature=_Identity(), normalize=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert FrechetReference(real).fid(fake) == pytest.approx(float(metric.compute()), rel=1e-6)
    assert FrechetReference(real).fid(real) == pytest.approx(0.0, abs=1e-9)


def test_a_paired_interval_detects_a_shift_that_the_seed_spread_hides():
    real = _features(1000, 0)
    base = _features(500, 1)
    paired = PairedFID(real, num_images=500, num_resamples=300)
    paired.add("a", base)
    paired.add("a_shifted", base + 0.08)  # the same images, slightly worse
    seeds = [paired.add(f"seed{s}", _features(500, s)) for s in range(2, 7)]  # other noise draws of one method
    d = paired.difference("a_shifted", "a")
    assert 0 < d["low"] <= d["delta"] <= d["high"]
    # A method whose images stay close to `a`'s, image by image: its paired interval is far narrower than the
    # spread between noise seeds of one and the same method, which an unpaired comparison has to live with.
    paired.add("a_perturbed", base + 0.1 * _features(500, 99))
    close = paired.difference("a_perturbed", "a")
    assert close["high"] - close["low"] < (max(seeds) - min(seeds)) / 3
    same = paired.difference("a", "a")
    assert same == {"delta": 0.0, "low": 0.0, "high": 0.0}
    unpaired = paired.interval("a")
    assert unpaired["high"] - unpaired["low"] > d["high"] - d["low"]


def test_bad_inputs_name_what_is_expected():
    paired = PairedFID(_features(50, 0), num_images=20, num_resamples=10)
    with pytest.raises(ValueError, match=r"features must be \(num_images, F\) = \(20, 6\), got \(19, 6\)"):
        paired.add("x", _features(19, 1))
    with pytest.raises(KeyError, match=r"no scored set named 'y'; scored: \[\]"):
        paired.difference("y", "y")
    with pytest.raises(ValueError, match="confidence must be in"):
        PairedFID(_features(50, 0), num_images=20, confidence=1.0)
    with pytest.raises(ValueError, match=r"real_features must be \(N >= 2, F\)"):
        FrechetReference(torch.zeros(1, 6))


def test_fidelity_is_per_image_against_the_same_noise():
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(4, 1, 8, 8, generator=g)
    same = fidelity(reference, reference)
    assert same["psnr_db"] == 100.0 and same["ssim"] == pytest.approx(1.0)
    shifted = (reference + 0.1).clamp(0, 1)
    mse = ((shifted - reference) ** 2).flatten(1).mean(1)
    expected = (10 * torch.log10(1 / mse)).mean()
    out = fidelity(shifted, reference, features=torch.ones(4, 3), reference_features=torch.zeros(4, 3))
    assert out["psnr_db"] == pytest.approx(float(expected), rel=1e-6)
    assert out["ssim"] < 1 and out["feature_distance"] == pytest.approx(3 ** 0.5)
    assert ssim_kernel_size(8, 8) == 7 and ssim_kernel_size(64, 64) == 11
    with pytest.raises(ValueError, match="same shape"):
        fidelity(reference, reference[:2])
