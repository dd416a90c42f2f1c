"""Write the trained glyphs pipeline as a small asset (fp16 safetensors + JSON), loaded back as float32.

python scripts/glyphs/export.py --pipeline runs/glyphs-dit/pipeline \
    --log runs/glyphs-pretrain/log.jsonl runs/glyphs-pretrain-more/log.jsonl runs/glyphs-dit/log.jsonl \
    --out ee_diffusion/assets/glyphs-dit
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from ee_diffusion._io import atomic_write_text
from ee_diffusion.pipelines import EarlyExitDiTPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--log", nargs="*", default=[], help="training logs (log.jsonl), one table per stage")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    pipe = EarlyExitDiTPipeline.from_pretrained(args.pipeline)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    pipe.transformer.to(torch.float16)
    if pipe.exit_heads is not None:
        pipe.exit_heads.to(torch.float16)
    pipe.save_pretrained(str(out))
    lines = ["# glyphs-dit", "",
             "The harder benchmark setting's model: a class-conditional DiT (8x8x1, patch 2, 8 blocks, width 128, "
             "4 heads, 26 classes: the upper-case letters of 20 typefaces with random affine jitter) with "
             "timestep-conditioned DeeDiff heads: 2000 steps from scratch with L_simple (lr 1e-3), 6000 more (lr 5e-4), "
             "then 500 steps of DeeDiff fine-tuning, on the `glyphs` dataset "
             "(`ee_diffusion/training/datasets_glyphs.py`). Rebuild: `scripts/glyphs/train.sh` (about 40 minutes on "
             "2 CPU cores). Weights fp16, loaded as float32.", ""]
    for log in args.log:
        records = [json.loads(line) for line in Path(log).read_text().splitlines()]
        lines += [f"## {Path(log).parent.name}: {records[-1]['step']} steps, {records[-1]['time_s'] / 60:.1f} min wall", "",
                  "| step | wall s | loss | per-block eps MSE (blocks 1..8) |", "|---|---|---|---|"]
        for r in records:
            if r["step"] % 250 == 0 or r is records[-1]:
                lines.append(f"| {r['step']} | {r['time_s']:.0f} | {r['loss']:.4f} | "
                             + " ".join(f"{v:.4f}" for v in r["block_mse"]) + " |")
        lines.append("")
    atomic_write_text(out / "TRAINING.md", "\n".join(lines) + "\n")
    print(f"saved to {out}: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
