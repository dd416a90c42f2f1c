"""One prepared GPU check: DiT-XL/2-shaped throughput with early exit (random weights), JSON out, < 8 minutes.

`python -m ee_diffusion.benchmarks.gpu_check --out gpu_out` on a CUDA machine measures, for a DiT-XL/2-shaped
transformer (28 blocks, width 1152, 16 heads, 32x32x4 latents, patch 2: 256 tokens; learned sigma; 1000
classes) in bf16 with torch SDPA, a denoising loop of `--steps` model calls at several batch sizes:

- `full` (stock model), `hooks_off` (hooks applied, never exits),
- `ase_released`: the released ASE schedule (28/24/20/16/12 blocks over t), planned up front,
- `static_14`: every row exits after block 14,
- `half_rows_exit_14`: half of the rows of every call exit after block 14 (per-row compaction, planned),
- `half_rows_exit_14_dynamic`: the same exits decided block by block (one host sync per block),
- with xformers when it imports (`enable_xformers_memory_efficient_attention`): `full` and `ase_released` again.

Quality is not measurable with random weights; this is about wall-clock. `--small` runs tiny shapes on the CPU
(the test suite does that). Output: OUT/gpu_check.json (timings, speedups to `full`, ideal ratios).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from .._io import atomic_write_json
from ..config import EarlyExitConfig
from ..schedules import StaticDepth, TimestepSchedule
from .engine_bench import _ExitAfterBlock
from ..eval.timing import ExitConfigSwitch, interleaved_timings, summarize_timings

XL = {"num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8,
      "sample_size": 32, "patch_size": 2, "num_embeds_ada_norm": 1000}
SMALL = {"num_layers": 4, "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4, "out_channels": 8,
         "sample_size": 8, "patch_size": 2, "num_embeds_ada_norm": 10}


def build_model(shape: dict, device: torch.device, dtype: torch.dtype):
    from diffusers import DiTTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DiTTransformer2DModel(norm_num_groups=32, **shape)
        # adaLN-zero starts every block as the identity; give the modulation small random weights instead.
        for name, param in model.named_parameters():
            if "norm1.linear" in name or "proj_out" in name:
                torch.nn.init.normal_(param, std=0.02)
    for block in model.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    return model.to(device=device, dtype=dtype).eval()


def run(out: str | Path, small: bool = False, steps: int = 25, batch_sizes: tuple[int, ...] | None = None,
        repeats: int = 5, warmup: int = 2) -> dict:
    cuda = torch.cuda.is_available() and not small
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = XL if not small else SMALL
    batch_sizes = batch_sizes or ((8, 32, 64) if cuda else (2,))
    model = build_model(shape, device, dtype)
    n = shape["num_layers"]
    half = n // 2
    released = [max(1, round(d * n / 28)) for d in (28, 24, 20, 16, 12)]
    trajectory = torch.linspace(999, 0, steps).round()
    ase_depths = TimestepSchedule([200, 400, 600, 800], released).plan_depths(trajectory, n).float()
    ideal = {"ase_released": float(ase_depths.mean()) / n, "static_%d" % half: half / n,
             "half_rows_exit_%d" % half: (half + 0.5 * (n - half)) / n}
    results: dict = {}
    start = time.perf_counter()
    for batch in batch_sizes:
        size = shape["sample_size"]
        x = torch.randn(batch, shape["in_channels"], size, size, device=device, dtype=dtype)
        y = torch.arange(batch, device=device) % shape["num_embeds_ada_norm"]
        mixed = torch.tensor([900, 100] * (batch // 2) + [100] * (batch % 2), device=device)
        switch = ExitConfigSwitch(model)

        def loop(per_row: bool = False):
            def call():
                for t in trajectory:
                    timestep = mixed if per_row else torch.full((batch,), float(t), device=device)
                    model(x, timestep=timestep, class_labels=y)
            return call

        configs = {
            "hooks_off": EarlyExitConfig(),
            "ase_released": EarlyExitConfig(policy=TimestepSchedule([200, 400, 600, 800], released)),
            f"static_{half}": EarlyExitConfig(policy=StaticDepth(half)),
            f"half_rows_exit_{half}": EarlyExitConfig(policy=TimestepSchedule([500], [n, half])),
            f"half_rows_exit_{half}_dynamic": EarlyExitConfig(policy=_ExitAfterBlock(half)),
        }
        # The per-row methods feed mixed timesteps (half the rows near noise) so that half the rows exit; a
        # full-depth call costs the same whatever the timestep values, so `full` stays their reference.
        methods = {"full": loop(), **{name: loop(per_row=name.startswith("half_rows")) for name in configs}}
        setup = {"full": switch.stock, **{name: switch.use(config) for name, config in configs.items()}}
        with torch.no_grad():
            times = interleaved_timings(methods, repeats=repeats, warmup=warmup, device=device, setup=setup)
            summary = summarize_timings(times, reference="full")
            switch.close()
            entry = {"methods": summary, "rows": batch, "steps": steps}
            entry["images_per_s_full"] = batch / summary["full"]["median_s"]
            try:
                import xformers  # noqa: F401

                model.enable_xformers_memory_efficient_attention()
                xt_setup = {"full_xformers": switch.stock, "ase_released_xformers": switch.use(configs["ase_released"])}
                xt = interleaved_timings({name: loop() for name in xt_setup}, repeats=repeats, warmup=1, device=device,
                                         setup=xt_setup)
                switch.close()
                model.disable_xformers_memory_efficient_attention()
                entry["xformers"] = {k: {"median_s": sorted(v)[len(v) // 2]} for k, v in xt.items()}
            except Exception as error:  # not installed, or no CUDA kernels
                entry["xformers"] = f"unavailable: {type(error).__name__}: {str(error)[:200]}"
        results[str(batch)] = entry
    report = {
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "dtype": str(dtype), "attention": "torch SDPA (AttnProcessor2_0)", "shape": shape, "torch": torch.__version__,
        "ideal_ratios": ideal, "results": results, "elapsed_s": time.perf_counter() - start,
        "note": "ratio_to_reference < 1 is faster than full; ideal_ratios are block fractions (no overhead)",
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "gpu_check.json", report, indent=2)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_out"))
    parser.add_argument("--small", action="store_true", help="tiny shapes on the CPU (for tests)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    report = run(args.out, small=args.small, steps=args.steps,
                 batch_sizes=tuple(args.batch_sizes) if args.batch_sizes else None, repeats=args.repeats)
    for batch, entry in report["results"].items():
        print(batch, {k: round(v["ratio_to_reference"], 3) for k, v in entry["methods"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
