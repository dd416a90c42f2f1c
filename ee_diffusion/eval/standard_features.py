"""The feature networks the field reports FID with: Inception-v3 (pool3, 2048-d) and CLIP image embeddings.

Nothing is downloaded: the user passes files they hold.

- `FIDInceptionV3`: the Inception-v3 of TensorFlow's 2015-12-05 FID graph, in the layout of the
  `pt_inception-2015-12-05-6726825d.pth` state dict that pytorch-fid and torchmetrics (torch-fidelity) load
  (torchvision's module names; the FID variants of the last blocks: average pooling without the padded zeros in
  every "Mixed" block and max pooling in the pool branch of `Mixed_7c`). `load_inception(path)` loads such a file
  (`.pth` read with `weights_only=True`, or `.safetensors`) strictly, and names every missing, unexpected or
  wrongly shaped tensor with its expected and received shape. Like torchmetrics' `NoTrainInceptionV3` it takes
  uint8 images in [0, 255], (B, 3, H, W), so `FrechetInceptionDistance(feature=net)` accepts it as is.
- `ClipImageFeatures`: image embeddings of a local transformers CLIP folder (`CLIPModel`, `CLIPVisionModel` or
  `CLIPVisionModelWithProjection`), for CLIP-FID; with a full `CLIPModel` and its tokenizer, `clip_score`
  (torchmetrics' definition: 100 * max(cos(image, text), 0)) for text-conditioned pipelines.

FIDs are comparable only under the same network at the same input resolution: the bench report names both.

```py
>>> import torch
>>> net = FIDInceptionV3(resolution=75)
>>> net.num_features, tuple(net(torch.zeros(2, 3, 16, 16, dtype=torch.uint8)).shape)
(2048, (2, 2048))

```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import load_safetensors, read_json_file

#: The file name pytorch-fid and torch-fidelity distribute the FID Inception weights under (what to pass).
INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
#: The input side the field computes FID at; the network accepts >= 75 (its smallest valid input).
INCEPTION_RESOLUTION = 299
#: OpenAI CLIP's normalisation, used when a CLIP folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _Conv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as the TensorFlow graph), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # The FID graph averages over the valid pixels only (TensorFlow's SAME pooling); torchvision counts the pads.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):  # Mixed_5b..5d: 35x35
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class _BlockB(nn.Module):  # Mixed_6a: 35x35 -> 17x17
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):  # Mixed_6b..6e: 17x17, factorised 7x7 convolutions
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for i in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{i}")(double)
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), double,
                          self.branch_pool(_avg_pool(x))], 1)


class _BlockD(nn.Module):  # Mixed_7a: 17x17 -> 8x8
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):  # Mixed_7b, 7c: 8x8, expanded 3x3 branches
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool  # Mixed_7c of the FID graph max-pools its pool branch
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(three), self.branch3x3_2b(three),
                          self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 pool3 features (2048-d) of uint8 images (B, C, H, W) in [0, 255] (C = 1 or 3).

    Images are resized (bilinear) to `resolution` x `resolution` and scaled to [-1, 1], as pytorch-fid does.
    `fc` (1008 ImageNet logits of the 2015 graph) is part of the weights file and kept so that it loads strictly;
    the features are taken before it.
    """

    def __init__(self, resolution: int = INCEPTION_RESOLUTION) -> None:
        super().__init__()
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 75:
            raise ValueError(f"resolution must be an int >= 75 (Inception-v3's smallest input), got {resolution!r}")
        self.resolution = resolution
        self.num_features = 2048  # torchmetrics sizes its state from this
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"FIDInceptionV3 takes uint8 images in [0, 255] (as torchmetrics passes them), got "
                            f"{images.dtype}")
        x = images.to(self.fc.weight.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = x * (2.0 / 255.0) - 1.0  # (B, 3, R, R) in [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)  # (B, 192, 35, 35) at 299
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean((2, 3))  # (B, 2048): global average pool


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_safetensors(path, "Inception weights")
    try:  # the distributed file is a pickled state dict: read it without running any pickled code
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a file that is not a state dict
        raise ValueError(f"cannot read Inception weights from {str(path)!r} ({type(error).__name__}: {error}); "
                         f"expected {INCEPTION_WEIGHTS_NAME} or a .safetensors file of the same tensors") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{str(path)!r} is not a state dict of tensors (got {type(data).__name__})")
    return data


def load_inception(weights_path: str | os.PathLike | None, resolution: int = INCEPTION_RESOLUTION) -> FIDInceptionV3:
    """`FIDInceptionV3` with the weights of a local file; `ValueError` naming every tensor that does not fit."""
    if weights_path is None or not Path(weights_path).is_file():
        raise ValueError(
            f"Inception FID needs the FID Inception-v3 weights as a local file, got "
            f"{'no path' if weights_path is None else repr(str(weights_path))}: pass --inception-weights PATH to "
            f"{INCEPTION_WEIGHTS_NAME} (the file pytorch-fid and torchmetrics use); nothing is downloaded")
    net = FIDInceptionV3(resolution)
    weights = _read_weights(Path(weights_path))
    expected = net.state_dict()
    # BatchNorm counters are not in the distributed file (and not used in eval mode).
    expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    weights = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    problems = [f"missing {k} {tuple(v.shape)}" for k, v in expected.items() if k not in weights]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in weights.items() if k not in expected]
    problems += [f"{k}: expected {tuple(v.shape)}, got {tuple(weights[k].shape)}"
                 for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise ValueError(f"{str(weights_path)!r} is not an FID Inception-v3 state dict ({len(problems)} "
                         f"mismatches): {shown}")
    net.load_state_dict(weights, strict=False)  # every key checked above; only the BN counters stay as built
    return net.eval().requires_grad_(False)


def _resize_center_crop(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, size, size): shorter side to `size`, then the central square."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        images = F.interpolate(images, size=(new_h, new_w), mode=mode, align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return images[..., top : top + size, left : left + size]


class ClipImageFeatures(nn.Module):
    """CLIP image embeddings of uint8 images (B, C, H, W) from a local transformers CLIP folder.

    A `CLIPModel` or `CLIPVisionModelWithProjection` folder gives the projected embedding (what CLIP-FID and the
    CLIP score use); a `CLIPVisionModel` folder gives the pooled output. `text_features(texts)` needs a full
    `CLIPModel` folder with its tokenizer.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        super().__init__()
        import transformers

        path = Path(folder)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"CLIP folder {str(folder)!r} has no config.json: expected a local transformers "
                             f"CLIPModel, CLIPVisionModel or CLIPVisionModelWithProjection folder")
        config = read_json_file(config_file, "CLIP config")
        allowed = ("CLIPModel", "CLIPVisionModel", "CLIPVisionModelWithProjection")
        architecture = (config.get("architectures") or [None])[0]
        if architecture not in allowed:
            raise ValueError(f"{str(folder)!r} holds a {architecture!r} model; CLIP features need one of {allowed}")
        self.architecture = architecture
        self.model = getattr(transformers, architecture).from_pretrained(str(path)).eval().requires_grad_(False)
        vision = self.model.config.vision_config if architecture == "CLIPModel" else self.model.config
        self.resolution = int(vision.image_size)
        processor = path / "preprocessor_config.json"
        options = read_json_file(processor, "CLIP preprocessor config") if processor.is_file() else {}
        self.register_buffer("mean", torch.tensor(options.get("image_mean", CLIP_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(options.get("image_std", CLIP_STD)).view(1, 3, 1, 1))
        self.num_features = int(self.model.config.projection_dim if architecture != "CLIPVisionModel"
                                else vision.hidden_size)
        self.tokenizer: Any = None
        if architecture == "CLIPModel" and ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()):
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (_resize_center_crop(x, self.resolution, "bicubic").clamp(0, 1) - self.mean) / self.std
        if self.architecture == "CLIPModel":
            out = self.model.get_image_features(pixel_values=x)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        out = self.model(pixel_values=x)
        return out.image_embeds if self.architecture == "CLIPVisionModelWithProjection" else out.pooler_output

    @property
    def scores_text(self) -> bool:
        """Whether `text_features` works (a full CLIPModel with a tokenizer)."""
        return self.tokenizer is not None

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), num_features) text embeddings."""
        if not self.scores_text:
            raise ValueError("the CLIP score needs a full CLIPModel folder with its tokenizer; this folder holds a "
                             f"{self.architecture}" + ("" if self.architecture != "CLIPModel" else " without a tokenizer"))
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_scores(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Per-image CLIP score, 100 * max(cos(image, text), 0) (torchmetrics' definition); (N,) for (N, F) pairs."""
    cosine = F.cosine_similarity(image_features.double(), text_features.double(), dim=-1)
    return 100.0 * cosine.clamp(min=0)
