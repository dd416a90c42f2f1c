#!/usr/bin/env bash
# Rebuild the shipped default model ee_diffusion/assets/digits-dit on the CPU.
#   bench/scripts/train_default_model.sh            (runs in ./runs; about 15-20 minutes on 2 CPU cores)
# Stage 1 trains the DiT from scratch (L_simple), stage 2 fine-tunes all weights with DeeDiff heads
# (L_simple + L_u + L_UAL), then export.py measures exit configs, picks the default one and writes the asset
# (fp16 safetensors + JSON, TRAINING.md with the training curves and the measurements).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs}
# One intra-op thread per process is about 2x faster than two when the cores are shared with other work.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

ee-diffusion train --config bench/scripts/default_model/pretrain.json --output-dir "$RUNS/digits-pretrain"
ee-diffusion train --config bench/scripts/default_model/deediff.json --output-dir "$RUNS/digits-deediff" \
    --init-from "$RUNS/digits-pretrain/pipeline"
python -m bench.scripts.default_model.export --pipeline "$RUNS/digits-deediff/pipeline" \
    --logs "$RUNS/digits-pretrain/log.jsonl" "$RUNS/digits-deediff/log.jsonl" \
    --out ee_diffusion/assets/digits-dit
