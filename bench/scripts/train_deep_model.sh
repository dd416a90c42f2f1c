#!/usr/bin/env bash
# Train the deep digits DiT (28 blocks, width 64: the depth of DiT-XL/2 and PixArt-alpha) on the CPU.
#   bench/scripts/train_deep_model.sh      (runs in ./runs; about 50 minutes on 2 shared CPU cores, one thread)
# Stage 1 trains from scratch (L_simple): the pre-trained twin for training-free exits. Stage 2 fine-tunes all
# weights with DeeDiff heads (L_simple + L_u + L_UAL). An interrupted stage resumes from its latest checkpoint
# (every 500 steps) when the script is run again. Both are exported as fp16 assets (digits-dit-deep[-pretrained]).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

stage() {  # stage NAME CONFIG [extra train args]
    local out="$RUNS/$1" config=$2
    shift 2
    if [ -d "$out/pipeline" ]; then echo "$out: done"; return; fi
    local resume=()
    if compgen -G "$out/checkpoints/*" > /dev/null; then resume=(--resume latest); fi
    ee-diffusion train --config "$config" --output-dir "$out" "${resume[@]}" "$@"
}
stage digits-deep-pretrain bench/scripts/deep_model/pretrain.json
stage digits-deep-deediff bench/scripts/deep_model/deediff.json --init-from "$RUNS/digits-deep-pretrain/pipeline"
python -m bench.scripts.default_model.export --pipeline "$RUNS/digits-deep-pretrain/pipeline" \
    --logs "$RUNS/digits-deep-pretrain/log.jsonl" --out bench/assets/digits-dit-deep-pretrained \
    --title "digits-dit-deep-pretrained: the deep digits DiT after pre-training" \
    --description bench/scripts/deep_model/description_pretrained.json
python -m bench.scripts.default_model.export --pipeline "$RUNS/digits-deep-deediff/pipeline" \
    --logs "$RUNS/digits-deep-pretrain/log.jsonl" "$RUNS/digits-deep-deediff/log.jsonl" \
    --out bench/assets/digits-dit-deep --title "digits-dit-deep: how the deep digits model was trained" \
    --description bench/scripts/deep_model/description.json
