"""Crash-safe file writes and safe, clearly failing reads of our own JSON and safetensors files.

A process killed at any instant (SIGKILL, power loss after the OS flushed) leaves either the old file/folder or
the new one, never a half-written one under the final name: everything is written next to its destination,
flushed, then renamed into place (`os.replace` is atomic within one file system). Weights are read with
safetensors only; nothing here unpickles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name next to `path` for writers that want a name (matplotlib, safetensors).

    When the block ends normally the file is flushed and renamed onto `path`; when it raises, the partial file
    is removed and `path` keeps its old content.

    ```py
    >>> import tempfile
    >>> from pathlib import Path
    >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('done', ['notes.txt'])

    ```
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the writer failed: the rename consumed it otherwise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that readers see the old content or the new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, data: Any, **dumps_kwargs: Any) -> None:
    """`json.dumps(data, **dumps_kwargs)` plus a final newline, written with `atomic_write_text`.

    ```py
    >>> import tempfile
    >>> from pathlib import Path
    >>> target = Path(tempfile.mkdtemp()) / "report.json"
    >>> atomic_write_json(target, {"fid": 1.5}, indent=1)
    >>> target.read_text()
    '{\\n "fid": 1.5\\n}\\n'

    ```
    """
    atomic_write_text(path, json.dumps(data, **dumps_kwargs) + "\n")


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file` through a temporary name, so a crash never leaves a truncated file."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=metadata)


def atomic_save_figure(figure: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """`figure.savefig(path)` (a matplotlib figure) through a temporary name; the format follows `path`'s suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # The temporary name has no image suffix, so matplotlib must be told the format.
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)


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


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (what a later `mkdir(parents=True)` would write into)."""
    return next(p for p in (path, *path.parents) if p.exists())


def _check_writable(path: Path, start: Path, what: str) -> None:
    """Where `path` would be written (`start` or its closest existing ancestor): a folder, and writable."""
    base = _nearest_existing(start)
    if not base.is_dir():
        raise ValueError(f"{what} {str(path)!r} lies under {str(base)!r}, which is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {str(path)!r}: no permission to write in {str(base)!r}")


def check_output_folder(path: str | os.PathLike, what: str, fresh: bool = False) -> Path:
    """Refuse, before any work, an output folder a command could not write into: an existing file, a path under
    a file, a place without write permission, and with `fresh` a folder that is not empty. Creates nothing.

    ```py
    >>> import tempfile
    >>> file = Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = file.write_text("x")
    >>> check_output_folder(file, "--out")
    Traceback (most recent call last):
    ...
    ValueError: --out ... is a file; expected a folder (a new one, or one this command wrote before)

    ```
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file; expected a folder (a new one, or one this command wrote "
                         f"before)")
    if fresh and path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{what} {str(path)!r} exists and is not empty; give a new folder")
    _check_writable(path, path, what)
    return path


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Refuse, before any work, an output file a command could not write: an existing folder, a path under a
    file, a place without write permission. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder; expected a file path (e.g. {str(path / 'out.json')!r})")
    _check_writable(path, path.parent, what)
    return path


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and bytes, in name order).

    ```py
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> weights_digest(a) == weights_digest(a), weights_digest(a) == weights_digest(b)
    (True, False)

    ```
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Bytes through a uint8 view: numpy has no bfloat16.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def module_fingerprint(module: torch.nn.Module) -> dict[str, Any]:
    """`{"class", "config", "weights_sha256"}` of a model: diffusers' or transformers' config (`{}` for a module
    with none; private keys such as `_name_or_path` are left out: moving a folder does not change what it encodes)."""
    config = getattr(module, "config", None)  # diffusers' FrozenDict, a transformers config, or none
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    public = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("transformers_version",)}
    return {"class": type(module).__name__, "config": json.loads(json.dumps(public, default=str)),
            "weights_sha256": weights_digest(module)}
