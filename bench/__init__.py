"""The benchmarks on our own models: what we measure ourselves with, kept out of the installed package.

Run from the repository root, `python -m bench <command>` (`cli.py`), with `bench/requirements.txt` installed beside
the package. Every benchmark writes JSON and Markdown rendered from it; they measure through the package's own
engine (`ee_diffusion.eval`: `runner`, `frontier`, `report`, `solvers`), which the package imports nothing back from.

- `presets.py`: `bench`, quality, speed and compute (`compute.py`: FLOPs, peak memory, overheads) of every method
  against the fewer-steps frontier on our models (`models.py`: the settings and their folders in `assets/`); `grid.py` (the methods, including the calibrations'
  picks and diffusers' caches, `mag_cache.py` measuring MagCache's ratios) and `ee_diffusion.eval.report` (the
  files, `rerender`, with the presets' own `markdown`); `agreement.py` compares two reports row by row;
- `publish.py`: `publish`, a report's operating point, `evaluation.json` and `TRAINING.md` into a pipeline folder
  (the asset rebuild: `bench/scripts/rebuild_assets.sh`, and the training and export scripts in `scripts/`);
- `feature_nets.py`: the training of the package's shipped feature networks (`python -m bench.feature_nets`);
- `shapes_bench.py`: `bench-shapes`, the cost at real widths with random weights;
- `engine_bench.py`: `bench-engine`, the engine alone (hook overhead, compaction);
- `caches_bench.py` (+ `caches_rows.py`, `caches_compare.py`, `caches_report.py`, `caches_state.py`): `bench-caches`,
  per-row tail caches against diffusers' caches and cache-dit (`cache_dit_rows.py`) at matched speed, by wall-clock
  and at DiT-XL/2-width cost (`xl_cost.py`);
- `compile_bench.py`: `bench-compile`, planned policies under torch.compile on one of our models (the measurement is
  `gpu_check.compile_check`);
- `backbones_bench.py`: the cost of one ASE-style schedule on every supported backbone;
- `unet_vs_dit.py`: the digits U-Net against the digits DiT on one protocol;
- `gpu_check.py`: the GPU check (bench-shapes timings in bf16, torch.compile, xformers against SDPA) in one run
  under 5 minutes; `gpu_parts.py` runs each part under the time budget and records it, `gpu_report.py` renders
  gpu_check.md from the JSON, so every part that does not run is listed with its reason.
"""

# The glyphs set (dataset, real draws, feature nets) registers itself with the package's registries on import.
from . import glyphs  # noqa: E402,F401
