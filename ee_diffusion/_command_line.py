"""What the command lines share (`ee-diffusion`, the training module's, the repository's `python -m bench`): the
argparse types that refuse a bad number naming its flag, and the one error boundary every subcommand runs in.

```py
>>> parser = argparse.ArgumentParser(prog="tool")
>>> _ = parser.add_argument("--batch-size", type=int_at_least(1))
>>> parser.parse_args(["--batch-size", "4"]).batch_size
4

```
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: What a user's input can get wrong: a bad value, a missing or unreadable file (diffusers raises `OSError` for a
#: truncated weights file), a path of the wrong kind. They end a command with their message and exit status 2, as
#: argparse ends a bad flag; any other exception is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, OSError)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `low`; argparse names the flag in the refusal, before anything runs."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def number_in(low: float, high: float = float("inf"), low_open: bool = True) -> Callable[[str], float]:
    """An argparse `type`: a finite number in (low, high] (`low_open`) or [low, high]."""
    allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}]" if high < float("inf") else \
        f"{'>' if low_open else '>='} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")  # refused below, as any value out of range
        if not ((low < value if low_open else low <= value) and value <= high and value < float("inf")):
            raise argparse.ArgumentTypeError(f"must be a finite number {allowed}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def add_debug(parser: argparse.ArgumentParser, subparsers: Any = None) -> None:
    """`--debug`, before or after the subcommand (of `subparsers`, if any): show the traceback of a refused input
    (`run_command`)."""
    text = "show the traceback of an input error instead of its one-paragraph message"
    parser.add_argument("--debug", action="store_true", help=text)
    for sub in (subparsers.choices.values() if subparsers is not None else ()):
        # SUPPRESS: a subcommand without the flag leaves the value the main parser set.
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=text)


def run_command(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Parse `argv` and run its command (`args.func`, set by the parser or its subcommand) inside the command
    line's one error boundary: an input error (`USER_ERRORS`) ends it with `PROG [COMMAND]: error: MESSAGE` on
    stderr and exit status 2, as argparse ends a bad flag (`--debug`: raised, with its traceback); any other
    exception propagates."""
    args = parser.parse_args(argv)
    # Reports record the command that made them; when `main` is called from Python, sys.argv is not it.
    args.command_line = shlex.join([*parser.prog.split(), *argv])
    # Commands report progress through logging (the calibrations, the benches): show it on stderr.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        # One paragraph, whatever line breaks the message had.
        message = " ".join(str(error).split()) or type(error).__name__
        command = " ".join((parser.prog, *([args.command] if getattr(args, "command", None) else [])))
        sys.stderr.write(f"{command}: error: {message}\n")  # argparse's own form for bad arguments
        return 2


def warn_half_on_cpu(dtype: str, device: str) -> None:
    """`--dtype bfloat16`/`float16` on the CPU runs, but most CPUs have no fast kernels for it: slower than float32
    and other images, which is rarely what was meant. Said once, on stderr; the run goes on as asked."""
    if dtype != "float32" and device.split(":")[0] == "cpu":
        logger.warning("warning: --dtype %s on the CPU: most CPUs have no fast %s kernels, so this runs slower than "
                       "float32 (and makes other images); use --dtype float32 on the CPU, %s on a GPU", dtype, dtype,
                       dtype)


def check_device(device: str) -> None:
    """`--device` names a device torch has here: a bad name or a missing CUDA device is refused before anything
    loads (torch itself would fail later, with an `AssertionError` or `RuntimeError` naming no flag)."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device must name a torch device (cpu, cuda, cuda:1, mps, ...), got {device!r}") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, True):
        raise ValueError(f"--device {device!r}: this machine has no {kind} device torch can use; use --device cpu")
