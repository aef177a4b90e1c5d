#!/usr/bin/env python3
"""Loss curves of LoRA on a quantized base (QLoRA) against the same run on the f32 base, with peak memory.

Runs `idefics train` on the same recipe (the bundled model, LoRA on the text decoder, the committed chat fixtures,
same seed and data order) once per base: f32 and each --quant type asked for, each in its own process under
`/usr/bin/time -v` (peak RSS). Then compares every run's per-step loss (metrics.jsonl) with the f32 run's:
max and mean |loss_q - loss_f32| over the steps, and the same over the last 10 steps. Writes the figures as JSON.

Usage (after `cargo build -p idefics-cli`; from the repository root):
  python3 tools/qlora/compare_loss_curves.py [--idefics PATH] [--steps 40] [--quant q8_0 q4k] [--mode lora]
      [--json benches/results/qlora-tiny.json]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RECIPE = """[model]
path = "{root}/models/idefics2-tiny"
[output]
dir = "{out}"
[[data.sources]]
kind = "cauldron"
paths = ["{root}/tests/fixtures/data/train/chat_shapes.parquet", "{root}/tests/fixtures/data/train/chat_basics.parquet",
         "{root}/tests/fixtures/data/train/chat_ocr.parquet"]
[data.collate]
max_seq_len = 512
split_fraction = 0.0
[trainable]
text = "{mode}"
[lora]
r = 8
alpha = 16
[optim]
lr = 1e-3
warmup_steps = 5
decay = "constant"
[run]
steps = {steps}
batch_size = 4
seed = 4
log_every = 1
"""


def run_one(idefics, tmp, name, steps, mode, quant):
    out = os.path.join(tmp, name)
    recipe = os.path.join(tmp, f"{name}.toml")
    with open(recipe, "w") as f:
        f.write(RECIPE.format(root=ROOT, out=out, steps=steps, mode=mode))
    cmd = ["/usr/bin/time", "-v", idefics, "train", "--config", recipe]
    if quant:
        cmd += ["--quant", quant]
    print("+", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{name} failed:\n{p.stdout}\n{p.stderr}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", p.stderr).group(1)
    losses = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if "loss" in m and "step" in m:
                losses[int(m["step"])] = float(m["loss"])
    return {"peak_rss_mb": round(rss_kb / 1024, 1), "wall": wall, "losses": [losses[s] for s in sorted(losses)],
            "adapter": os.path.isdir(os.path.join(out, "adapter"))}


def distance(a, b):
    d = [abs(x - y) for x, y in zip(a, b)]
    tail = d[-10:]
    return {"max_abs": max(d), "mean_abs": sum(d) / len(d), "max_abs_last10": max(tail),
            "mean_abs_last10": sum(tail) / len(tail), "mean_rel": sum(x / y for x, y in zip(d, b)) / len(d)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap.add_argument("--idefics", default=os.path.join(target, "debug", "idefics"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--quant", nargs="+", default=["q8_0", "q4k"])
    ap.add_argument("--mode", choices=["lora", "dora"], default="lora")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs["f32"] = run_one(args.idefics, tmp, "f32", args.steps, args.mode, None)
        for q in args.quant:
            runs[q] = run_one(args.idefics, tmp, q, args.steps, args.mode, q)
    base = runs["f32"]["losses"]
    if len(base) != args.steps:
        sys.exit(f"the f32 run logged {len(base)} of {args.steps} steps")
    result = {"script": "tools/qlora/compare_loss_curves.py", "steps": args.steps, "mode": args.mode,
              "recipe": RECIPE.format(root=".", out="<run dir>", steps=args.steps, mode=args.mode), "runs": runs,
              "distance_to_f32": {q: distance(runs[q]["losses"], base) for q in args.quant}}
    for name, r in runs.items():
        d = result["distance_to_f32"].get(name)
        extra = "" if d is None else (f"  |loss - f32|: max {d['max_abs']:.4f} mean {d['mean_abs']:.4f}"
                                      f" (last 10: max {d['max_abs_last10']:.4f} mean {d['mean_abs_last10']:.4f})")
        print(f"{name:5s} peak RSS {r['peak_rss_mb']:7.1f} MB  wall {r['wall']:>8s}  loss {r['losses'][0]:.4f} -> "
              f"{r['losses'][-1]:.4f}{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
