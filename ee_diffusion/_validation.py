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
