"""Datasets for training: scikit-learn's digits, an image folder, and a registry for more.

Every dataset is a `TensorImageDataset`: images (N, C, H, W) float32 in [-1, 1] and labels (N,) long, held in
memory (the datasets this package trains on are small). `get_dataset(name, **options)` builds a registered one:

```py
>>> ds = get_dataset("digits", image_size=8)
>>> len(ds), ds.images.shape[1:], ds.num_classes, ds.id2label()[3]
(1797, torch.Size([1, 8, 8]), 10, '3')

```

Add a dataset with `@register_dataset("name")` on a function that returns a `TensorImageDataset`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .._validation import check_int

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
RESIZE_MODES = ("pad", "nearest", "bilinear")


class TensorImageDataset(Dataset):
    """Images (N, C, H, W) in [-1, 1] with class labels (N,); `ds[i]` is `(image, label)`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> None:
        if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be (N, C, S, S) square images, got shape {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images.float().contiguous()
        self.labels = labels.long().contiguous()
        self.class_names = list(class_names)
        if len(self.labels) and int(self.labels.max()) >= len(self.class_names):
            raise ValueError(f"label {int(self.labels.max())} has no name; {len(self.class_names)} class names given")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))


_REGISTRY: dict[str, Callable[..., TensorImageDataset]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., TensorImageDataset]], Callable[..., TensorImageDataset]]:
    """Decorator: make `get_dataset(name, **options)` call the decorated factory with `options`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")

    def decorate(factory: Callable[..., TensorImageDataset]) -> Callable[..., TensorImageDataset]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"a dataset named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_datasets() -> list[str]:
    return sorted(_REGISTRY)


def get_dataset(name: str, **options: Any) -> TensorImageDataset:
    """Build the registered dataset `name`; unknown names raise a `ValueError` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(available_datasets())}")
    return _REGISTRY[name](**options)


def resize(images: torch.Tensor, size: int, mode: str = "pad") -> torch.Tensor:
    """Square images (N, C, S, S) in [-1, 1] -> (N, C, size, size).

    `pad` centres them on a background of -1 (size must be >= S); `nearest`/`bilinear` resample.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    current = images.shape[-1]
    if size == current:
        return images
    if mode == "pad":
        if size < current:
            raise ValueError(f"cannot pad {current}x{current} images to a smaller size {size}; use 'bilinear'")
        before = (size - current) // 2
        after = size - current - before
        return F.pad(images, (before, after, before, after), value=-1.0)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(images, size=(size, size), mode=mode, **kwargs).clamp(-1, 1)


@register_dataset("digits")
def digits(image_size: int = 8, resize_mode: str = "pad") -> TensorImageDataset:
    """scikit-learn's 1797 handwritten digits (8x8, values 0..16), scaled to [-1, 1]; labels 0..9."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # (N, 1, 8, 8)
    images = resize(images, check_int(image_size, "image_size", what="pixels"), resize_mode)
    return TensorImageDataset(images, torch.from_numpy(data.target), [str(d) for d in range(10)])


@register_dataset("image_folder")
def image_folder(root: str, image_size: int, channels: int = 3, resize_mode: str = "bilinear") -> TensorImageDataset:
    """Images in `root/<class name>/*.png` (also jpg, bmp, ...); classes in sorted name order.

    Images are converted to grey (`channels=1`) or RGB (`channels=3`), resized to `image_size` squares with
    Pillow and scaled to [-1, 1].
    """
    from PIL import Image

    size = check_int(image_size, "image_size", what="pixels")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    folder = Path(root)
    if not folder.is_dir():
        raise ValueError(f"image folder {str(folder)!r} does not exist")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {str(folder)!r} has no class subfolders (expected root/<class>/*.png)")
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "pad": Image.BILINEAR}[resize_mode]
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize((size, size), resample)
                array = np.asarray(img, dtype=np.float32).reshape(size, size, channels)
            images.append(torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0)
            labels.append(label)
    if not images:
        raise ValueError(f"no images with suffixes {IMAGE_SUFFIXES} under {str(folder)!r}")
    return TensorImageDataset(torch.stack(images), torch.tensor(labels), classes)


def seeded_generator(*parts: int) -> torch.Generator:
    """An independent, reproducible random stream per tuple of ints (seed, step, rank, ...): no state to checkpoint.

    ```py
    >>> torch.equal(torch.rand(2, generator=seeded_generator(0, 5)), torch.rand(2, generator=seeded_generator(0, 5)))
    True

    ```
    """
    state = np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


class StepBatches:
    """The batches of a run as a pure function of the optimizer step: exact resume needs no sampler state.

    Epoch e is a permutation `randperm(N)` seeded with (seed, e); step s takes the s-th block of `batch_size` indices of
    the epoch it falls in (incomplete tail blocks are dropped), and rank r of w processes takes the r-th slice
    of that block. `batch(step)` is this rank's `(images (b, C, S, S), labels (b,))` of that step.
    """

    def __init__(self, dataset: TensorImageDataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes {world_size}")
        if batch_size > len(dataset):
            raise ValueError(f"batch_size {batch_size} is larger than the dataset ({len(dataset)} images)")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.steps_per_epoch = len(dataset) // batch_size
        self._epoch: tuple[int, torch.Tensor] | None = None

    def indices(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch = (epoch, torch.randperm(len(self.dataset), generator=generator))
        block = self._epoch[1][position * self.batch_size : (position + 1) * self.batch_size]
        per_rank = self.batch_size // self.world_size
        return block[self.rank * per_rank : (self.rank + 1) * per_rank]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.indices(step)
        return self.dataset.images[index], self.dataset.labels[index]
