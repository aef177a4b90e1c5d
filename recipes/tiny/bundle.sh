#!/usr/bin/env bash
# Copies the tiny pipeline's final model (runs/tiny/sft/final, made by recipes/tiny/run.sh) into
# models/idefics2-tiny, the default model of `idefics ask` / `chat` / `serve`, and exports a few example images
# from a synthetic set generated with a seed the training never used.
#   recipes/tiny/bundle.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
IDEFICS=${IDEFICS:-target/release/idefics}
SRC=${SRC:-runs/tiny/sft/final}
DST=models/idefics2-tiny
rm -rf "$DST"
mkdir -p "$DST"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json special_tokens_map.json \
         chat_template.jinja processor_config.json generation_config.json; do
  if [ -f "$SRC/$f" ]; then cp "$SRC/$f" "$DST/"; fi
done
cp runs/tiny/timings.log "$DST/training-timings.log"
du -sh "$DST"
# Example images: held-out scenes of each family from seed 20251128 (training used seed 0).
EX=$(mktemp -d)
"$IDEFICS" data synth --out "$EX" --n 1 --heldout 4 --seed 20251128 > /dev/null
rm -rf examples/images && mkdir -p examples/images
for fam in shapes ocr docs charts; do
  "$IDEFICS" data inspect --layout chat "$EX/heldout/chat_$fam.parquet" --show 4 --export "$EX/$fam" > /dev/null
  for f in "$EX/$fam"/*.png; do cp "$f" "examples/images/${fam}_$(basename "$f")"; done
  sed "s/\"\\([0-9]*_[0-9]*\\.png\\)\"/\"${fam}_\\1\"/g" "$EX/$fam/samples.jsonl" >> examples/images/questions.jsonl
done
rm -rf "$EX"
ls examples/images | head
