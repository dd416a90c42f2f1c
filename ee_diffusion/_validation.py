"""Argument checks shared by the validated dataclass configs and the public functions."""

from __future__ import annotations

from typing import Any


def check_number(value: Any, name: str, low: float = 0.0, high: float | None = None, low_open: bool = False) -> float:
    """`value` as a float if it is a real number (not a bool, not NaN) in range; else a ValueError naming it."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def check_int(value: Any, name: str, low: int = 1, what: str = "") -> int:
    """`value` if it is an integer (not a bool) >= `low`; else a ValueError naming it (and `what` it counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        suffix = f" ({what})" if what else ""
        raise ValueError(f"{name} must be an integer >= {low}{suffix}, got {value!r}")
    return value


#: The pipeline-call options the tools pass through (`call_options`): the size of an image or a video.
CALL_OPTIONS = ("height", "width", "num_frames")


def check_call_options(options: dict[str, object]) -> dict[str, int]:
    """`options` (name -> positive int, names from `CALL_OPTIONS`), checked; `ValueError` naming what is wrong."""
    if not isinstance(options, dict):
        raise TypeError(f"call_options must be a dict of {', '.join(CALL_OPTIONS)}, got {type(options).__name__}")
    for name, value in options.items():
        if name not in CALL_OPTIONS:
            raise ValueError(f"call option {name!r} is not one the tools pass through; allowed: "
                             f"{', '.join(CALL_OPTIONS)}")
        check_int(value, f"call option {name}", 1)
    return dict(options)
