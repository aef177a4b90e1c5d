#!/usr/bin/env bash
# Where do the two cores pay: candle's intra-op threads, or one micro-batch per thread? The same training step
# (bench-train, MICRO micro-batches of the batch) three ways, alternating so machine noise hits all alike:
#   ops2   RAYON_NUM_THREADS=2, micro-batches one after the other (the default)
#   ops1   RAYON_NUM_THREADS=1, micro-batches one after the other
#   par    RAYON_NUM_THREADS=1, micro-batches at once (--parallel MICRO, [run] parallel_micro_batches)
#   tools/bench/threads_bench.sh MODEL_DIR MODE [ROUNDS] [MICRO] [extra bench-train args...]
# Needs a release build: cargo build --release -p idefics-cli
set -euo pipefail
MODEL=${1:?model dir}
MODE=${2:?full, lora or dora}
ROUNDS=${3:-2}
MICRO=${4:-2}
shift $(( $# < 4 ? $# : 4 ))
BIN=${IDEFICS_BIN:-target/release/idefics}
OUT=${OUT:-threads_bench.jsonl}
: > "$OUT"
tag() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['setting']='$1'; print(json.dumps(d))"; }
for _ in $(seq "$ROUNDS"); do
  RAYON_NUM_THREADS=2 "$BIN" bench-train --model "$MODEL" --mode "$MODE" --micro-batches "$MICRO" "$@" \
    | tail -1 | tag ops2 | tee -a "$OUT"
  RAYON_NUM_THREADS=1 "$BIN" bench-train --model "$MODEL" --mode "$MODE" --micro-batches "$MICRO" "$@" \
    | tail -1 | tag ops1 | tee -a "$OUT"
  env -u RAYON_NUM_THREADS "$BIN" bench-train --model "$MODEL" --mode "$MODE" --micro-batches "$MICRO" \
    --parallel "$MICRO" "$@" | tail -1 | tag par | tee -a "$OUT"
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for s in ("ops2", "ops1", "par"):
    xs = [t for r in rows if r["setting"] == s for t in r["step_s_all"]]
    med[s] = statistics.median(xs)
    peak = max(r["peak_rss_mb"] for r in rows if r["setting"] == s)
    print(f"{s:5s} median step {med[s]:.3f} s over {len(xs)} steps, peak RSS {peak:.0f} MB")
print(f"speed-up of par over ops2: {med['ops2'] / med['par']:.2f}x; of ops1 over ops2: {med['ops2'] / med['ops1']:.2f}x")
PY
echo "results in $OUT"
