"""What the images of an evaluation or calibration set are conditioned on: class ids, prompts, or nothing.

Image `i` of a set takes entry `i % len(entries)`, so any number of images cycles through a short list, and
an image's condition does not depend on the batch it was drawn in or on the process that drew it.

Prompt files: a text file with one prompt per line (blank lines are not allowed: they would silently become
unconditional images), or a `.jsonl` file with one `{"prompt": "...", "seed": 123}` object per line (`seed`
optional: it fixes the initial noise of that prompt's images, whatever the run's seed).

```py
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "prompts.jsonl"
>>> _ = path.write_text('{"prompt": "a red cat", "seed": 7}\\n{"prompt": "a blue car"}\\n')
>>> cond = Conditioning.from_prompt_file(path)
>>> [p.text for p in cond.prompts], cond.prompts[0].seed, cond.describe()
(['a red cat', 'a blue car'], 7, '2 prompts')

```
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONDITIONING_KINDS = ("classes", "prompts", "none")


@dataclass(frozen=True)
class Prompt:
    """One prompt and, optionally, the seed of its images' initial noise."""

    text: str
    seed: int | None = None


@dataclass
class Conditioning:
    """The conditions that image `i` of a set cycles through (`kind`: "classes", "prompts" or "none")."""

    kind: str
    class_ids: list[int] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in CONDITIONING_KINDS:
            raise ValueError(f"kind must be one of {CONDITIONING_KINDS}, got {self.kind!r}")
        if self.kind == "classes" and not self.class_ids:
            raise ValueError("class conditioning needs at least one class id, got none")
        if self.kind == "prompts" and not self.prompts:
            raise ValueError("prompt conditioning needs at least one prompt, got none")

    @property
    def size(self) -> int:
        """How many distinct conditions the set cycles through (1 for "none")."""
        return {"classes": len(self.class_ids), "prompts": len(self.prompts), "none": 1}[self.kind]

    def class_id(self, index: int) -> int:
        return self.class_ids[index % len(self.class_ids)]

    def prompt(self, index: int) -> Prompt:
        return self.prompts[index % len(self.prompts)]

    def describe(self) -> str:
        if self.kind == "classes":
            return f"{len(self.class_ids)} classes"
        return f"{len(self.prompts)} prompts" if self.kind == "prompts" else "unconditional"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "class_ids": list(self.class_ids),
                "prompts": [{"prompt": p.text, "seed": p.seed} for p in self.prompts]}

    @classmethod
    def from_prompt_file(cls, path: str | os.PathLike) -> Conditioning:
        return cls("prompts", prompts=read_prompts(path))

    @classmethod
    def from_classes(cls, values: Sequence[int | str], pipe: Any = None) -> Conditioning:
        return cls("classes", class_ids=class_ids(values, pipe))


def read_prompts(path: str | os.PathLike) -> list[Prompt]:
    """Prompts of a text file (one per line) or a JSONL file; `ValueError` with line numbers for bad lines."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"prompt file {str(path)!r} does not exist")
    lines = file.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():  # a trailing newline or two is not a prompt
        lines.pop()
    if not lines:
        raise ValueError(f"prompt file {str(path)!r} is empty: expected one prompt per line (or JSONL objects)")
    prompts, bad = [], []
    jsonl = file.suffix.lower() == ".jsonl"
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            bad.append(f"line {number}: blank")
            continue
        if not jsonl:
            prompts.append(Prompt(line.strip()))
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            bad.append(f"line {number}: not JSON ({error.msg})")
            continue
        text = item.get("prompt") if isinstance(item, dict) else None
        seed = item.get("seed") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip():
            bad.append(f'line {number}: expected {{"prompt": "<non-empty text>", "seed": <int, optional>}}')
        elif seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            bad.append(f"line {number}: seed must be an int >= 0, got {seed!r}")
        else:
            prompts.append(Prompt(text.strip(), seed))
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"prompt file {str(path)!r} has {len(bad)} bad line(s): {shown}")
    return prompts


def class_ids(values: Sequence[int | str], pipe: Any = None) -> list[int]:
    """Class ids from ids or names ("207", 207 or "golden retriever": names through the pipeline's
    `get_label_ids`, as `DiTPipeline.labels` and our pipelines' `labels` list them)."""
    if isinstance(values, (str, int)):
        values = [values]
    if not values:
        raise ValueError("expected at least one class id or name, got none")
    labels = getattr(pipe, "labels", None) or {}
    ids: list[int] = []
    unknown: list[str] = []
    for value in values:
        if isinstance(value, bool):
            raise ValueError(f"class ids must be ints or names, got {value!r}")
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            ids.append(int(value))
        elif str(value).strip() in labels:
            ids.append(int(labels[str(value).strip()]))
        else:
            unknown.append(str(value).strip())
    if unknown:
        known = ", ".join(sorted(labels)[:8]) + (" ..." if len(labels) > 8 else "") if labels else "none"
        raise ValueError(f"unknown class names {unknown}; the pipeline knows: {known}")
    num_classes = num_classes_of(pipe)
    if num_classes is not None:
        out = [i for i in ids if not 0 <= i < num_classes]
        if out:
            raise ValueError(f"class ids must be in [0, {num_classes}), got {out}")
    return ids


def num_classes_of(pipe: Any) -> int | None:
    """Real classes of a class-conditional pipeline (the id `num_classes` is the null class), if known."""
    if pipe is None:
        return None
    number = getattr(pipe, "num_classes", None)
    if isinstance(number, int):
        return number
    model = getattr(pipe, "transformer", None)
    value = getattr(getattr(model, "config", None), "num_embeds_ada_norm", None)
    return int(value) if isinstance(value, int) else None
