"""Evaluation library (tools layer): seeded sampling, FID/KID and accuracy with shipped feature networks, fair
wall-clock timing, FLOPs and memory, paired bootstrap intervals, Inception-v3 and CLIP features from the user's
files, and diffusers' four caches (FirstBlockCache, TaylorSeerCache, MagCache, SeaCache) as baselines. The
benchmark commands built on it are in `ee_diffusion.benchmarks`."""

from .timing import interleaved_timings, summarize_timings

__all__ = ["interleaved_timings", "summarize_timings"]
