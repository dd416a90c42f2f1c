"""Generated samples and their features cached on disk in shards, split over processes, resumable.

A set of N images is cut into shards of consecutive indices, [0, S), [S, 2S), ...: one safetensors file each
under `root/<run key>/` (`run_key` hashes everything the images depend on), written atomically. So an interrupted
run resumes, a later run with more methods or images reuses every shard, and under `accelerate launch` shard j
belongs to process j % world (each samples and encodes its own, then after a barrier all read all; image i comes
from its own noise, so the numbers are the same with 1 and 2 processes). Features are cached next to their shard,
one file per feature network (`<shard>.<feature key>.safetensors`).

```py
>>> import tempfile, torch
>>> cache = ShardCache(tempfile.mkdtemp(), shard_size=4)
>>> key = run_key({"method": "ddim25", "seed": 0})
>>> calls = []
>>> def sample(indices):
...     calls.append(list(indices))
...     return torch.zeros(len(indices), 3, 2, 2, dtype=torch.uint8), {"block_evals": 2 * len(indices)}
>>> info = cache.images(key, 6, sample)
>>> info["block_evals"], calls, cache.read(key, 4, 6).shape
(12, [[0, 1, 2, 3], [4, 5]], torch.Size([2, 3, 2, 2]))
>>> _ = cache.images(key, 6, sample); len(calls)  # a rerun reads the shards back
2

```
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_save_safetensors, module_fingerprint
from .._validation import check_int

#: What a sampler returns for a list of image indices: uint8 images (n, C, H, W) and integer counters.
Sampler = Callable[[list[int]], tuple[torch.Tensor, dict[str, int]]]


def run_key(what: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable description (the folder name of one cached run)."""
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def modules_fingerprint(*modules: Any) -> str:
    """A run-key part for models held in memory (no folder to name): each module's `module_fingerprint` (class,
    config, sha256 of its state dict; a DiT-XL/2 in float32 reads ~2.7 GB once), None as "none"."""
    parts = [None if module is None else module_fingerprint(module) for module in modules]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class ShardCache:
    """Shards of `shard_size` images under `root`, owned round-robin by the processes of `state`.

    `state` is an `accelerate.PartialState` (or None: one process).
    """

    def __init__(self, root: str | Path, shard_size: int = 64, state: Any = None) -> None:
        self.root = Path(root)
        self.shard_size = check_int(shard_size, "shard_size", 1, "images per shard")
        self.state = state
        self.sampled_shards = 0  # shards this process sampled (not read back), for the report and tests

    @property
    def world(self) -> int:
        return 1 if self.state is None else int(self.state.num_processes)

    @property
    def rank(self) -> int:
        return 0 if self.state is None else int(self.state.process_index)

    def barrier(self) -> None:
        if self.state is not None and self.world > 1:
            self.state.wait_for_everyone()

    def ranges(self, count: int) -> list[tuple[int, int]]:
        return [(s, min(s + self.shard_size, count)) for s in range(0, count, self.shard_size)]

    def mine(self, count: int) -> list[tuple[int, int]]:
        """The shards of a `count`-image set this process samples and encodes."""
        return [r for j, r in enumerate(self.ranges(count)) if j % self.world == self.rank]

    def path(self, key: str, start: int, end: int, feature: str | None = None) -> Path:
        suffix = "" if feature is None else f".{feature}"
        return self.root / key / f"shard-{start:07d}-{end:07d}{suffix}.safetensors"

    def missing(self, key: str, count: int) -> int:
        """Images of this process's shards that are not on disk yet (what `images` will sample)."""
        return sum(e - s for s, e in self.mine(count) if not self.path(key, s, e).is_file())

    def images(self, key: str, count: int, sample: Sampler) -> dict[str, int]:
        """Make sure images 0..count-1 of run `key` are on disk, sampling the missing shards this process owns;
        returns their counters summed over every shard (the same on every process). Read the images shard by
        shard with `read`: a large set never has to fit in memory."""
        for start, end in self.mine(count):
            path = self.path(key, start, end)
            if path.is_file():
                continue
            images, counters = sample(list(range(start, end)))
            if images.dtype != torch.uint8 or images.shape[0] != end - start:
                raise ValueError(f"a sampler must return uint8 images, one per index ({end - start}), got "
                                 f"{images.dtype} {tuple(images.shape)}")
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_safetensors({"images": images.contiguous()}, path,
                                    metadata={k: str(int(v)) for k, v in counters.items()})
            self.sampled_shards += 1
        self.barrier()
        from safetensors import safe_open

        totals: dict[str, int] = {}
        for start, end in self.ranges(count):
            with safe_open(str(self.path(key, start, end)), framework="pt") as f:
                for name, value in (f.metadata() or {}).items():
                    totals[name] = totals.get(name, 0) + int(value)
        return totals

    def read(self, key: str, start: int, end: int) -> torch.Tensor:
        """The uint8 images (end - start, C, H, W) of one shard of run `key` (a range `ranges` lists)."""
        from safetensors.torch import load_file

        return load_file(str(self.path(key, start, end)))["images"]

    def features(self, key: str, count: int, feature: str, encode: Callable[[torch.Tensor], torch.Tensor],
                 images_of: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
        """(count, F) features of run `key` under the network `feature` (a cache key): each process encodes the
        images of its own shards (`images_of(start, end)`: uint8 images start..end-1) once, then all read all.
        Real image folders go through here too, with no image shards: only their features are cached."""
        for start, end in self.mine(count):
            path = self.path(key, start, end, feature)
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_save_safetensors({"features": encode(images_of(start, end)).double().contiguous()}, path)
        self.barrier()
        from safetensors.torch import load_file

        return torch.cat([load_file(str(self.path(key, s, e, feature)))["features"] for s, e in self.ranges(count)])
