"""The user's real images for FID: an image folder, or precomputed statistics of one.

`ImageFolder(path, resolution, channels)` lists the images under a folder (recursively) and reads only their
headers up front, so an empty folder, unreadable files, and mixed sizes or modes are known - and reported - before
any sampling. Images are decoded batch by batch, converted to the model's channels ("RGB" or "L"), resized
(bicubic, shorter side) and center-cropped to the model's resolution, as FID practice does, and handed over as
uint8 (B, C, H, W), what a saved sample would hold.

`RealStats` is the fixed side of FID for one feature network: mean (F,), covariance (F, F) and the number of
images, saved as safetensors (float64) with the network's name in the metadata, so a large reference set is
encoded once and reused with `--real-stats`.

```py
>>> import tempfile
>>> from pathlib import Path
>>> from PIL import Image
>>> folder = Path(tempfile.mkdtemp())
>>> Image.new("RGB", (20, 10), "red").save(folder / "a.png"); Image.new("L", (16, 16)).save(folder / "b.jpg")
>>> real = ImageFolder(folder, resolution=8, channels=3)
>>> real.describe()
'2 images (1 converted from L to RGB; 2 sizes, 2 resized and center-cropped to 8x8)'
>>> next(real.batches(4)).shape
torch.Size([2, 3, 8, 8])

```
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_save_safetensors
from .._validation import check_int

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


class ImageFolder:
    """The images under `path`, resized and center-cropped to `resolution`, with `channels` (1: "L", 3: "RGB").

    Raises `ValueError` for a missing or empty folder and for files with an image suffix that cannot be read.
    """

    def __init__(self, path: str | os.PathLike, resolution: int, channels: int) -> None:
        from PIL import Image, UnidentifiedImageError

        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        check_int(resolution, "resolution", 1, "the model's image side")
        root = Path(path)
        if not root.is_dir():
            raise ValueError(f"real image folder {str(path)!r} does not exist or is not a folder")
        self.root, self.resolution = root, resolution
        self.mode = "RGB" if channels == 3 else "L"
        self.files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            others = sum(1 for p in root.rglob("*") if p.is_file())
            raise ValueError(f"real image folder {str(path)!r} holds no images ({others} other files); expected "
                             f"files ending in {', '.join(IMAGE_SUFFIXES)}")
        self.modes: Counter[str] = Counter()
        self.sizes: Counter[tuple[int, int]] = Counter()
        bad = []
        for file in self.files:  # headers only: PIL decodes pixels lazily
            try:
                with Image.open(file) as image:
                    self.modes[image.mode] += 1
                    self.sizes[image.size] += 1
            except (UnidentifiedImageError, OSError) as error:
                bad.append(f"{file.relative_to(root)} ({type(error).__name__})")
        if bad:
            shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise ValueError(f"{len(bad)} of the {len(self.files)} files in {str(path)!r} cannot be read as images: "
                             f"{shown}")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def converted(self) -> int:
        """Images whose mode is not the target mode (converted on reading)."""
        return sum(n for mode, n in self.modes.items() if mode != self.mode)

    @property
    def resized(self) -> int:
        """Images not already `resolution` x `resolution` (resized and center-cropped on reading)."""
        return sum(n for size, n in self.sizes.items() if size != (self.resolution, self.resolution))

    def describe(self) -> str:
        """How many images, and what reading them does (conversions, resizing), in one phrase."""
        others = sorted(m for m in self.modes if m != self.mode)
        parts = [f"{self.converted} converted from {'/'.join(others)} to {self.mode}"] if others else []
        if self.resized:
            parts.append(f"{len(self.sizes)} size{'s' if len(self.sizes) > 1 else ''}, {self.resized} resized and "
                         f"center-cropped to {self.resolution}x{self.resolution}")
        return f"{len(self)} images" + (f" ({'; '.join(parts)})" if parts else "")

    def summary(self) -> dict:
        """What the report records about the folder."""
        common = self.sizes.most_common(5)
        return {"folder": str(self.root), "count": len(self), "mode": self.mode, "modes": dict(self.modes),
                "converted": self.converted, "resized": self.resized, "resolution": self.resolution,
                "most_common_sizes": {f"{w}x{h}": n for (w, h), n in common}, "described": self.describe()}

    def load(self, file: Path) -> np.ndarray:
        """One image as uint8 (C, resolution, resolution): converted, shorter side resized (bicubic), center-cropped."""
        from PIL import Image

        with Image.open(file) as image:
            image = image.convert(self.mode)
            w, h = image.size
            scale = self.resolution / min(w, h)
            size = (max(self.resolution, round(w * scale)), max(self.resolution, round(h * scale)))
            if size != (w, h):
                image = image.resize(size, Image.Resampling.BICUBIC)
            left, top = (size[0] - self.resolution) // 2, (size[1] - self.resolution) // 2
            image = image.crop((left, top, left + self.resolution, top + self.resolution))
            array = np.asarray(image, dtype=np.uint8)
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def batches(self, batch_size: int, files: list[Path] | None = None) -> Iterator[torch.Tensor]:
        """uint8 (B, C, resolution, resolution) batches of `files` (default: all) in order."""
        files = self.files if files is None else files
        for start in range(0, len(files), batch_size):
            yield torch.from_numpy(np.stack([self.load(f) for f in files[start : start + batch_size]]))


@dataclass
class RealStats:
    """Mean (F,) and covariance (F, F) of a real set's features under the feature network `feature_net`."""

    mean: torch.Tensor
    cov: torch.Tensor
    count: int
    feature_net: str

    def __post_init__(self) -> None:
        f = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if self.mean.ndim != 1 or tuple(self.cov.shape) != (f, f):
            raise ValueError(f"real statistics need mean (F,) and cov (F, F), got {tuple(self.mean.shape)} and "
                             f"{tuple(self.cov.shape)}")
        if self.count < 2:
            raise ValueError(f"real statistics need at least 2 images, got count {self.count}")

    @property
    def num_features(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_features(cls, features: torch.Tensor, feature_net: str) -> RealStats:
        from .paired import moments

        mean, cov = moments(features)
        return cls(mean, cov, int(features.shape[0]), feature_net)

    def save(self, path: str | os.PathLike) -> None:
        atomic_save_safetensors({"mean": self.mean.double().contiguous(), "cov": self.cov.double().contiguous()},
                                path, metadata={"count": str(self.count), "feature_net": self.feature_net})

    @classmethod
    def load(cls, path: str | os.PathLike) -> RealStats:
        """Read a statistics file; `ValueError` naming what is missing."""
        from safetensors import safe_open

        if not Path(path).is_file():
            raise ValueError(f"real statistics file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for a bad header
            raise ValueError(f"{str(path)!r} is not a safetensors file ({error})") from None
        missing = [k for k in ("mean", "cov") if k not in tensors] + [k for k in ("count", "feature_net")
                                                                       if k not in metadata]
        if missing:
            raise ValueError(f"real statistics file {str(path)!r} lacks {missing}: expected tensors 'mean' (F,) and "
                             f"'cov' (F, F) and metadata 'count' and 'feature_net' (as `bench --pipeline` writes)")
        return cls(tensors["mean"].double(), tensors["cov"].double(), int(metadata["count"]), metadata["feature_net"])


def warn_small_set(count: int, num_features: int, what: str) -> str | None:
    """A warning (logged and returned) when `count` images cannot give a full-rank F x F covariance."""
    if count > num_features:
        return None
    message = (f"{what}: {count} images for {num_features} features - the covariance has rank at most "
               f"{count - 1} < {num_features}, so FID is unstable and biased upwards; use more than {num_features} "
               f"images (Inception FID is reported on 10,000-50,000)")
    logger.warning(message)
    return message
