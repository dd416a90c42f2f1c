"""Paired statistics: bootstrap intervals of FID differences, and per-image fidelity under the same noise.

Every method of a benchmark samples image `i` from the same initial noise (`eval.pipeline_sampling`), so two
methods are compared *paired*: one bootstrap resample of image indices is applied to both feature sets, and the
interval of FID(a) - FID(b) over the resamples is much narrower than the unpaired spread between two noise seeds.
The real statistics stay fixed (they are the same for every method, so they cancel in a comparison).

`PairedFID` draws the resamples once (seeded) and keeps every scored set's FID on each of them, so any two sets
can be compared afterwards without recomputing features.

```py
>>> import torch
>>> real = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
>>> paired = PairedFID(real, num_images=300, num_resamples=200)
>>> a = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
>>> fids = paired.add("a", a), paired.add("a_shifted", a + 0.3)
>>> d = paired.difference("a_shifted", "a")
>>> d["low"] > 0, d["low"] <= d["delta"] <= d["high"]
(True, True)

```
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_int


def moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (..., F) and unbiased covariance (..., F, F) of (..., N, F) features, in float64."""
    x = features.double()
    mean = x.mean(-2)
    centered = x - mean.unsqueeze(-2)
    cov = centered.transpose(-1, -2) @ centered / (x.shape[-2] - 1)
    return mean, cov


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues from rounding clipped)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt().unsqueeze(-2)) @ vectors.transpose(-1, -2)


class FrechetReference:
    """The fixed side of FID: the real features' mean, covariance and the covariance's square root.

    `distance(mean, cov)` is the Frechet distance of Gaussians ||m - m_r||^2 + tr(C) + tr(C_r) - 2 tr((C_r^1/2 C
    C_r^1/2)^1/2), batched over leading dimensions. The symmetric form equals tr((C C_r)^1/2) and needs only
    `eigvalsh`, which is stable in float64.
    """

    def __init__(self, real_features: torch.Tensor) -> None:
        if real_features.ndim != 2 or real_features.shape[0] < 2:
            raise ValueError(f"real_features must be (N >= 2, F), got shape {tuple(real_features.shape)}")
        self._set(*moments(real_features))

    @classmethod
    def from_moments(cls, mean: torch.Tensor, cov: torch.Tensor) -> FrechetReference:
        """The reference of precomputed real statistics: `mean` (F,) and `cov` (F, F)."""
        if mean.ndim != 1 or tuple(cov.shape) != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"mean must be (F,) and cov (F, F), got {tuple(mean.shape)} and {tuple(cov.shape)}")
        reference = cls.__new__(cls)
        reference._set(mean.double(), cov.double())
        return reference

    def _set(self, mean: torch.Tensor, cov: torch.Tensor) -> None:
        self.mean, self.cov = mean, cov
        self.cov_sqrt = _psd_sqrt(cov)
        self.num_features = int(mean.shape[0])

    def distance(self, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """FID of Gaussians with `mean` (..., F) and `cov` (..., F, F) against the real ones; shape (...)."""
        middle = self.cov_sqrt @ cov @ self.cov_sqrt
        return self._frechet(mean, torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1), middle)

    def _frechet(self, mean: torch.Tensor, trace: torch.Tensor, middle: torch.Tensor) -> torch.Tensor:
        """||m - m_r||^2 + tr(C) + tr(C_r) - 2 tr(middle^1/2), from the generated mean (..., F), tr(C) (...) and a
        matrix (..., K, K) with the non-zero eigenvalues of C_r^1/2 C C_r^1/2."""
        middle = (middle + middle.transpose(-1, -2)) / 2  # exact symmetry for eigvalsh
        root_trace = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum(-1)
        diff = mean - self.mean
        return ((diff * diff).sum(-1) + (trace + torch.trace(self.cov)) - 2 * root_trace).clamp(min=0)

    def of_features(self, features: torch.Tensor) -> torch.Tensor:
        """FID of (..., N, F) generated features; shape (...).

        With fewer images than features (N <= F: a small test set under 2048-d Inception features, say) the
        covariance has rank < N and tr((C_r^1/2 C C_r^1/2)^1/2) is computed from the N x N Gram matrix of
        X C_r^1/2 (X: the centered features), which has the same non-zero eigenvalues, instead of F x F products.
        """
        x = features.double()
        n = x.shape[-2]
        if n > self.num_features:
            return self.distance(*moments(x))
        mean = x.mean(-2)
        centered = x - mean.unsqueeze(-2)  # (..., N, F)
        projected = centered @ self.cov_sqrt  # (..., N, F)
        gram = projected @ projected.transpose(-1, -2) / (n - 1)  # (..., N, N)
        return self._frechet(mean, (centered * centered).sum((-2, -1)) / (n - 1), gram)

    def fid(self, features: torch.Tensor) -> float:
        """FID of (N, F) generated features."""
        return float(self.of_features(features))


class PairedFID:
    """FIDs of sets of `num_images` generated features on shared bootstrap resamples, for paired intervals.

    Args:
        real_features: (M, F) features of the real reference set, or its `FrechetReference` (fixed).
        num_images: N, the size of every scored set; image i of every set comes from the same noise.
        num_resamples: bootstrap resamples of the N image indices (>= 200 for a 90% interval).
        confidence: two-sided coverage of the intervals (percentile bootstrap).
        seed: seed of the resampled indices (the same for every set).
    """

    def __init__(self, real_features: torch.Tensor | FrechetReference, num_images: int, num_resamples: int = 200,
                 confidence: float = 0.9, seed: int = 0, chunk: int = 25) -> None:
        check_int(num_images, "num_images", 2, "images per scored set")
        check_int(num_resamples, "num_resamples", 1, "bootstrap resamples")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
        self.reference = real_features if isinstance(real_features, FrechetReference) else FrechetReference(real_features)
        self.num_images = num_images
        self.confidence = confidence
        generator = torch.Generator().manual_seed(seed)
        # (R, N) image indices, drawn once: every set is resampled with the same rows.
        self.indices = torch.randint(0, num_images, (num_resamples, num_images), generator=generator)
        self.chunk = chunk
        self.point: dict[str, float] = {}
        self.resampled: dict[str, torch.Tensor] = {}  # name -> (R,) FIDs

    def add(self, name: str, features: torch.Tensor) -> float:
        """Score (N, F) features under `name` (on the full set and every resample); returns the FID."""
        if features.ndim != 2 or features.shape[0] != self.num_images or features.shape[1] != self.reference.num_features:
            raise ValueError(
                f"features must be (num_images, F) = ({self.num_images}, {self.reference.num_features}), got "
                f"{tuple(features.shape)}"
            )
        x = features.double()
        self.point[name] = self.reference.fid(x)
        parts = []
        # (r, N) resamples at a time, r * (N * F + F * F) doubles (about 400 MB at most) in memory.
        f = self.reference.num_features
        chunk = max(1, min(self.chunk, int(5e7 // (self.num_images * f + f * f))))
        for rows in self.indices.split(chunk):
            parts.append(self.reference.of_features(x[rows]))
        self.resampled[name] = torch.cat(parts)
        return self.point[name]

    def _bounds(self, values: torch.Tensor) -> tuple[float, float]:
        tail = (1 - self.confidence) / 2
        low, high = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=values.dtype))
        return float(low), float(high)

    def interval(self, name: str) -> dict[str, float]:
        """FID of `name` with its (unpaired) bootstrap interval."""
        low, high = self._bounds(self.resampled[self._known(name)])
        return {"fid": self.point[name], "low": low, "high": high}

    def difference(self, name: str, other: str) -> dict[str, float]:
        """FID(name) - FID(other) on the full sets (`delta`) with its paired bootstrap interval (`low`, `high`)."""
        diffs = self.resampled[self._known(name)] - self.resampled[self._known(other)]
        low, high = self._bounds(diffs)
        return {"delta": self.point[name] - self.point[other], "low": low, "high": high}

    def _known(self, name: str) -> str:
        if name not in self.point:
            raise KeyError(f"no scored set named {name!r}; scored: {sorted(self.point)}")
        return name


class PairedFIDs:
    """`PairedFID`s of one image set under every feature network, on the same resampled image indices.

    FIDs of different networks are never compared with each other: each network gives its own paired intervals,
    and a decision asks for all of them (`eval.frontier.holds_under_every_net`). The first network is the
    primary one, whose numbers fill a report's single-number columns.

    ```py
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> reals = {"a": torch.randn(50, 3), "b": torch.randn(50, 2)}
    >>> scores = PairedFIDs(reals, num_images=20, num_resamples=30)
    >>> sorted(scores.add("x", {"a": torch.randn(20, 3), "b": torch.randn(20, 2)}))
    ['a', 'b']
    >>> _ = scores.add("y", {"a": torch.randn(20, 3) + 1, "b": torch.randn(20, 2)})
    >>> d = scores.difference("y", "x"); d["delta"] > 0, sorted(d["by_net"])
    (True, ['a', 'b'])

    ```
    """

    def __init__(self, reals: dict[str, torch.Tensor | FrechetReference], num_images: int, num_resamples: int = 200,
                 confidence: float = 0.9) -> None:
        if not reals:
            raise ValueError("PairedFIDs needs at least one feature network, got none")
        self.sets = {name: PairedFID(real, num_images, num_resamples, confidence) for name, real in reals.items()}
        self.primary = next(iter(self.sets))
        self.num_images = num_images

    @property
    def resampled(self) -> dict[str, torch.Tensor]:
        """The primary network's (R,) resampled FIDs by set name."""
        return self.sets[self.primary].resampled

    def add(self, name: str, features: dict[str, torch.Tensor]) -> dict[str, float]:
        """Score (N, F) features per network (a dict with one entry per network); returns the FIDs by network."""
        if set(features) != set(self.sets):
            raise ValueError(f"need features under {sorted(self.sets)}, got {sorted(features)}")
        return {net: paired.add(name, features[net]) for net, paired in self.sets.items()}

    def fids(self, name: str) -> dict[str, float]:
        return {net: paired.point[name] for net, paired in self.sets.items()}

    def difference(self, name: str, other: str) -> dict[str, Any]:
        """FID(name) - FID(other) under the primary network, with `by_net` holding every network's interval."""
        by_net = {net: paired.difference(name, other) for net, paired in self.sets.items()}
        return {**by_net[self.primary], "by_net": by_net}


def ssim_kernel_size(height: int, width: int) -> int:
    """The largest odd Gaussian window <= 11 (torchmetrics' default) that fits the image: 7 for 8x8 images."""
    size = min(11, height, width)
    return size if size % 2 else size - 1


@torch.no_grad()
def fidelity(images: torch.Tensor, reference: torch.Tensor, features: torch.Tensor | None = None,
             reference_features: torch.Tensor | None = None) -> dict[str, Any]:
    """Per-image fidelity of (N, C, H, W) `images` in [0, 1] to `reference` (the reference's image from the same
    noise): mean PSNR (dB, per image; identical images count as 100 dB), mean SSIM (torchmetrics, Gaussian window
    `ssim_kernel_size`) and, given features, the mean L2 distance between the two images' features."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if images.shape != reference.shape:
        raise ValueError(f"images and reference must have the same shape, got {tuple(images.shape)} and "
                         f"{tuple(reference.shape)}")
    x, y = images.double(), reference.double()
    # Per image (reduction over C, H, W only); identical images give inf, capped at 100 dB.
    psnr = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp(max=100.0)
    kernel = ssim_kernel_size(images.shape[-2], images.shape[-1])
    ssim = structural_similarity_index_measure(x, y, data_range=1.0, kernel_size=kernel, reduction="none")
    out: dict[str, Any] = {"psnr_db": float(psnr.mean()), "ssim": float(ssim.mean()), "ssim_kernel": kernel}
    if features is not None and reference_features is not None:
        out["feature_distance"] = float((features.double() - reference_features.double()).norm(dim=1).mean())
    return out
