"""How the GPU check runs its parts: each under what is left of one time budget, and recorded either way.

`run_part` runs one part and records it as `ran`, `skipped` (budget spent, or `PartSkipped`: a missing
precondition such as CUDA or a usable xformers), `failed` (it raised; the traceback is kept) or `stopped` (cut
off at the deadline by `time_limit`), so that the report lists every part with its reason.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger(__name__)


class PartSkipped(Exception):
    """A part's precondition is missing (no CUDA, no usable xformers): the part is listed as skipped, with this
    message as the reason."""


class PartStopped(BaseException):
    """Raised inside a running part when the time budget runs out. A BaseException, like KeyboardInterrupt, so
    that no `except Exception` in torch or diffusers swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[bool]:
    """Raise `PartStopped` in the block after `seconds` (SIGALRM); yields whether the limit is enforced (only in
    the main thread of a process on a system with `signal.setitimer`; elsewhere a part runs to its end).

    ```py
    >>> import time
    >>> try:
    ...     with time_limit(0.05):
    ...         time.sleep(5)
    ... except PartStopped:
    ...     print("stopped")
    stopped

    ```
    """
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield False
        return

    def stop(signum, frame):
        raise PartStopped(f"stopped after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_part(report: dict, name: str, work: Callable[[], Any], deadline: float) -> Any:
    """Run one part under the time budget and record it in `report["parts"]`: `ran` (returns its result),
    `skipped` (budget already spent, or `PartSkipped`), `failed` (it raised) or `stopped` (cut off at the
    deadline, a `time.perf_counter()` value). Returns None unless it ran."""
    left = deadline - time.perf_counter()
    entry: dict[str, Any] = {"part": name, "status": "skipped", "reason": None, "elapsed_s": 0.0}
    report["parts"].append(entry)
    if left <= 0:
        entry["reason"] = f"time budget spent ({report['budget_s']:.0f} s)"
        return None
    started = time.perf_counter()
    result = None
    try:
        with time_limit(left):
            result = work()
        entry.update(status="ran")
    except PartSkipped as reason:
        entry.update(reason=str(reason))
    except PartStopped:
        entry.update(status="stopped", reason=f"time budget spent ({report['budget_s']:.0f} s): cut off after "
                                              f"{time.perf_counter() - started:.0f} s")
    except Exception as error:
        entry.update(status="failed", reason=f"{type(error).__name__}: {str(error)[:500]}",
                     traceback=traceback.format_exc()[-3000:])
    entry["elapsed_s"] = time.perf_counter() - started
    logger.info("gpu_check: %s: %s in %.1f s%s", name, entry["status"], entry["elapsed_s"],
                f" ({entry['reason']})" if entry["reason"] else "")
    return result
