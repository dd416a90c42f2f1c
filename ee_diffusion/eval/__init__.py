"""Evaluation library (tools layer): seeded sampling, FID/KID and accuracy with shipped feature networks, fair
wall-clock timing, paired bootstrap intervals, Inception-v3 and CLIP features from the user's
files, and diffusers' four caches (FirstBlockCache, TaylorSeerCache, MagCache, SeaCache) as baselines.

On it, `ee-diffusion bench --pipeline`: `bench_cli.py` (flags), `bench_config.py` (`BenchConfig`, method specs),
`bench_prepare.py` (checks and loading) and `pipeline_bench.py` (the run), measuring through the one engine,
`runner.py` (sampling, resumable shards in `sample_cache.py`, scoring); `frontier.py` decides from the rows and
`report.py` writes the files. `solvers.py` and `point_timing.py` serve the operating-point search
(`ee_diffusion.calibration`) too; the repository's `bench/` (not installed) builds on these modules."""

from .timing import interleaved_timings, speedups

__all__ = ["interleaved_timings", "speedups"]
