"""Write the trained glyphs pipeline as a small asset (fp16 safetensors + JSON), loaded back as float32.

python -m bench.scripts.glyphs.export --pipeline runs/glyphs-dit/pipeline \
    --log runs/glyphs-pretrain/log.jsonl runs/glyphs-pretrain-more/log.jsonl runs/glyphs-dit/log.jsonl \
    --out bench/assets/glyphs-dit
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from ee_diffusion._io import atomic_write_json, atomic_write_text
from bench.publish import render_training_md
from ee_diffusion.pipelines import EarlyExitDiTPipeline

DESCRIPTION = (
    "The harder benchmark setting's model: a class-conditional DiT (8x8x1, patch 2, 8 blocks, width 128, 4 heads, 26 "
    "classes: the upper-case letters of 20 typefaces with random affine jitter) with timestep-conditioned DeeDiff "
    "heads: 2000 steps from scratch with L_simple (lr 1e-3), 6000 more (lr 5e-4), then 500 steps of DeeDiff "
    "fine-tuning, on the `glyphs` dataset (`bench/glyphs.py`). Rebuild: "
    "`bench/scripts/glyphs/train.sh` (about 40 minutes on 2 CPU cores). Weights fp16, loaded as float32."
)


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
    index = json.loads((out / "model_index.json").read_text())
    index.pop("_name_or_path", None)  # a path on the machine that trained it
    atomic_write_text(out / "model_index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
    stages = []
    for log in args.log:
        records = [json.loads(line) for line in Path(log).read_text().splitlines()]
        rows = [[str(r["step"]), f"{r['time_s']:.0f}", f"{r['loss']:.4f}", " ".join(f"{v:.4f}" for v in r["block_mse"])]
                for r in records if r["step"] % 250 == 0 or r is records[-1]]
        stages.append({"heading": f"{Path(log).parent.name}: {records[-1]['step']} steps, "
                                  f"{records[-1]['time_s'] / 60:.1f} min wall",
                       "columns": ["step", "wall s", "loss", "per-block eps MSE (blocks 1..8)"], "rows": rows})
    training = {"title": "glyphs-dit", "description": [DESCRIPTION], "stages": stages,
                "source": "the training logs (log.jsonl) of the runs named in each stage heading"}
    atomic_write_json(out / "training.json", training, indent=1)
    render_training_md(out)  # the evaluation section comes from `python -m bench publish` (bench/scripts/rebuild_assets.sh)
    print(f"saved to {out}: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
