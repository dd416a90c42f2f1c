"""What the tools write, read back: one loader for every output of calibration, the operating-point search,
training and publishing, so that `ee_diffusion.enable(pipe, path)` (any pipeline) and our pipelines'
`from_pretrained` run what was found.

The outputs it reads (`load_result`):

- a calibration JSON (`ee-diffusion calibrate --out policy.json`): `{"exit_config": ..., "calibration": ...}`; the
  steps and guidance it was calibrated at become the call's defaults (a `BlockForecast` placement is only right at
  its step count);
- a search JSON (`calibrate --kind operating-point --out search.json`) or an `operating_point.json`: the whole
  operating point (scheduler, steps, guidance, exit config per step count);
- a folder: `operating_point.json` and/or `exit_config.json` and `exit_heads/` (the search's `--save-to` on a
  stock folder; the trainer's output), or a pipeline folder of ours whose `model_index.json` holds them;
- a bare `EarlyExitConfig` JSON.

```py
>>> import json, tempfile
>>> from pathlib import Path
>>> from ee_diffusion import EarlyExitConfig
>>> from ee_diffusion.schedules import StaticDepth
>>> path = Path(tempfile.mkdtemp()) / "policy.json"
>>> _ = path.write_text(json.dumps({"exit_config": EarlyExitConfig(StaticDepth(3)).to_dict(),
...                                 "calibration": {"calibration_set": {"num_inference_steps": 12}}}))
>>> result = load_result(path)
>>> result.exit_config.policy.depth, result.call_defaults()
(3, {'num_inference_steps': 12})

```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import read_json_file
from ._validation import check_call_options
from .config import EarlyExitConfig
from .operating_point import OperatingPoint, build_scheduler, scheduler_of_point

EXIT_CONFIG_FILE = "exit_config.json"
OPERATING_POINT_FILE = "operating_point.json"
HEADS_FOLDER = "exit_heads"
_ACCEPTED = ("a calibration JSON (calibrate --out), a search JSON (calibrate --kind operating-point --out), an "
             f"{OPERATING_POINT_FILE} or {EXIT_CONFIG_FILE}, or a folder holding them and/or {HEADS_FOLDER}/ (the "
             "search's --save-to, the trainer's output, a pipeline folder of ours)")


@dataclass
class SavedResult:
    """What a tool found: an exit config, or a whole operating point, with the heads it needs and the call
    defaults (steps, guidance) it was measured at.

    Attributes:
        exit_config: the exit config a call runs when it gives no steps (the point's, when there is one).
        point: the operating point (scheduler, steps, guidance, exit config per step count), or None.
        heads_folder: the `exit_heads/` folder of trained `UncertaintyHeads`, or None.
        num_inference_steps / guidance_scale: the defaults of a call that gives none (None: the pipeline's own).
        call_options: the size (height, width, num_frames) it was calibrated at, also a call's defaults.
        scheduler / scheduler_options: the scheduler class it was measured with and the options it was built with
            over the pipeline's own scheduler config (None: the pipeline's own scheduler).
        source: the path it was read from.
    """

    exit_config: EarlyExitConfig | None = None
    point: OperatingPoint | None = None
    heads_folder: Path | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    call_options: dict[str, int] = field(default_factory=dict)
    scheduler: str | None = None
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)

    def call_defaults(self) -> dict[str, Any]:
        """The pipeline-call keywords a call that gives none of them runs with."""
        steps = self.point.num_inference_steps if self.point is not None else self.num_inference_steps
        guidance = self.point.guidance_scale if self.point is not None else self.guidance_scale
        values = {**self.call_options, "num_inference_steps": steps, "guidance_scale": guidance}
        return {name: value for name, value in values.items() if value is not None}

    def make_scheduler(self, current: Any) -> Any | None:
        """The scheduler the result was measured with, rebuilt from the pipeline's `current` one (None: keep it)."""
        if self.point is not None:
            return scheduler_of_point(self.point, current)
        if self.scheduler is None:
            return None
        return build_scheduler(self.scheduler, self.scheduler_options, current)

    def load_heads(self) -> Any:
        """The trained `UncertaintyHeads` of `heads_folder`, or None."""
        if self.heads_folder is None:
            return None
        from .heads import UncertaintyHeads

        return UncertaintyHeads.from_pretrained(self.heads_folder)


def load_result(path: str | os.PathLike) -> SavedResult:
    """Read any output of the tools (see the module docstring); `FileNotFoundError` for a missing path,
    `ValueError` naming the path and what is accepted for anything else."""
    path = Path(path)
    if path.is_dir():
        return _from_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"no result at {str(path)!r}; expected {_ACCEPTED}")
    return _from_data(read_json_file(path, "result JSON"), str(path))


def _from_folder(folder: Path) -> SavedResult:
    heads = folder / HEADS_FOLDER if (folder / HEADS_FOLDER).is_dir() else None
    if (folder / OPERATING_POINT_FILE).is_file():
        result = _from_data(read_json_file(folder / OPERATING_POINT_FILE, OPERATING_POINT_FILE), str(folder))
    elif (folder / EXIT_CONFIG_FILE).is_file():
        result = _from_data(read_json_file(folder / EXIT_CONFIG_FILE, EXIT_CONFIG_FILE), str(folder))
    elif (folder / "model_index.json").is_file():
        index = read_json_file(folder / "model_index.json", "model_index.json")
        index = index if isinstance(index, dict) else {}
        point, config = index.get("operating_point"), index.get("exit_config")
        data = point if point is not None else {} if config is None else config
        result = _from_data(data, str(folder))
    elif heads is not None:
        result = SavedResult(source=str(folder))
    else:
        raise ValueError(f"{str(folder)!r} holds no result of the tools; expected {_ACCEPTED}")
    result.heads_folder = heads
    return result


def _from_data(data: Any, source: str) -> SavedResult:
    if not isinstance(data, dict):
        raise ValueError(f"{source!r} holds a JSON {type(data).__name__}, not a result; expected {_ACCEPTED}")
    try:
        if "operating_point" in data:  # a search JSON
            data = data["operating_point"]
        if "scheduler" in data and "num_inference_steps" in data:  # an operating point
            point = OperatingPoint.from_dict(data)
            return SavedResult(point.exit_config or EarlyExitConfig(), point, source=source)
        if "calibration" in data:  # a calibration JSON: the config, and the steps and guidance it was found at
            info = data["calibration"] if isinstance(data["calibration"], dict) else {}
            calib = info.get("calibration_set") or {}
            return SavedResult(EarlyExitConfig.from_dict(data.get("exit_config")), source=source,
                               num_inference_steps=calib.get("num_inference_steps"),
                               guidance_scale=calib.get("guidance_scale"),
                               call_options=check_call_options(calib.get("call_options") or {}),
                               scheduler=info.get("scheduler"),
                               scheduler_options=info.get("scheduler_options") or {}, calibration=info)
        return SavedResult(EarlyExitConfig.from_dict(data), source=source)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{source!r}: {error}") from None


def adopt_saved_result(pipe: Any, folder: str | os.PathLike, given: dict[str, Any]) -> None:
    """For our pipelines' `from_pretrained`: run what a tool wrote beside a pipeline folder that its
    `model_index.json` does not name - the trainer's `exit_heads/` and `exit_config.json`, the search's
    `operating_point.json` (with its scheduler) on a stock folder - as `ee_diffusion.enable(pipe, folder)` would
    on a stock pipeline. What the folder's own `model_index.json` or the caller (`given`) sets wins."""
    folder = Path(folder)
    if not any((folder / name).exists() for name in (EXIT_CONFIG_FILE, OPERATING_POINT_FILE, HEADS_FOLDER)):
        return
    result = load_result(folder)
    if pipe.exit_heads is None and "exit_heads" not in given and result.heads_folder is not None:
        heads = result.load_heads()
        heads.check_model(pipe.denoiser)
        pipe.register_modules(exit_heads=heads)
    if pipe.config.get("operating_point") is not None or pipe.config.get("exit_config") is not None:
        return
    scheduler = None if "scheduler" in given else result.make_scheduler(pipe.scheduler)
    if scheduler is not None:
        pipe.scheduler = scheduler
    if result.point is not None:
        pipe.set_operating_point(result.point)
    elif result.exit_config is not None:
        pipe.set_default_exit_config(result.exit_config)
