"""The trainer's checkpoint files: names, completeness, and the state it writes itself (no pickles).

A checkpoint is `checkpoints/step_XXXXXXX/`: accelerate's `save_state` (model safetensors, optimizer, RNG)
plus the trainer's own files. The trainer writes it under a `.tmp-` name and renames it into place once
`trainer_state.json` (written last) is there, so a folder with a checkpoint name is always complete.

```py
>>> import tempfile
>>> from pathlib import Path
>>> import torch
>>> from diffusers.training_utils import EMAModel
>>> folder = Path(tempfile.mkdtemp())
>>> weight = torch.nn.Parameter(torch.ones(2))
>>> schedule = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([weight], lr=1.0), lambda step: 0.5)
>>> save_extra_state(folder, schedule, EMAModel([weight], decay=0.9))
>>> ema = EMAModel([torch.nn.Parameter(torch.zeros(2))], decay=0.9)
>>> load_extra_state(folder, schedule, ema)
>>> ema.shadow_params[0].tolist()
[1.0, 1.0]

```
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel

from .._io import atomic_write_text, load_safetensors, read_json_file

CHECKPOINT_PREFIX = "step_"
#: Written last into a checkpoint: a folder without it is incomplete and never resumed from.
STATE_FILE = "trainer_state.json"
#: The EMA weights and the LR schedule, written by the trainer as safetensors + JSON (accelerate would pickle
#: them as `custom_checkpoint_*.pkl` and load them with `weights_only=False`).
EMA_FILE = "ema.safetensors"
EXTRA_STATE_FILE = "trainer_extra.json"
#: Prefix of a folder being written (checkpoint or pipeline), renamed into place when complete.
TMP_PREFIX = ".tmp-"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}\d{{7}}$")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of optimizer step `step` (`step_0000012`)."""
    return f"{CHECKPOINT_PREFIX}{step:07d}"


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under `root` that were written to the end (they hold `STATE_FILE`), oldest first.

    ```py
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for step in (4, 2, 6):
    ...     (root / checkpoint_name(step)).mkdir()
    >>> for step in (4, 2):
    ...     _ = (root / checkpoint_name(step) / STATE_FILE).write_text("{}")
    >>> [p.name for p in complete_checkpoints(root)]
    ['step_0000002', 'step_0000004']

    ```
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _CHECKPOINT_NAME.match(p.name) and (p / STATE_FILE).is_file())


def check_checkpoint(folder: Path) -> None:
    """Raise a `ValueError` naming `folder` unless it is a complete checkpoint this version can read."""
    if not (folder / STATE_FILE).is_file():
        raise ValueError(f"{str(folder)!r} is not a complete checkpoint of this trainer (no {STATE_FILE})")
    if not (folder / EXTRA_STATE_FILE).is_file() and any(folder.glob("custom_checkpoint_*.pkl")):
        raise ValueError(
            f"{str(folder)!r} was written by an older ee_diffusion that pickled the EMA and LR state "
            f"(custom_checkpoint_*.pkl); this version never unpickles: start the run afresh"
        )


def save_extra_state(folder: Path, lr_scheduler: torch.optim.lr_scheduler.LRScheduler, ema: EMAModel | None) -> None:
    """Write the LR schedule and EMA counters (`EXTRA_STATE_FILE`, JSON) and the EMA weights (`EMA_FILE`)."""
    from safetensors.torch import save_file

    extra: dict[str, Any] = {"lr_scheduler": lr_scheduler.state_dict()}
    if ema is not None:
        state = ema.state_dict()
        shadow = state.pop("shadow_params")
        extra["ema"] = state
        save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(shadow)}, str(folder / EMA_FILE))
    atomic_write_text(folder / EXTRA_STATE_FILE, json.dumps(extra) + "\n")


def load_extra_state(folder: Path, lr_scheduler: torch.optim.lr_scheduler.LRScheduler, ema: EMAModel | None) -> None:
    """Restore what `save_extra_state` wrote into `lr_scheduler` and `ema`; raise a `ValueError` naming the
    file when it is missing, unreadable or made for another model."""
    extra = read_json_file(folder / EXTRA_STATE_FILE, "trainer checkpoint state")
    if not isinstance(extra, dict) or "lr_scheduler" not in extra:
        raise ValueError(f"{str(folder / EXTRA_STATE_FILE)!r} has no 'lr_scheduler' entry: not a checkpoint of this trainer")
    lr_scheduler.load_state_dict(extra["lr_scheduler"])
    if ema is None:
        return
    if "ema" not in extra:
        raise ValueError(f"this run keeps an EMA but checkpoint {str(folder)!r} has none (ema_decay changed?)")
    tensors = load_safetensors(folder / EMA_FILE, "EMA weights")
    current = ema.shadow_params
    if len(tensors) != len(current) or any(tensors.get(str(i)) is None or tensors[str(i)].shape != p.shape
                                           for i, p in enumerate(current)):
        raise ValueError(
            f"EMA weights {str(folder / EMA_FILE)!r} do not fit this model ({len(tensors)} tensors for "
            f"{len(current)} parameters or shapes differ): the checkpoint belongs to another experiment"
        )
    shadow = [tensors[str(i)].to(device=p.device, dtype=p.dtype) for i, p in enumerate(current)]
    ema.load_state_dict({**extra["ema"], "shadow_params": shadow})


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, parameters: list[torch.nn.Parameter]) -> Iterator[None]:
    """The EMA's weights in `parameters` for the block (for saving or sampling), then the live ones back; no
    EMA: nothing changes.

    ```py
    >>> weight = torch.nn.Parameter(torch.zeros(1))
    >>> ema = EMAModel([torch.nn.Parameter(torch.ones(1))], decay=0.9)
    >>> with ema_weights(ema, [weight]):
    ...     inside = weight.item()
    >>> inside, weight.item()
    (1.0, 0.0)

    ```
    """
    if ema is not None:
        ema.store(parameters)
        ema.copy_to(parameters)
    try:
        yield
    finally:
        if ema is not None:
            ema.restore(parameters)


def truncate_log(log_path: Path, step: int) -> None:
    """Keep the records of the JSON-lines log `log_path` up to `step`: a run resumed from the checkpoint of
    `step` logs the later steps again. A line cut short by a killed process is dropped too.

    ```py
    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "log.jsonl"
    >>> _ = log.write_text('{"step": 1}\\n{"step": 2}\\n{"step": 3}\\n{"st')
    >>> truncate_log(log, 2); log.read_text()
    '{"step": 1}\\n{"step": 2}\\n'

    ```
    """
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", math.inf) <= step:
            kept.append(line)
    atomic_write_text(log_path, "".join(line + "\n" for line in kept))
