#!/usr/bin/env bash
# `idefics bench` against tools/reference/bench_transformers.py with eager and with sdpa attention, on one
# checkpoint of any family (Idefics2 bench-150m, the SmolVLM shapes of tools/reference/bench_config/), alternated
# round by round (idefics-rs, transformers eager, transformers sdpa) so that machine noise hits every side alike.
# Round 1 of idefics-rs also probes the machine (--machine: peak FLOP/s and bandwidth, every phase as a fraction).
#   tools/bench/inference_side_by_side.sh MODEL_DIR NAME [ROUNDS] [bench args shared by both tools...]
# e.g.
#   tools/bench/inference_side_by_side.sh /work/bench-smolvlm-256m smolvlm-256m 2 --warmup 1 --repeat 3 \
#       --image-warmup 0 --image-repeat 1 --decode-tokens 32
# Writes benches/results/NAME-rs-R.json, NAME-tf-eager-R.json and NAME-tf-sdpa-R.json (R = round), then prints
# benches/results/compare.py's table of each round's idefics-rs report against each transformers report (which
# also fails when the two reports' keys or per-request counts differ), and with several rounds
# benches/results/medians.py's medians over the rounds.
# LAYOUTS="panels transposed" runs idefics-rs once per weight layout in each round (NAME-rs-LAYOUT-R.json; the
# order within a round is idefics-rs first layout, transformers eager, idefics-rs next layout, transformers sdpa).
# Needs a release build: cargo build --release -p idefics-cli
set -euo pipefail
MODEL=${1:?model dir}
NAME=${2:?result name}
ROUNDS=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
BIN=${IDEFICS_BIN:-target/release/idefics}
PY=${PYTHON:-/work/.venv/bin/python}
DIR=${RESULTS:-benches/results}
mkdir -p "$DIR"
read -r -a layouts <<< "${LAYOUTS:-}"
[ ${#layouts[@]} = 0 ] && layouts=("")
rs_report() { echo "$DIR/$NAME-rs${1:+-$1}-$2.json"; }
for r in $(seq "$ROUNDS"); do
  machine=()
  [ "$r" = 1 ] && machine=(--machine)
  attns=(eager sdpa)
  for i in "${!layouts[@]}"; do
    layout=${layouts[$i]}
    echo "== round $r: idefics-rs ${layout}" >&2
    "$BIN" bench --model "$MODEL" "$@" "${machine[@]}" ${layout:+--weight-layout "$layout"} \
      --json "$(rs_report "$layout" "$r")"
    machine=()
    # Interleave transformers between the layouts; whatever is left runs after the last one.
    if [ $((i + 1)) -lt ${#layouts[@]} ] && [ ${#attns[@]} -gt 0 ]; then
      attn=${attns[0]}; attns=("${attns[@]:1}")
      echo "== round $r: transformers $attn" >&2
      "$PY" -u tools/reference/bench_transformers.py --ckpt "$MODEL" "$@" --attn "$attn" \
        --json "$DIR/$NAME-tf-$attn-$r.json"
    fi
  done
  for attn in "${attns[@]}"; do
    echo "== round $r: transformers $attn" >&2
    "$PY" -u tools/reference/bench_transformers.py --ckpt "$MODEL" "$@" --attn "$attn" \
      --json "$DIR/$NAME-tf-$attn-$r.json"
  done
done
status=0
for r in $(seq "$ROUNDS"); do
  for layout in "${layouts[@]}"; do
    for attn in eager sdpa; do
      echo
      echo "round $r: idefics-rs ${layout:-default layout} vs transformers $attn"
      python3 benches/results/compare.py "$(rs_report "$layout" "$r")" "$DIR/$NAME-tf-$attn-$r.json" || status=1
    done
  done
done
if [ "$ROUNDS" -gt 1 ]; then
  echo
  python3 benches/results/medians.py "$DIR" "$NAME" || status=1
fi
exit $status
