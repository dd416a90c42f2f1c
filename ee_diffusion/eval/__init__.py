"""Evaluation library (tools layer): seeded sampling, FID/KID and accuracy with shipped feature networks, fair
wall-clock timing, paired bootstrap intervals, Inception-v3 and CLIP features from the user's
files, and diffusers' four caches (FirstBlockCache, TaylorSeerCache, MagCache, SeaCache) as baselines.

On it, `ee-diffusion bench --pipeline` (users' benchmarking of their own folder and images): `bench_cli.py` (flags),
`bench_config.py` (`BenchConfig`, method specs), `bench_prepare.py` (checks and loading before sampling) and
`pipeline_bench.py` (the run). It measures through the one engine, `runner.py` (`MethodSampler` samples any
`method.Method` on any supported pipeline; `Runner` caches its images in resumable shards, `sample_cache.py`, and
scores them under every feature network of the run); `frontier.py` decides from the rows alone and `report.py`
writes the files. `solvers.py` (the solvers and ASE schedules) and `point_timing.py` (wall-clock of operating
points) serve the bench and the operating-point search (`ee_diffusion.calibration`) alike. The benchmarks on our
own models are the repository's `bench/` (not installed), which builds on these modules."""

from .timing import interleaved_timings, speedups

__all__ = ["interleaved_timings", "speedups"]
