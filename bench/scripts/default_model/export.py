"""Write the trained digits pipeline as the shipped asset: fp16 safetensors + JSON, and its training record.

python -m bench.scripts.default_model.export --pipeline runs/digits-deediff/pipeline \
    --logs runs/digits-pretrain/log.jsonl runs/digits-deediff/log.jsonl --out ee_diffusion/assets/digits-dit
(`--title` and `--description` for other models: bench/scripts/train_deep_model.sh.)

Writes OUT/training.json (the description and the loss curves, from the training logs) and renders OUT/TRAINING.md
from it. The operating point, evaluation.json and the evaluation section of TRAINING.md come from the bench
report afterwards (`python -m bench publish`; the whole chain: `bench/scripts/rebuild_assets.sh digits`).
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

DESCRIPTION = [
    "A class-conditional `DiTTransformer2DModel` (8x8x1 pixels, patch 2, 8 blocks, width 128, 4 heads, 10 classes + "
    "null class, 2.8M parameters) with timestep-conditioned DeeDiff uncertainty heads, trained on scikit-learn's 1797 "
    "digits by `ee_diffusion.training`. Rebuild: `bench/scripts/train_default_model.sh` (configs in "
    "`bench/scripts/default_model/`). Weights stored as fp16, loaded as float32.",
    "Stages: (1) `scratch` - L_simple only; (2) `deediff` - all weights and heads fine-tuned with L_simple + L_u + "
    "L_UAL (authors' normalised layer weights, L_u averaged over layers). EMA weights are saved.",
    "Logged losses are single-batch values (64 samples, random timesteps), so they are noisy. Wall times were measured "
    "on 2 CPU cores shared with other jobs, one intra-op thread per process.",
]


def fmt_list(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def stage(log: Path) -> dict:
    """One TRAINING.md table: every 1/8 of the run (rounded to 25 steps) and the last step."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    every = max(1, (records[-1]["step"] // 8) // 25 * 25)
    rows = [r for r in records if r["step"] % every == 0 or r is records[-1]]
    deediff = "uncertainty" in records[-1]
    columns = ["step", "lr", "loss", "L_simple"] + (["L_u", "L_UAL"] if deediff else [])
    columns.append(f"per-block eps MSE (blocks 1..{len(records[-1].get('block_mse', []))})")
    table = []
    for r in rows:
        extra = [f"{r['uncertainty']:.4f}", f"{r['ual']:.4f}"] if deediff else []
        table.append([str(r["step"]), f"{r['lr']:.2e}", f"{r['loss']:.4f}", f"{r['simple']:.4f}", *extra,
                      fmt_list(r.get("block_mse", []))])
    notes = [f"Final mean certainty per block: {fmt_list(records[-1]['certainty'])}"] if deediff else []
    return {"heading": f"{log.parent.name} (`{log.name}`): {records[-1]['step']} steps, "
                       f"{records[-1]['time_s'] / 60:.1f} min wall", "columns": columns, "rows": table, "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--logs", nargs="+", default=[])
    parser.add_argument("--title", default="digits-dit: how the shipped default model was trained")
    parser.add_argument("--description", type=Path, default=None,
                        help="a JSON list of paragraphs (default: the shipped digits model's description)")
    args = parser.parse_args()
    description = json.loads(args.description.read_text()) if args.description else DESCRIPTION

    pipe = EarlyExitDiTPipeline.from_pretrained(args.pipeline)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    pipe.transformer.to(torch.float16)
    if pipe.exit_heads is not None:  # a pre-trained twin has none
        pipe.exit_heads.to(torch.float16)
    pipe.save_pretrained(str(out))
    index = json.loads((out / "model_index.json").read_text())
    index.pop("_name_or_path", None)  # a path on the machine that trained it
    atomic_write_text(out / "model_index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
    training = {"title": args.title, "description": description,
                "stages": [stage(Path(p)) for p in args.logs if Path(p).is_file()],
                "source": "the training logs (log.jsonl) of the runs named in each stage heading"}
    atomic_write_json(out / "training.json", training, indent=1)
    render_training_md(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
