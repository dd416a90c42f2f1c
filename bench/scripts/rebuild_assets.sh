#!/usr/bin/env bash
# Rebuild a shipped model's assets end to end, from one run: train -> bench -> publish.
#   bench/scripts/rebuild_assets.sh digits     (or glyphs)
# Training writes the pipeline folder and its training.json; the full bench measures every method against the
# fewer-steps frontier (docs/bench-full/); `python -m bench publish` writes the recommended operating point into
# model_index.json, and evaluation.json and TRAINING.md from that same report.
# SKIP_TRAINING=1 re-benches and re-publishes the committed weights.
set -euo pipefail
cd "$(dirname "$0")/../.."
SETTING=${1:?usage: bench/scripts/rebuild_assets.sh digits|glyphs}
case "$SETTING" in
    digits) TRAIN=bench/scripts/train_default_model.sh; MODEL=ee_diffusion/assets/digits-dit ;;
    glyphs) TRAIN=bench/scripts/glyphs/train.sh; MODEL=bench/assets/glyphs-dit ;;
    *) echo "unknown setting '$SETTING'; known: digits, glyphs" >&2; exit 2 ;;
esac
if [ -z "${SKIP_TRAINING:-}" ]; then
    "$TRAIN"
fi
OUT=docs/bench-full-$SETTING
python -m bench bench --preset full --settings "$SETTING" --threads 2 --out "$OUT"
python -m bench publish --report "$OUT/report.json" --setting "$SETTING" --model "$MODEL"
