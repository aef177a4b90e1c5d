#!/usr/bin/env bash
# SigLIP pre-training step time, the tower on one graph with candle's op threads vs size groups on worker
# threads (`idefics pretrain-vision --parallel`), alternating so machine noise hits both alike:
#   ops2   RAYON_NUM_THREADS=2, --parallel 1 (one graph, ops on 2 threads: the default)
#   par    --parallel 2 (size groups on 2 worker threads, ops single-threaded)
#   tools/bench/siglip_bench.sh MODEL_DIR PAIRS_DIR [ROUNDS] [STEPS] [extra pretrain-vision args...]
# e.g. tools/bench/siglip_bench.sh runs/tiny/lm/final runs/tiny/data/train 3 12 --longest-edge 112,224
# Needs a release build: cargo build --release -p idefics-cli
set -euo pipefail
MODEL=${1:?model dir}
DATA=${2:?pairs dir or file}
ROUNDS=${3:-3}
STEPS=${4:-12}
shift $(( $# < 4 ? $# : 4 ))
BIN=${IDEFICS_BIN:-target/release/idefics}
OUT=${OUT:-siglip_bench.jsonl}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
: > "$OUT"
one() {  # one SETTING PARALLEL [env...]: a run, its time and peak RSS as a JSON line
  local setting=$1 parallel=$2; shift 2
  env "$@" /usr/bin/time -f '%M' -o "$TMP/rss" "$BIN" pretrain-vision --model "$MODEL" --data "$DATA" \
    --steps "$STEPS" --out "$TMP/out" --parallel "$parallel" --log-every 1000000 "${EXTRA[@]}" > "$TMP/log"
  python3 - "$setting" "$TMP/log" "$TMP/rss" <<'PY' | tee -a "$OUT"
import json, re, sys
setting, log, rss = sys.argv[1:]
m = re.search(r"SigLIP: (\d+) steps in ([0-9.]+)s.*batch (\d+)", open(log).read())
steps, secs, batch = int(m[1]), float(m[2]), int(m[3])
print(json.dumps({"setting": setting, "steps": steps, "batch": batch, "secs": secs,
                  "step_s": secs / steps, "peak_rss_mb": int(open(rss).read().split()[-1]) / 1024}))
PY
  rm -rf "$TMP/out"
}
EXTRA=("$@")
for _ in $(seq "$ROUNDS"); do
  one ops2 1 RAYON_NUM_THREADS=2
  one par 2 -u RAYON_NUM_THREADS
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for s in ("ops2", "par"):
    xs = [r["step_s"] for r in rows if r["setting"] == s]
    med[s] = statistics.median(xs)
    peak = max(r["peak_rss_mb"] for r in rows if r["setting"] == s)
    print(f"{s:5s} median step {med[s]:.3f} s over {len(xs)} runs, peak RSS {peak:.0f} MB")
print(f"speed-up of par over ops2: {med['ops2'] / med['par']:.2f}x")
PY
echo "results in $OUT"
