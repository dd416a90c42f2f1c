"""`TensorImageDataset`: what every training dataset is (images and labels held in memory).

```py
>>> import torch
>>> ds = TensorImageDataset(torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 1]), ["a", "b"])
>>> len(ds), ds.num_classes, ds.image_size, ds.id2label()
(3, 2, 4, {0: 'a', 1: 'b'})

```
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset


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
