#!/usr/bin/env bash
# What the fused training kernels (nn/train_kernels.rs) and the malloc settings (idefics-cli/src/malloc.rs)
# each buy: the same bench-train step four ways, alternated so machine noise hits all alike:
#   composed+sys   IDEFICS_TRAIN_KERNELS=composed IDEFICS_MALLOC=system   (the state before either)
#   composed       IDEFICS_TRAIN_KERNELS=composed                         (malloc settings only)
#   fused+sys      IDEFICS_MALLOC=system                                  (kernels only)
#   fused          defaults                                               (both)
#   tools/bench/step_bench.sh MODEL_DIR MODE [ROUNDS] [extra bench-train args...]
# Needs a release build: cargo build --release -p idefics-cli
set -euo pipefail
MODEL=${1:?model dir}
MODE=${2:?full, lora or dora}
ROUNDS=${3:-2}
shift $(( $# < 3 ? $# : 3 ))
BIN=${IDEFICS_BIN:-target/release/idefics}
OUT=${OUT:-step_bench.jsonl}
: > "$OUT"
tag() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['setting']='$1'; print(json.dumps(d))"; }
one() {  # one SETTING ENV...
  local setting=$1; shift
  env "$@" "$BIN" bench-train --model "$MODEL" --mode "$MODE" "${ARGS[@]}" | tail -1 | tag "$setting" | tee -a "$OUT"
}
ARGS=("$@")
for _ in $(seq "$ROUNDS"); do
  one composed+sys IDEFICS_TRAIN_KERNELS=composed IDEFICS_MALLOC=system
  one composed IDEFICS_TRAIN_KERNELS=composed
  one fused+sys IDEFICS_MALLOC=system
  one fused X=1
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for s in ("composed+sys", "composed", "fused+sys", "fused"):
    xs = [t for r in rows if r["setting"] == s for t in r["step_s_all"]]
    med[s] = statistics.median(xs)
    peak = max(r["peak_rss_mb"] for r in rows if r["setting"] == s)
    print(f"{s:13s} median step {med[s]:.3f} s over {len(xs)} steps, peak RSS {peak:.0f} MB, "
          f"speed-up {med['composed+sys'] / med[s]:.2f}x")
PY
echo "results in $OUT"
