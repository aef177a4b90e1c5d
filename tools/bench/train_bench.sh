#!/usr/bin/env bash
# Side-by-side training benchmark: idefics-rs vs transformers + peft, full / LoRA / DoRA, one process per run
# (so each peak RSS is one mode's), alternating implementations so machine noise hits both alike.
#   tools/bench/train_bench.sh MODEL_DIR [STEPS] [PYTHON]
# Needs a release build: cargo build --release -p idefics-cli
set -euo pipefail
MODEL=${1:?model dir}
STEPS=${2:-3}
PY=${3:-python}
BIN=${IDEFICS_BIN:-target/release/idefics}
BATCH=$(mktemp --suffix .safetensors)
OUT=${OUT:-train_bench.jsonl}
: > "$OUT"
for mode in full lora dora; do
  "$BIN" bench-train --model "$MODEL" --mode "$mode" --steps "$STEPS" --write-batch "$BATCH" | tee -a "$OUT"
  "$PY" tools/bench/bench_train_torch.py --model "$MODEL" --batch "$BATCH" --mode "$mode" --steps "$STEPS" | tee -a "$OUT"
done
rm -f "$BATCH"
echo "results in $OUT"
