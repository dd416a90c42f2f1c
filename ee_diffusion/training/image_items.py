"""The training images of a stock pipeline run and what each is conditioned on: a class (DiT: the image's
folder, an id or a name of the pipeline's labels) or a prompt (a `.txt` caption beside the image, or a line of a
captions JSONL file), checked before anything is encoded.

```py
>>> import tempfile
>>> from PIL import Image
>>> root = Path(tempfile.mkdtemp())
>>> Image.new("RGB", (20, 16)).save(root / "cat.png")
>>> _ = (root / "cat.txt").write_text("a red cat\\n")
>>> caption_items(root)
[ImageItem(file='cat.png', class_id=None, prompt='a red cat')]
>>> tuple(load_image(root / "cat.png", 8).shape)
(3, 8, 8)

```
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..pipelines.conditioning import class_ids
from .data import IMAGE_SUFFIXES


@dataclass(frozen=True)
class ImageItem:
    """One training image: its path under the image folder (POSIX) and its class id or prompt."""

    file: str
    class_id: int | None = None
    prompt: str | None = None


def _image_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images with suffixes {IMAGE_SUFFIXES} under {str(root)!r}")
    return files


def _listing(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def class_items(root: str | os.PathLike, pipe: Any) -> list[ImageItem]:
    """`root/<class>/<image>`, `<class>` a class id or a name of the pipeline's labels (`class_ids`)."""
    root = Path(root)
    files = _image_files(root)
    loose = [p.name for p in files if p.parent == root]
    if loose:
        raise ValueError(f"{str(root)!r} has images outside class folders ({_listing(loose)}); a DiT trains on "
                         f"root/<class id or name>/<image>")
    items = []
    for path in files:
        folder = path.relative_to(root).parts[0]
        try:
            (class_id,) = class_ids([folder], pipe)
        except ValueError as error:
            raise ValueError(f"class folder {folder!r} of {str(root)!r}: {error}") from None
        items.append(ImageItem(path.relative_to(root).as_posix(), class_id=class_id))
    return items


def caption_items(root: str | os.PathLike, captions: str | os.PathLike | None = None) -> list[ImageItem]:
    """Every image under `root` with its caption: a `.txt` of the same name beside it, or the `captions` JSONL
    (`{"file_name": "<path under root>", "prompt": "..."}` per line). A missing or empty caption, an empty
    caption file or a caption for no image raises a `ValueError` naming them."""
    root = Path(root)
    files = [p.relative_to(root).as_posix() for p in _image_files(root)]
    prompts: dict[str, str] = {}
    if captions is None:
        for name in files:
            text_file = (root / name).with_suffix(".txt")
            if text_file.is_file():
                prompts[name] = text_file.read_text(encoding="utf-8").strip()
        where = "a .txt caption of the same name beside it"
    else:
        prompts = _read_captions(Path(captions), set(files))
        where = f"a line in {str(captions)!r}"
    missing = [name for name in files if name not in prompts]
    if missing:
        raise ValueError(f"{len(missing)} of {len(files)} images under {str(root)!r} have no caption "
                         f"({_listing(missing)}); every image needs {where}")
    empty = [name for name in files if not prompts[name]]
    if empty:
        raise ValueError(f"{len(empty)} images have an empty caption ({_listing(empty)}); expected text")
    return [ImageItem(name, prompt=prompts[name]) for name in files]


#: What each line of a captions JSONL file holds.
CAPTION_LINE = '{"file_name": "<image path under the image folder>", "prompt": "<text>"}'


def _caption(line: str, images: set[str]) -> tuple[str, str]:
    """(image, prompt) of one captions JSONL line; a `ValueError` saying what is wrong with it."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg})") from None
    if not isinstance(item, dict) or not isinstance(item.get("file_name"), str) or not isinstance(item.get("prompt"), str):
        raise ValueError(f"expected {CAPTION_LINE}, got {line[:60]!r}")
    if item["file_name"] not in images:
        raise ValueError(f"no image {item['file_name']!r} under the image folder")
    return item["file_name"], item["prompt"].strip()


def _read_captions(path: Path, images: set[str]) -> dict[str, str]:
    if not path.is_file():
        raise ValueError(f"caption file {str(path)!r} does not exist")
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"caption file {str(path)!r} is empty: expected one {CAPTION_LINE} object per line")
    prompts, bad = {}, []
    for number, line in lines:
        try:
            name, text = _caption(line, images)
            prompts[name] = text
        except ValueError as error:
            bad.append(f"line {number}: {error}")
    if bad:
        raise ValueError(f"caption file {str(path)!r} has {len(bad)} bad line(s): {'; '.join(bad[:5])}")
    return prompts


def items_digest(items: Sequence[ImageItem]) -> str:
    """sha256 of the item list: a cache of other images, labels or captions is refused."""
    text = json.dumps([[i.file, i.class_id, i.prompt] for i in items])
    return hashlib.sha256(text.encode()).hexdigest()


def load_image(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """An RGB image (3, R, R) in [-1, 1]: the shorter side resized to R (bicubic), then the centre crop."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = resolution / min(image.size)
        size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
        image = image.resize(size, Image.BICUBIC)
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        array = np.asarray(image.crop((left, top, left + resolution, top + resolution)), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0
