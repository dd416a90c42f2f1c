"""The "glyphs" benchmark set: characters of matplotlib's bundled fonts, rendered small with random affine jitter.

The harder setting of our own benchmarks (`models.SETTINGS["glyphs"]`), so it lives here, not in the installed
package: importing `bench` registers it with the package's registries, as a user's own set would be - the dataset
(`register_dataset`), its reference and floor draws (`eval.quality.REAL_SETS`) and its two feature networks in
`bench/assets/feature-nets/` (`eval.features.FEATURE_NETS`; trained by `bench.feature_nets`).

A class-conditional set that ships with an installed package (matplotlib) and is far more varied than
scikit-learn's digits: 62 classes (0-9, A-Z, a-z) in 20 typefaces (DejaVu Sans/Serif/Mono with their bold and
oblique variants, STIX General, Computer Modern roman/sans/typewriter/italic), each glyph rotated, scaled,
sheared and shifted at random, rendered at 4x and box-filtered down to `image_size` (16 by default).

The set is a pure function of its options: `get_dataset("glyphs", seed=s)` always returns the same images, and
two seeds give two independent draws (the benchmark uses one draw as the reference and another for its floor).

```py
>>> ds = glyphs(per_font=1, charset="digits")
>>> ds.images.shape, ds.num_classes, float(ds.images.min()), float(ds.images.max())
(torch.Size([200, 1, 16, 16]), 10, -1.0, 1.0)

```
"""

from __future__ import annotations

import math
import string
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ee_diffusion._validation import check_int
from ee_diffusion.eval.features import FEATURE_NETS
from ee_diffusion.eval.quality import REAL_SETS
from ee_diffusion.training.data import TensorImageDataset, register_dataset

FEATURE_NET_DIR = Path(__file__).resolve().parent / "assets" / "feature-nets"

CHARSETS = {
    "alnum": string.digits + string.ascii_uppercase + string.ascii_lowercase,  # 62 classes
    "upper": string.ascii_uppercase,
    "digits": string.digits,
}
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf",
)
_SUPERSAMPLE = 4


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=8)
def _glyph(font_file: str, char: str, canvas: int) -> "np.ndarray":
    """One upright glyph, white on black, centred on a (canvas, canvas) float32 array in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(_font_dir() / font_file), size=int(canvas * 0.7))
    image = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font)
    draw.text(((canvas - (right - left)) / 2 - left, (canvas - (bottom - top)) / 2 - top), char, fill=255, font=font)
    return np.asarray(image, dtype=np.float32) / 255.0


def _jitter(glyph: "np.ndarray", rng: np.random.Generator, size: int) -> "np.ndarray":
    """Random rotation (+-12 deg), scale (0.8..1.05), shear (+-0.15) and shift (+-1 output pixel), then downsample."""
    from PIL import Image

    canvas = glyph.shape[0]
    angle = math.radians(rng.uniform(-12, 12))
    scale = rng.uniform(0.8, 1.05)
    shear = rng.uniform(-0.15, 0.15)
    shift = rng.uniform(-1, 1, size=2) * _SUPERSAMPLE
    # Inverse map output -> input (PIL's affine transform takes the inverse), about the canvas centre.
    cos, sin = math.cos(angle), math.sin(angle)
    forward = np.array([[cos, -sin + shear], [sin, cos]]) * scale
    inverse = np.linalg.inv(forward)
    centre = np.array([canvas / 2, canvas / 2])
    offset = centre - inverse @ (centre + shift)
    coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    image = Image.fromarray((glyph * 255).astype(np.uint8)).transform(
        (canvas, canvas), Image.AFFINE, coeffs, resample=Image.BILINEAR
    )
    image = image.resize((size, size), Image.BOX)
    return np.asarray(image, dtype=np.float32) / 255.0


def glyphs(image_size: int = 16, per_font: int = 8, charset: str = "alnum", seed: int = 0) -> TensorImageDataset:
    """`per_font` jittered renderings of every character of `charset` in each of the 20 fonts; [-1, 1], 1 channel.

    `charset`: "alnum" (62 classes: digits, upper, lower), "upper" (26) or "digits" (10).
    """
    if charset not in CHARSETS:
        raise ValueError(f"charset must be one of {sorted(CHARSETS)}, got {charset!r}")
    check_int(image_size, "image_size", what="pixels")
    check_int(per_font, "per_font", what="renderings of each character in each font")
    check_int(seed, "seed", low=0)
    chars = CHARSETS[charset]
    rng = np.random.default_rng(seed)
    canvas = image_size * _SUPERSAMPLE
    images, labels = [], []
    for font_file in FONT_FILES:
        for label, char in enumerate(chars):
            glyph = _glyph(font_file, char, canvas)
            for _ in range(per_font):
                images.append(_jitter(glyph, rng, image_size))
                labels.append(label)
    array = np.stack(images)[:, None] * 2.0 - 1.0  # (N, 1, S, S) in [-1, 1]
    return TensorImageDataset(torch.from_numpy(array), torch.tensor(labels), list(chars))


def balanced_subset(images: torch.Tensor, labels: torch.Tensor, count: int,
                    num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` images taken round-robin over classes (label i % num_classes at position i)."""
    per_class = [torch.nonzero(labels == c).squeeze(1) for c in range(num_classes)]
    index = torch.tensor([int(per_class[i % num_classes][(i // num_classes) % len(per_class[i % num_classes])])
                          for i in range(count)])
    return images[index], labels[index]


register_dataset("glyphs")(glyphs)
# Two independent renderings (different jitter seeds): the reference and the floor draw.
REAL_SETS["glyphs"] = {
    "dataset": "glyphs",
    "reference": {"image_size": 8, "per_font": 4, "charset": "upper", "seed": 200},
    "floor": {"image_size": 8, "per_font": 4, "charset": "upper", "seed": 201},
}
FEATURE_NETS.update({name: ("glyphs", FEATURE_NET_DIR / name) for name in ("glyphs", "glyphs-pool")})
