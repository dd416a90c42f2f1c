"""Evaluation: timing harness and benchmarks."""

from .timing import interleaved_timings, summarize_timings

__all__ = ["interleaved_timings", "summarize_timings"]
