#!/usr/bin/env bash
# The tiny Idefics2, trained end to end by our own pipeline (paper's recipe at toy scale), one command:
#
#   recipes/tiny/run.sh            (from the repository root; IDEFICS=path/to/idefics to pick the binary)
#   FROM=assemble recipes/tiny/run.sh   (re-run from one stage on, keeping the outputs of the earlier ones)
#
# Stages: synthetic data (train seed + held-out seed) -> tokenizer -> init -> language-model pre-training ->
# SigLIP vision pre-training -> assembly (new connector) -> multimodal stage 1 (low resolution) -> stage 2
# (full resolution, + documents/OCR) -> instruction fine-tuning (DoRA; single-object questions first, then all
# families) -> evaluation on the held-out split with and without image splitting, and the text-only control
# (every question asked with another question's image). Every stage writes a Hugging Face-format checkpoint
# under runs/tiny/, and its wall time goes to runs/tiny/timings.log.
set -euo pipefail

cd "$(dirname "$0")/../.."
RUN=runs/tiny
REC=recipes/tiny
IDEFICS=${IDEFICS:-target/release/idefics}
SEED=${SEED:-0}
N=${N:-1200}                # training examples per task family (5 families)
HELDOUT=${HELDOUT:-50}      # held-out examples per family (derived seed: a different set)
VOCAB=${VOCAB:-1024}
SIGLIP_STEPS=${SIGLIP_STEPS:-1800}

if [ ! -x "$IDEFICS" ]; then
  echo "building $IDEFICS"; cargo build --release -p idefics-cli
fi
FROM=${FROM:-}
mkdir -p "$RUN"
LOG="$RUN/timings.log"
if [ -z "$FROM" ]; then : > "$LOG"; else echo "# re-run from stage $FROM" >> "$LOG"; fi
T_ALL=$(date +%s)

stage() {  # stage NAME CMD... : runs CMD, logs its wall time (and the stage's output to runs/tiny/NAME.log)
  local name=$1; shift
  if [ -n "$FROM" ]; then
    if [ "$name" != "$FROM" ]; then echo "== $name: skipped (FROM=$FROM)"; return 0; fi
    FROM=""
  fi
  local t0; t0=$(date +%s)
  echo "== $name: $*"
  "$@" 2>&1 | tee "$RUN/$name.log"
  local dt=$(( $(date +%s) - t0 ))
  printf '%-12s %6ds  %s\n' "$name" "$dt" "$*" | tee -a "$LOG"
}

stage data      "$IDEFICS" data synth --out "$RUN/data" --n "$N" --heldout "$HELDOUT" --seed "$SEED"
stage tokenizer "$IDEFICS" tokenizer train --data "$RUN/data/train" --vocab-size "$VOCAB" --out "$RUN/tokenizer"
# Stage-1 resolution (longest side 112) in the processor config; stage 2 raises it to 224 below.
stage init      "$IDEFICS" init --config "$REC/config.json" --tokenizer "$RUN/tokenizer" --out "$RUN/init" \
                  --seed "$SEED" --longest-edge 112
stage lm        "$IDEFICS" train --config "$REC/lm.toml"
# Batches alternate between longest side 112 (stage 1) and 224 (stage 2, SFT, inference): at 112 alone
# the tower never trains half of its position table, which the later stages freeze and 224 px then uses.
# --parallel 2: the batch's image-size groups go through the tower on two threads (1.7x per step).
# --pool mean-max: the loss sees the mean of the patch outputs (colour) and their max (a shape's outline,
# which the mean dilutes with the background).
stage siglip    "$IDEFICS" pretrain-vision --model "$RUN/lm/final" --data "$RUN/data/train" \
                  --steps "$SIGLIP_STEPS" --batch-size 32 --longest-edge 112,224 --lr 1e-3 --parallel 2 \
                  --pool mean-max --out "$RUN/siglip"
# Small random perceiver latents instead of transformers' ones: with ones the perceiver collapsed in stage 1
# (its output stopped depending on the image); see `init::LatentsInit`. Perceiver q/k x5: attention sharp
# enough from the start to pick out the patches of an outline (see `init::scale_perceiver_qk`).
stage assemble  "$IDEFICS" assemble --text "$RUN/lm/final" --vision "$RUN/siglip" --out "$RUN/assembled" \
                  --seed "$SEED" --latents-std 0.02 --perceiver-qk-scale 5
stage stage1    "$IDEFICS" train --config "$REC/stage1.toml"

# Stage 2 starts from stage 1 at the full resolution: same weights, processor longest side 224.
rm -rf "$RUN/stage1_hr"
cp -r "$RUN/stage1/final" "$RUN/stage1_hr"
sed -i -e 's/"longest_edge": [0-9]*/"longest_edge": 224/' -e 's/"shortest_edge": [0-9]*/"shortest_edge": 112/' \
  "$RUN/stage1_hr/processor_config.json"
stage stage2    "$IDEFICS" train --config "$REC/stage2.toml"
# Instruction tuning in two steps: the single-object questions alone first (opens the image path), then all
# families with those questions kept in every batch.
stage sft_basics "$IDEFICS" train --config "$REC/sft_basics.toml"
stage sft       "$IDEFICS" train --config "$REC/sft.toml"

stage eval_split   "$IDEFICS" eval --model "$RUN/sft/final" --task synth --data "$RUN/data" --split \
                     --batch-size 8 --out "$RUN/eval/split"
stage eval_nosplit "$IDEFICS" eval --model "$RUN/sft/final" --task synth --data "$RUN/data" --no-split \
                     --batch-size 8 --out "$RUN/eval/nosplit"
stage eval_swapped "$IDEFICS" eval --model "$RUN/sft/final" --task synth --data "$RUN/data" --no-split \
                     --swap-images --batch-size 8 --out "$RUN/eval/nosplit_swapped"

printf '%-12s %6ds\n' total "$(( $(date +%s) - T_ALL ))" | tee -a "$LOG"
ls -l "$RUN/sft/final/model.safetensors" | tee -a "$LOG"
