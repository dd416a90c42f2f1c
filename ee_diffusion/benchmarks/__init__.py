"""Benchmark commands (tools layer): each module is one runnable benchmark that writes JSON + Markdown.

- `bench.py` (+ `report.py`): `ee-diffusion bench`, quality, speed and compute of every method on a setting;
- `engine_bench.py`: `ee-diffusion bench-engine`, the engine alone (hook overhead, compaction);
- `caches_bench.py` (+ `caches_report.py`): `ee-diffusion bench-caches`, per-row tail caches against diffusers' caches
  at matched speed;
- `unet_vs_dit.py`: the digits U-Net against the digits DiT on one protocol;
- `compile_bench.py`: `ee-diffusion bench-compile`, planned policies under torch.compile on a shipped model;
- `point_timing.py`: wall-clock of operating points (the operating-point search's `--time-batch`);
- `gpu_check.py`: the GPU checks (fused attention, bf16, compile) in one short script;
- `solvers.py`: the solvers and ASE schedules that the bench and the operating-point search share.

The measuring library they share (seeded sampling, FID, timing, FLOPs, feature networks) is `ee_diffusion.eval`.
"""
