"""Copy a trained digits U-Net pipeline folder into the package as fp16 safetensors (+ its training log).

    python -m bench.scripts.unet_digits.export --pipeline runs/unet-digits/pipeline --log runs/unet-digits/log.jsonl \
        --out bench/assets/digits-unet
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from ee_diffusion.pipelines import EarlyExitUNetPipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline", required=True, help="EarlyExitUNetPipeline folder written by the trainer")
    parser.add_argument("--log", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    pipe = EarlyExitUNetPipeline.from_pretrained(args.pipeline)
    if out.exists():
        shutil.rmtree(out)
    # fp16 on disk keeps the package small; diffusers loads the weights into float32 modules.
    pipe.to(torch.float16).save_pretrained(str(out))
    if args.log:
        shutil.copy(args.log, out / "log.jsonl")


if __name__ == "__main__":
    main()
