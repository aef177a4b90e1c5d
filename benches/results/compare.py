#!/usr/bin/env python3
"""Side-by-side markdown table of an `idefics bench --json` report and a bench_transformers.py report.

Usage: python3 benches/results/compare.py OURS.json TRANSFORMERS.json
Ratio = transformers time / idefics-rs time (> 1: idefics-rs is faster); for tokens/s the same direction.
Then checks that both reports have the same result keys (besides those only one tool writes) and that they counted
the same frames, image tokens and valid patches for every image request; exits 1 when they differ.
"""
import json
import sys

# Written by idefics-rs only (work counts and fractions of the measured machine limits) or by transformers only.
OURS_ONLY = {
    "flops",
    "fraction_of_peak_flops",
    "fraction_of_gemm_ceiling",
    "fraction_of_bandwidth",
    "bytes_per_token",
}
REF_ONLY = {"parameters"}
# Counts both tools must agree on for the same request.
SAME_COUNTS = ("pixel_values_shape", "frames", "image_tokens", "valid_patches_total", "prompt_tokens")


def key_paths(d, prefix=""):
    """Dotted paths of every key of nested dicts (lists are leaves); an empty dict (every request of its kind
    skipped) counts as absent."""
    out = set()
    for k, v in d.items():
        if k in OURS_ONLY or k in REF_ONLY or v == {}:
            continue
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= key_paths(v, prefix + k + ".")
    return out


def check_same_keys(ours: dict, ref: dict) -> list[str]:
    """Differences in the result keys and in the per-request counts of the two reports."""
    problems = []
    for name, a, b in (("idefics-rs only", ours, ref), ("transformers only", ref, ours)):
        extra = sorted(key_paths(a) - key_paths(b))
        if extra:
            problems.append(f"{name}: {', '.join(extra)}")
    for phase in ("vision", "ttft"):
        for req, fig in (ours.get(phase) or {}).items():
            other = (ref.get(phase) or {}).get(req) or {}
            for key in SAME_COUNTS:
                if key in fig and key in other and fig[key] != other[key]:
                    problems.append(f"{phase}.{req}.{key}: idefics-rs {fig[key]}, transformers {other[key]}")
    return problems


def main() -> None:
    ours, ref = (json.load(open(p))["results"] for p in sys.argv[1:3])
    rows = []

    def time_row(name, a, b):
        if a is None or b is None:
            rows.append((name, fmt_ms(a), fmt_ms(b), "n/a"))
        else:
            rows.append((name, fmt_ms(a), fmt_ms(b), f"{b / a:.2f}x"))

    def fmt_ms(s):
        return "not run" if s is None else f"{s * 1e3:,.0f} ms"

    def get(d, *keys):
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    time_row("load", get(ours, "load_s"), get(ref, "load_s"))
    for key in ("photo_640x480_nosplit", "photo_640x480_split", "photo_980x980_nosplit", "photo_980x980_split"):
        time_row(f"image processor {key}", get(ours, "vision", key, "preprocess_s"),
                 get(ref, "vision", key, "preprocess_s"))
        time_row(f"vision + connector {key}", get(ours, "vision", key, "vision_encode_s"),
                 get(ref, "vision", key, "vision_encode_s"))
    a, b = get(ours, "prefill_text_512", "tokens_per_s"), get(ref, "prefill_text_512", "tokens_per_s")
    rows.append(("prefill 512 text tokens (tokens/s)", f"{a:.1f}" if a else "not run", f"{b:.1f}" if b else "not run",
                 f"{a / b:.2f}x" if a and b else "n/a"))
    a, b = get(ours, "decode", "tokens_per_s"), get(ref, "decode", "tokens_per_s")
    rows.append(("decode after 512 tokens (tokens/s)", f"{a:.2f}" if a else "not run",
                 f"{b:.2f}" if b else "not run", f"{a / b:.2f}x" if a and b else "n/a"))
    for key in ("photo_640x480_nosplit", "photo_640x480_split", "photo_980x980_split"):
        time_row(f"time to first token {key}", get(ours, "ttft", key, "s"), get(ref, "ttft", key, "s"))
    a, b = get(ours, "peak_rss_mb"), get(ref, "peak_rss_mb")
    rows.append(("peak RSS", f"{a:,.0f} MB", f"{b:,.0f} MB", f"{b / a:.2f}x"))
    print("| figure | idefics-rs | transformers | ratio (speed-up / memory saving) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    problems = check_same_keys(ours, ref)
    for p in problems:
        print(f"MISMATCH {p}", file=sys.stderr)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
