"""Copy a trained digits U-Net pipeline folder into the package as fp16 safetensors (+ its training log).

    python scripts/unet_digits/export.py --pipeline runs/unet-digits/pipeline --log runs/unet-digits/log.jsonl \
        --out ee_diffusion/assets/digits-unet
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from ee_diffusion.eval.unet_sampling import INFO_FILE, load_unet_folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--log", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    source, out = Path(args.pipeline), Path(args.out)
    bundle = load_unet_folder(source)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # fp16 on disk keeps the package small; diffusers loads the weights into float32 modules.
    bundle.unet.to(torch.float16).save_pretrained(str(out / "unet"))
    bundle.bridges.to(torch.float16).save_pretrained(str(out / "exit_bridges"))
    if bundle.heads is not None:
        bundle.heads.to(torch.float16).save_pretrained(str(out / "exit_heads"))
    shutil.copytree(source / "scheduler", out / "scheduler")
    for name in ("model_index.json", INFO_FILE):
        shutil.copy(source / name, out / name)
    if args.log:
        shutil.copy(args.log, out / "log.jsonl")


if __name__ == "__main__":
    main()
