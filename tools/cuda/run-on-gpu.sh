#!/usr/bin/env bash
# Runs, on a machine with an NVIDIA GPU, what tools/cuda/build.sh bundled: the CUDA parity tests (Idefics2 and
# Idefics3 fixtures: logits and greedy generation against transformers) and a small bench (`idefics ask --json` on a
# random checkpoint of the bench-150m shape, GPU then CPU with the same binary).
#   bash BUNDLE/run-on-gpu.sh [OUT_DIR]        results in OUT_DIR [$OUT, else BUNDLE/gpu-results]
# Environment: CUDA_LIBS  a folder with libcudart.so.13, libcublas.so.13, libcublasLt.so.13 and libcurand.so.10
#   (found by itself in python3's nvidia/cu13/lib or /usr/local/cuda/lib64 otherwise);
#   IDEFICS_FIXTURES  the tests/fixtures folder of a checkout, when the bundle was built with BUNDLE_FIXTURES=0;
#   BENCH_ROUNDS  runs of each bench setting [3].
# Exit status: 0 all passed; 1 a parity test or the bench failed; 3 no NVIDIA driver or CUDA libraries here.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-${OUT:-$HERE/gpu-results}}
mkdir -p "$OUT"
BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT
say() { printf '[run-on-gpu] %s\n' "$*" | tee -a "$OUT/summary.txt" >&2; }

# The driver (libcuda.so.1) comes with the GPU machine; the binaries were linked against a stub of it.
driver=""
ldpath=${LD_LIBRARY_PATH:-}
for d in ${ldpath//:/ } /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib; do
  [[ -e $d/libcuda.so.1 ]] && { driver=$d/libcuda.so.1; break; }
done
[[ -z $driver ]] && driver=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
if [[ -z $driver ]]; then
  say "no CUDA device: the NVIDIA driver library libcuda.so.1 is not on this machine; run this bundle on a GPU machine"
  exit 3
fi
# The CUDA 13 libraries: not shipped in the bundle (cuBLASLt alone is 540 MB).
NEEDED=(libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10)
candidates=("${CUDA_LIBS:-}")
if command -v python3 > /dev/null; then
  candidates+=("$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null)")
fi
candidates+=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64)
libdirs=""
for lib in "${NEEDED[@]}"; do
  for d in "${candidates[@]}"; do
    if [[ -n $d && -e $d/$lib ]]; then
      [[ :$libdirs: == *:$d:* ]] || libdirs=$libdirs:$d
      continue 2
    fi
  done
  ldconfig -p 2>/dev/null | grep -q "$lib " && continue
  say "no CUDA device runtime: $lib not found (set CUDA_LIBS to a folder holding it)"
  exit 3
done
export LD_LIBRARY_PATH=${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
say "driver $driver; CUDA libraries from ${libdirs#:}"
for exe in idefics cuda_parity; do  # xz'd by build.sh (96 MB each unpacked)
  if command -v xz > /dev/null; then xz -dc "$HERE/bin/$exe.xz" > "$BIN/$exe"
  else python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$HERE/bin/$exe.xz" > "$BIN/$exe"; fi
  chmod +x "$BIN/$exe"
done
if missing=$(ldd "$BIN/idefics" | grep 'not found'); then
  say "unresolved libraries: $missing"
  exit 3
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt" >&2
[[ -d $HERE/fixtures/idefics2 ]] && export IDEFICS_FIXTURES=${IDEFICS_FIXTURES:-$HERE/fixtures}
FIX=${IDEFICS_FIXTURES:?no fixtures in the bundle: set IDEFICS_FIXTURES to the tests/fixtures folder of a checkout}
status=0

# Parity: every fixture case on cuda:0 against transformers' logits and generated tokens.
if "$BIN/cuda_parity" --test-threads 1 --nocapture > "$OUT/parity.txt" 2>&1; then
  say "parity: passed ($(grep -c 'as transformers\|max|cuda' "$OUT/parity.txt") lines of results in parity.txt)"
else
  say "parity: FAILED (see $OUT/parity.txt)"
  tail -n 30 "$OUT/parity.txt" >&2
  status=1
fi

# Bench: a random bench-150m-shaped Idefics2 (vocabulary of the tiny tokenizer), one image, 64 new tokens.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK" "$BIN"' EXIT
BENCH=$HERE/fixtures/bench
[[ -d $BENCH ]] || BENCH=$WORK/bench-inputs
if [[ ! -d $BENCH ]]; then
  mkdir -p "$BENCH"
  cp "$FIX/../../tools/reference/bench_config/bench-150m/config.json" "$BENCH/bench-150m.json"
  cp -r "$FIX/e2e/tiny-chat" "$BENCH/tokenizer"
fi
if ! "$BIN/idefics" init --config "$BENCH/bench-150m.json" --tokenizer "$BENCH/tokenizer" \
  --out "$WORK/model" --image-splitting > "$OUT/bench-init.txt" 2>&1; then
  say "bench: idefics init failed (see $OUT/bench-init.txt)"
  exit 1
fi
image=$WORK/photo.png
python3 -c 'import sys, numpy as np; from PIL import Image
Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(sys.argv[1])' \
  "$image" 2>/dev/null || cp "$BENCH/landscape_120x80.png" "$image"
say "bench image: $(python3 -c 'import sys; from PIL import Image; print(Image.open(sys.argv[1]).size)' "$image" 2>/dev/null)"
: > "$OUT/bench.jsonl"
for round in $(seq "${BENCH_ROUNDS:-3}"); do
  for dev in cuda cpu; do
    for split in --no-split --split; do
      if IDEFICS_DEVICE=$dev "$BIN/idefics" ask --model "$WORK/model" --image "$image" $split \
        --max-new-tokens 64 --json "Describe the image." > "$WORK/ask.json" 2> "$WORK/ask.err"; then
        python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
n, t, g = r["completion_tokens"], r["time_to_first_token_seconds"], r["generate_seconds"]
print(json.dumps({"device": sys.argv[2], "split": sys.argv[3] == "--split", "round": int(sys.argv[4]),
  "load_s": round(r["load_seconds"], 3), "ttft_s": round(t, 4), "new_tokens": n,
  "decode_tok_s": round((n - 1) / (g - t), 1) if n > 1 else None, "image_tokens": r["image_tokens"],
  "prompt_tokens": r["prompt_tokens"]}))' "$WORK/ask.json" "$dev" "$split" "$round" | tee -a "$OUT/bench.jsonl" >&2
      else
        say "bench: idefics ask on $dev $split failed: $(tail -n 5 "$WORK/ask.err")"
        status=1
      fi
    done
  done
done
say "done: results in $OUT (exit $status)"
exit $status
