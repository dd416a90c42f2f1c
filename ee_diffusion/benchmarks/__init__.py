"""Benchmarks (tools layer): the runnable benchmarks, each writing JSON and Markdown rendered from it, and the
modules they share.

The commands:
- `bench.py`: `ee-diffusion bench`, quality, speed and compute of every method against the fewer-steps frontier on
  a setting; `grid.py` (the methods), `frontier.py` (the decisions, from the rows alone) and `report.py` (the
  files, `rerender`); with `--pipeline`, on the user's model and data: `user_cli.py` (flags), `user_config.py`
  (`BenchConfig`, method specs), `user_prepare.py` (checks and loading before sampling), `user_bench.py` (the
  run), `agreement.py` (two reports compared row by row). Both measure through the one engine, `runner.py`
  (`MethodSampler` samples any `method.Method` on any supported pipeline; `Runner` caches its images in
  resumable shards, `sample_cache.py`, and scores them under every feature network of the run);
- `publish.py`: `ee-diffusion publish`, a report's operating point, `evaluation.json` and `TRAINING.md` into a
  pipeline folder;
- `shapes_bench.py`: `ee-diffusion bench-shapes`, the cost at real widths with random weights;
- `engine_bench.py`: `ee-diffusion bench-engine`, the engine alone (hook overhead, compaction);
- `caches_bench.py` (+ `caches_report.py`): `ee-diffusion bench-caches`, per-row tail caches against diffusers'
  caches at matched speed;
- `compile_bench.py`: `ee-diffusion bench-compile`, planned policies under torch.compile on a shipped model (the
  measurement is `gpu_check.compile_check`);
- `backbones_bench.py`: the cost of one ASE-style schedule on every supported backbone;
- `unet_vs_dit.py`: the digits U-Net against the digits DiT on one protocol;
- `gpu_check.py`: the GPU check (bench-shapes timings in bf16, torch.compile, xformers against SDPA) in one run
  under 5 minutes; `gpu_parts.py` runs each part under the time budget and records it, `gpu_report.py` renders
  gpu_check.md from the JSON, so every part that does not run is listed with its reason.

Shared: `solvers.py` (the solvers and ASE schedules of the bench and the operating-point search) and
`point_timing.py` (wall-clock of operating points, the operating-point search's `--time-batch`). The measuring
library underneath (seeded sampling, FID, timing, FLOPs, feature networks) is `ee_diffusion.eval`.
"""
