"""A disk cache of encoded training images (latents, class ids, prompt embeddings) as safetensors shards,
built once, resumably, and streamed shard by shard in a seeded order that is a pure function of the step.

Layout of a cache folder:

- `cache.json`: the fingerprint of the encoders that made it (what `fingerprint` is is up to the caller: the
  VAE's and text encoders' config and weights hash, the resolution), a digest of the item list, the number of
  items, the shard size and, once every shard is written, `"complete": true`;
- `shard_00000.safetensors`, ...: items `[i * shard_size, (i + 1) * shard_size)`, one tensor per key with one
  row per item;
- `null.safetensors` (optional): one-row tensors the trainer needs besides the items (the empty prompt).

Every file is written through a temporary name and renamed into place, so an interrupted build leaves whole
shards only, and `build_cache` resumes by encoding the missing ones. A folder whose `cache.json` names other
encoders or other items is refused with a `ValueError` and left untouched.

```py
>>> import tempfile, torch
>>> folder = tempfile.mkdtemp()
>>> def encode(start, stop):  # items [start, stop) -> tensors with one row per item
...     return {"latent_mean": torch.arange(start, stop, dtype=torch.float32)[:, None]}
>>> cache = build_cache(folder, {"vae": "v1"}, "items-v1", num_items=10, shard_size=4, encode=encode, progress=False)
>>> cache.shard_sizes
[4, 4, 2]
>>> batches = ShardBatches(cache, batch_size=3, seed=0)
>>> sorted(torch.cat([batches.batch(s)["latent_mean"] for s in range(3)]).flatten().int().tolist())
[0, 1, 2, 3, 4, 5, 6, 7, 8]
>>> LatentCache(folder, {"vae": "v2"}, "items-v1")
Traceback (most recent call last):
...
ValueError: the cache in ... was made differently: vae: cached 'v1', expected 'v2'; use another cache_dir (or delete this one to rebuild it)

```
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._io import atomic_save_safetensors, atomic_write_json, check_output_folder, load_safetensors, read_json_file
from .data import StepBatches, seeded_generator

CACHE_FILE = "cache.json"
NULL_FILE = "null.safetensors"
CACHE_FORMAT = 1


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def _short(value: Any) -> str:
    """A readable summary of a fingerprint entry for error messages."""
    if isinstance(value, dict) and "weights_sha256" in value:
        return f"{value.get('class')} with weights sha256 {value['weights_sha256'][:12]}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return repr(value)


def _check_header(folder: Path, header: dict[str, Any], fingerprint: dict[str, Any], items_digest: str,
                  shard_size: int | None) -> None:
    """Raise a `ValueError` naming every difference between a cache's `cache.json` and what is expected."""
    if header.get("format") != CACHE_FORMAT:
        raise ValueError(f"{str(folder / CACHE_FILE)!r} has format {header.get('format')!r}, this version reads "
                         f"format {CACHE_FORMAT}; use another cache_dir")
    cached = header.get("fingerprint", {})
    wrong = [f"{k}: cached {_short(cached.get(k))}, expected {_short(fingerprint.get(k))}"
             for k in sorted(set(cached) | set(fingerprint)) if cached.get(k) != fingerprint.get(k)]
    if header.get("items_digest") != items_digest:
        wrong.append(f"the images or their labels/captions changed since the cache was built ({header.get('num_items')} "
                     f"items then)")
    if shard_size is not None and header.get("shard_size") != shard_size:
        wrong.append(f"shard_size: cached {header.get('shard_size')}, expected {shard_size}")
    if wrong:
        raise ValueError(f"the cache in {str(folder)!r} was made differently: " + "; ".join(wrong)
                         + "; use another cache_dir (or delete this one to rebuild it)")


def build_cache(
    folder: str | Path,
    fingerprint: dict[str, Any],
    items_digest: str,
    num_items: int,
    shard_size: int,
    encode: Callable[[int, int], dict[str, torch.Tensor]],
    null: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
) -> "LatentCache":
    """Encode the shards `folder` is missing with `encode(start, stop)` (tensors with one row per item of
    `[start, stop)`), then mark the cache complete; returns it opened.

    An existing cache of other encoders or items raises a `ValueError` before anything is written; one
    interrupted earlier resumes at its first missing shard (shards are written whole or not at all).
    """
    folder = check_output_folder(folder, "cache_dir")  # a file there is refused before anything is written
    header_path = folder / CACHE_FILE
    if header_path.exists():
        header = read_json_file(header_path, "latent cache header")
        _check_header(folder, header, fingerprint, items_digest, shard_size)
        if header.get("complete"):
            return LatentCache(folder, fingerprint, items_digest)
    elif folder.is_dir() and any(folder.iterdir()):
        # Its files would be taken for shards, or mixed with them: never write into someone else's folder.
        raise ValueError(f"cache_dir {str(folder)!r} is not empty and holds no {CACHE_FILE}: not a latent cache; "
                         f"give a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    header = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "items_digest": items_digest,
              "num_items": num_items, "shard_size": shard_size, "complete": False}
    atomic_write_json(header_path, header, indent=1)  # first, so a foreign cache is recognised even half-built
    if null is not None:
        atomic_save_safetensors({k: v.contiguous() for k, v in null.items()}, folder / NULL_FILE)
    starts = range(0, num_items, shard_size)
    missing = [i for i, _ in enumerate(starts) if not (folder / shard_name(i)).is_file()]
    done = num_items - sum(min(shard_size, num_items - starts[i]) for i in missing)
    with tqdm(total=num_items, initial=done, disable=not progress, desc="encoding", unit="img") as bar:
        for index in missing:
            start, stop = starts[index], min(starts[index] + shard_size, num_items)
            tensors = encode(start, stop)
            wrong = {k: tuple(v.shape) for k, v in tensors.items() if v.shape[0] != stop - start}
            if wrong:
                raise ValueError(f"encode({start}, {stop}) must return {stop - start} rows per tensor, got shapes {wrong}")
            atomic_save_safetensors({k: v.contiguous() for k, v in tensors.items()}, folder / shard_name(index))
            bar.update(stop - start)
    atomic_write_json(header_path, {**header, "complete": True}, indent=1)
    return LatentCache(folder, fingerprint, items_digest)


class LatentCache:
    """A complete cache folder, checked against the expected `fingerprint` and `items_digest` (None: checked by
    whoever built it, e.g. the main process of a distributed run); shards are read on demand and at most
    `keep` of them are held in memory. Example: the module docstring.
    """

    def __init__(self, folder: str | Path, fingerprint: dict[str, Any] | None = None, items_digest: str | None = None,
                 keep: int = 2) -> None:
        self.folder = Path(folder)
        header = read_json_file(self.folder / CACHE_FILE, "latent cache header")
        if fingerprint is not None and items_digest is not None:
            _check_header(self.folder, header, fingerprint, items_digest, None)
        if not header.get("complete"):
            raise ValueError(f"the cache in {str(self.folder)!r} is incomplete (interrupted while it was built); "
                             f"build it to the end first (ee-diffusion prepare-latents)")
        self.num_items = int(header["num_items"])
        self.shard_size = int(header["shard_size"])
        self.shard_sizes = [min(self.shard_size, self.num_items - s) for s in range(0, self.num_items, self.shard_size)]
        self._keep = keep
        self._loaded: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return self.num_items

    @property
    def num_shards(self) -> int:
        return len(self.shard_sizes)

    def shard(self, index: int) -> dict[str, torch.Tensor]:
        """Shard `index`'s tensors (one row per item), read from disk unless it is one of the last `keep` read."""
        if index in self._loaded:
            self._loaded.move_to_end(index)
            return self._loaded[index]
        tensors = load_safetensors(self.folder / shard_name(index), "latent cache shard")
        rows = {k: v.shape[0] for k, v in tensors.items()}
        if set(rows.values()) != {self.shard_sizes[index]}:
            raise ValueError(f"cache shard {str(self.folder / shard_name(index))!r} has rows {rows}, expected "
                             f"{self.shard_sizes[index]} each (the cache was modified): delete the cache to rebuild it")
        self._loaded[index] = tensors
        while len(self._loaded) > self._keep:
            self._loaded.popitem(last=False)
        return tensors

    def null(self) -> dict[str, torch.Tensor]:
        """The cache's one-row extra tensors (`null.safetensors`); empty when it has none."""
        path = self.folder / NULL_FILE
        return load_safetensors(path, "latent cache null inputs") if path.is_file() else {}


class ShardBatches(StepBatches):
    """The batches of a run from a `LatentCache`, as a pure function of the step (exact resume, no state).

    Epoch e visits the shards in the order `randperm(num_shards)` and each shard's items in the order
    `randperm(shard size)`, both seeded with (seed, e[, shard]); blocks of that sequence are split as in
    `StepBatches`. A block spans at most two shards, so a process holds at most two in memory.

    Example: the module docstring.
    """

    def __init__(self, cache: LatentCache, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(cache, batch_size, seed, rank, world_size)
        self.cache = cache
        self._epoch: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(shard order (S,), the epoch's start offset of each visited shard (S + 1,))."""
        if self._epoch is None or self._epoch[0] != epoch:
            order = torch.randperm(self.cache.num_shards, generator=seeded_generator(self.seed, epoch))
            sizes = torch.tensor(self.cache.shard_sizes)[order]
            self._epoch = (epoch, order, torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)]))
        return self._epoch[1], self._epoch[2]

    def locations(self, step: int) -> list[tuple[int, int]]:
        """(shard, row) of every item this rank takes at `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order, offsets = self._order(epoch)
        per_rank = self.batch_size // self.world_size
        start = position * self.batch_size + self.rank * per_rank
        rows: dict[int, torch.Tensor] = {}
        out = []
        for p in range(start, start + per_rank):
            visit = int(torch.searchsorted(offsets, p, right=True)) - 1
            shard = int(order[visit])
            if shard not in rows:
                generator = seeded_generator(self.seed, epoch, shard)
                rows[shard] = torch.randperm(self.cache.shard_sizes[shard], generator=generator)
            out.append((shard, int(rows[shard][p - int(offsets[visit])])))
        return out

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's items of `step`: every cached key, one row per item, in the order of `locations`."""
        items = [(self.cache.shard(shard), row) for shard, row in self.locations(step)]
        return {key: torch.stack([tensors[key][row] for tensors, row in items]) for key in items[0][0]}
