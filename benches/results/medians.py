#!/usr/bin/env python3
"""Medians over alternated rounds of `tools/bench/inference_side_by_side.sh`, and the ratios of the medians.

Usage: python3 benches/results/medians.py DIR NAME
Reads DIR/NAME-rs[-LAYOUT]-R.json and DIR/NAME-tf-{eager,sdpa}-R.json; prints one markdown table per figure that
every report has (prefill and decoding tokens/s; image processor, vision + connector and time to first token
seconds per request; peak RSS):
each side's per-round values, their median, and transformers' median over ours (> 1: idefics-rs is faster or
leaner). Exits 1 when no report is found.
"""
import glob
import json
import re
import statistics
import sys


def figures(report):
    """(name, value, higher_is_better) of the figures both tools write."""
    r = report["results"]
    out = []
    if "prefill_text_512" in r:
        out.append(("prefill 512 tokens (tokens/s)", r["prefill_text_512"]["tokens_per_s"], True))
    if "decode" in r:
        out.append(("decode at context 512 (tokens/s)", r["decode"]["tokens_per_s"], True))
    for kind, key in (("vision + connector", "vision_encode_s"), ("image processor", "preprocess_s")):
        for req, v in sorted((r.get("vision") or {}).items()):
            if isinstance(v, dict) and key in v:
                out.append((f"{kind} {req} (s)", v[key], False))
    for req, v in sorted((r.get("ttft") or {}).items()):
        if isinstance(v, dict) and "s" in v:
            out.append((f"time to first token {req} (s)", v["s"], False))
    if r.get("peak_rss_mb"):
        out.append(("peak RSS (MB)", r["peak_rss_mb"], False))
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    folder, name = sys.argv[1], sys.argv[2]
    sides = {}
    pattern = re.compile(re.escape(name) + r"-(rs(?:-[a-z-]+)?|tf-eager|tf-sdpa)-(\d+)\.json$")
    for path in sorted(glob.glob(f"{folder}/{name}-*.json")):
        m = pattern.search(path)
        if m:
            with open(path) as f:
                sides.setdefault(m.group(1), []).append(dict((n, (v, hb)) for n, v, hb in figures(json.load(f))))
    if not sides:
        print(f"no reports {folder}/{name}-*.json", file=sys.stderr)
        return 1
    ours = [s for s in sides if s.startswith("rs")]
    theirs = [s for s in ("tf-eager", "tf-sdpa") if s in sides]
    names = [n for n in next(iter(sides.values()))[0] if all(n in rep for reps in sides.values() for rep in reps)]
    header = "| figure | " + " | ".join(f"{s} (rounds; median)" for s in ours + theirs) + " | " + " | ".join(
        f"{o} vs {t}" for o in ours for t in theirs) + " |"
    print(header)
    print("|" + "---|" * (1 + len(ours) + len(theirs) + len(ours) * len(theirs)))
    for n in names:
        med = {s: statistics.median(rep[n][0] for rep in sides[s]) for s in sides}
        higher = sides[ours[0]][0][n][1]
        cells = [", ".join(f"{rep[n][0]:.4g}" for rep in sides[s]) + f"; **{med[s]:.4g}**" for s in ours + theirs]
        ratios = [f"{(med[o] / med[t]) if higher else (med[t] / med[o]):.2f}x" for o in ours for t in theirs]
        print(f"| {n} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
