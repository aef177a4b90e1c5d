#!/bin/bash
# Load time side by side: /tmp/idefics-old = release build of f1bef72 (whole-tensor read + candle's to_dtype),
# target/release/idefics = the chunked f32 reader (crates/idefics/src/weights.rs), transformers sdpa.
# The bench's other requests run too (text prefill, one decode step); only load_s / rss_after_load_mb are read.
cd /work/main
S="--skip photo_980x980_split photo_640x480_split photo_980x980_nosplit photo_640x480_nosplit --repeat 1 --warmup 0 --decode-tokens 1"
for r in 1 2 3; do
 for m in 256m 500m; do
  d=/work/bench-smolvlm-$m
  /tmp/idefics-old bench --model $d $S --json /tmp/lb/old-$m-$r.json > /dev/null 2>&1
  target/release/idefics bench --model $d $S --json /tmp/lb/new-$m-$r.json > /dev/null 2>&1
  /work/.venv/bin/python -u tools/reference/bench_transformers.py --ckpt $d $S --attn sdpa --json /tmp/lb/tf-$m-$r.json > /dev/null 2>&1
 done
done
