"""Crash-safe file writes and safe, clearly failing reads of our own JSON and safetensors files.

A process killed at any instant (SIGKILL, power loss after the OS flushed) leaves either the old file/folder or
the new one, never a half-written one under the final name: everything is written next to its destination,
flushed, then renamed into place (`os.replace` is atomic within one file system). Weights are read with
safetensors only; nothing here unpickles.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file under `folder`, then the folders themselves, to disk."""
    folder = Path(folder)
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that readers see the old content or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `final` (same parent), replacing an existing `final`.

    A directory rename cannot overwrite a non-empty directory, so an old `final` is first renamed aside; a
    crash in between leaves the complete new folder at `tmp` and the complete old one aside, never a mix.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file; `FileNotFoundError`/`ValueError` name the file and what it should hold."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON (corrupted or truncated?): {error}") from None


def load_safetensors(path: str | os.PathLike, what: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or corrupted file raises an error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{what} {str(path)!r} is not a readable safetensors file (corrupted or truncated?): {error}") from None
