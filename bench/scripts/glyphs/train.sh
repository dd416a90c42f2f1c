#!/usr/bin/env bash
# Rebuild bench/assets/glyphs-dit (the benchmark's harder setting) on the CPU.
#   bench/scripts/glyphs/train.sh            (runs in ./runs; about 40 minutes on 2 CPU cores)
# (`python -m bench train` is `ee-diffusion train` with the glyphs dataset registered.)
# Stage 1 trains the DiT from scratch (L_simple), stage 2 continues at a lower learning rate, stage 3
# fine-tunes all weights with DeeDiff heads (L_simple + L_u + L_UAL); export.py writes the fp16 asset.
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${RUNS:-runs}
python -m bench train --config bench/scripts/glyphs/pretrain.json --output-dir "$RUNS/glyphs-pretrain"
python -m bench train --config bench/scripts/glyphs/pretrain_more.json --output-dir "$RUNS/glyphs-pretrain-more" \
    --init-from "$RUNS/glyphs-pretrain/pipeline"
python -m bench train --config bench/scripts/glyphs/deediff.json --output-dir "$RUNS/glyphs-dit" \
    --init-from "$RUNS/glyphs-pretrain-more/pipeline"
python -m bench.scripts.glyphs.export --pipeline "$RUNS/glyphs-dit/pipeline" \
    --log "$RUNS/glyphs-pretrain/log.jsonl" "$RUNS/glyphs-pretrain-more/log.jsonl" "$RUNS/glyphs-dit/log.jsonl" \
    --out bench/assets/glyphs-dit
