#!/usr/bin/env python3
"""Time transformers on a random benchmark checkpoint, as the baseline for idefics-rs (`idefics bench`).

Checkpoints of every family idefics-rs runs, chosen from config.json's model_type: Idefics2 (make_bench_checkpoint.py,
bench-150m), Idefics3 and SmolVLM (make_smolvlm_bench_checkpoints.py: the SmolVLM-256M / -500M / SmolVLM2-2.2B
shapes); stored weights of any dtype are loaded as float32.
CPU, float32, eager attention (--attn sdpa: PyTorch's scaled_dot_product_attention), torch threads = 2 (default),
inference mode. Every figure is the median of --repeat timed runs after --warmup untimed ones. Inputs come from
CKPT/bench_inputs.json (or --inputs), so the Rust benchmark can time the very same requests:
  preprocess   PIL image processor on one image (load + split + resize + normalize + pad): Idefics2ImageProcessorPil,
               Idefics3ImageProcessorPil or SmolVLMImageProcessorPil (for Idefics3 / SmolVLM, "split" is the
               processor's tiling: rows x cols tiles + the global image)
  vision       model.model.get_image_features(pixel_values, pixel_attention_mask): vision tower + connector
               (perceiver, or pixel shuffle + projection), per input image; 980x980 and 640x480, with and without
               splitting
  prefill      one forward over the 512-token text-only prompt (use_cache=True, as generate's prefill) -> tokens/s
  ttft         time to first token for the image requests: image processor + generate(max_new_tokens=1)
  decode       512-token text prompt: prefill once, then N greedy single-token forwards with the KV cache (fixed N,
               no eos), each timed -> median ms/token and tokens/s
  peak RSS     resource.getrusage(RUSAGE_SELF).ru_maxrss after loading and at the end

The JSON report has the keys of `idefics bench --json` (figures, frames, image tokens, valid patches); the FLOP
counts and fractions of the machine's peak are idefics-rs's alone.

Usage: /work/.venv/bin/python tools/reference/bench_transformers.py [--ckpt /work/bench-150m] [--threads 2]
       [--warmup 1] [--repeat 3] [--decode-tokens 32] [--attn eager|sdpa] [--inputs FILE]
       [--json tools/reference/bench_config/results/NAME.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idefics_ref as R  # noqa: E402
from transformers import (  # noqa: E402
    Idefics2ForConditionalGeneration,
    Idefics2ImageProcessorPil,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
)
from transformers.image_utils import load_image  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# Cheapest first, so that a run cut short by a time limit still has the small-image figures.
VISION_ORDER = ("photo_640x480_nosplit", "photo_640x480_split", "photo_980x980_nosplit", "photo_980x980_split")
# model_type -> (model class, PIL image processor class, patch rule of get_image_features: a patch is valid when
# all its pixels are (Idefics2) or any pixel is (Idefics3, SmolVLM)).
FAMILIES = {
    "idefics2": (Idefics2ForConditionalGeneration, Idefics2ImageProcessorPil, "all"),
    "idefics3": (Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, "any"),
    "smolvlm": (SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil, "any"),
}


def image_processor_settings(ckpt: str) -> dict:
    """processor_config.json's image_processor (transformers 5.x), else preprocessor_config.json (Hub layout)."""
    path = os.path.join(ckpt, "processor_config.json")
    if os.path.exists(path):
        with open(path) as f:
            cfg = dict(json.load(f)["image_processor"])
    else:
        with open(os.path.join(ckpt, "preprocessor_config.json")) as f:
            cfg = dict(json.load(f))
    for key in ("image_processor_type", "processor_class"):
        cfg.pop(key, None)
    return cfg


def valid_patches(pixel_mask: torch.Tensor, patch: int, rule: str) -> int:
    """Valid patches of [n, H, W] pixel masks under the family's rule (trailing partial blocks dropped)."""
    if rule == "all":
        return int(R.patch_mask(pixel_mask, patch).sum())
    n, h, w = pixel_mask.shape
    hp, wp = h // patch, w // patch
    blocks = pixel_mask[:, : hp * patch, : wp * patch].reshape(n, hp, patch, wp, patch)
    return int((blocks.sum(dim=(2, 4)) > 0).sum())


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def timed(fn, warmup: int, repeat: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def machine_info() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            mem_gb = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "mem_total_gib": mem_gb, "platform": platform.platform(),
            "loadavg_1_5_15_at_start": list(os.getloadavg())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="/work/bench-150m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--image-warmup", type=int, default=None, help="warmup for vision/TTFT (default --warmup)")
    ap.add_argument("--image-repeat", type=int, default=None, help="repeat for vision/TTFT (default --repeat)")
    ap.add_argument("--skip", nargs="*", default=[],
                    help="request keys to leave out of the vision / TTFT timings (e.g. photo_980x980_split)")
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="eager",
                    help="transformers' attn_implementation (sdpa: PyTorch's fused attention, its fastest on CPU)")
    ap.add_argument("--inputs", default=None,
                    help="request file (default CKPT/bench_inputs.json); image paths are relative to its directory")
    ap.add_argument("--json", default=None, help="result file (default results/<date>-transformers.json)")
    args = ap.parse_args()

    info = machine_info()
    R.setup_torch()
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(args.threads)
    inputs_path = args.inputs or os.path.join(args.ckpt, "bench_inputs.json")
    image_root = os.path.dirname(os.path.abspath(inputs_path))
    with open(inputs_path) as f:
        bench = json.load(f)
    with open(os.path.join(args.ckpt, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type not in FAMILIES:
        raise SystemExit(f"{args.ckpt}/config.json: model_type {model_type!r} is not one of {sorted(FAMILIES)}")
    model_cls, processor_cls, patch_rule = FAMILIES[model_type]
    ip_cfg = image_processor_settings(args.ckpt)

    t0 = time.perf_counter()
    model = model_cls.from_pretrained(args.ckpt, dtype=torch.float32, attn_implementation=args.attn).eval()
    if next(model.parameters()).dtype != torch.float32:
        raise SystemExit(f"{args.ckpt}: loaded as {next(model.parameters()).dtype}, expected float32")
    load_s = time.perf_counter() - t0
    rss_after_load = rss_mb()
    n_params = sum(p.numel() for p in model.parameters())
    reqs = bench["requests"]
    W, N = args.warmup, args.repeat
    VW = W if args.image_warmup is None else args.image_warmup
    VN = N if args.image_repeat is None else args.image_repeat
    res: dict = {"load_s": load_s, "rss_after_load_mb": rss_after_load, "parameters": n_params}

    image_token_id = model.config.image_token_id

    def preprocess(req: dict) -> dict:
        proc = processor_cls(**{**ip_cfg, "do_image_splitting": req["do_image_splitting"]})
        images = [[load_image(os.path.join(image_root, p)) for p in req["images"]]]
        return dict(proc(images, return_tensors="pt"))

    path = args.json or os.path.join(HERE, "bench_config", "results",
                                     f"{datetime.date.today().isoformat()}-transformers.json")

    def save(final: bool = False) -> None:
        """Write what has been measured so far (a run cut short still leaves its figures)."""
        info["loadavg_1_5_15_now"] = list(os.getloadavg())
        res["peak_rss_mb"] = rss_mb()
        out = {
            "tool": "transformers",
            "script": "tools/reference/bench_transformers.py",
            "complete": final,
            "checkpoint": args.ckpt,
            "model_type": model_type,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": {"threads": args.threads, "dtype": "float32", "attn_implementation": args.attn,
                         "warmup": W, "repeat": N, "image_warmup": VW, "image_repeat": VN,
                         "statistic": "median", "decode_tokens": args.decode_tokens,
                         "skipped": args.skip},
            "versions": R.versions(),
            "machine": info,
            "results": res,
        }
        os.makedirs(os.path.dirname(path), exist_ok=True)
        R.write_json(path, out)

    rows = []
    with torch.inference_mode():
        # --- prefill: 512 text tokens
        ids = torch.tensor([reqs["text_512"]["input_ids"]])
        mask = torch.ones_like(ids)
        pre_s, runs = timed(lambda: model(input_ids=ids, attention_mask=mask, use_cache=True), W, N)
        res["prefill_text_512"] = {"s": pre_s, "tokens_per_s": ids.shape[1] / pre_s, "runs_s": runs}
        rows.append(("prefill 512 text tokens", f"{pre_s * 1e3:9.1f} ms", f"{ids.shape[1] / pre_s:8.1f} tok/s"))
        print(rows[-1], flush=True)
        save()

        # --- time to first token (image processor + vision + prefill + first token) and decode
        def request_inputs(req: dict) -> dict:
            inp = {"input_ids": torch.tensor([req["input_ids"]])}
            inp["attention_mask"] = torch.ones_like(inp["input_ids"])
            if req["images"]:
                inp.update(preprocess(req))
            return inp

        # Decode: prefill once (vision + prompt into the KV cache), then N single-token steps fed greedily (argmax,
        # no eos check: a fixed N). Each step is timed; the figure is the median step.
        req = reqs["text_512"]
        n = args.decode_tokens

        def decode_run() -> list[float]:
            inp = request_inputs(req)
            out = model(**inp, use_cache=True)
            pkv, mask = out.past_key_values, inp["attention_mask"]
            tok = out.logits[:, -1:].argmax(-1)
            steps = []
            for _ in range(n):
                mask = torch.cat([mask, torch.ones_like(tok)], dim=1)
                t0 = time.perf_counter()
                out = model(input_ids=tok, attention_mask=mask, past_key_values=pkv, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
                steps.append(time.perf_counter() - t0)
                pkv = out.past_key_values
            return steps

        for _ in range(W):
            decode_run()
        step_runs = [decode_run() for _ in range(N)]
        med = statistics.median(t for run in step_runs for t in run)
        res["decode"] = {"request": "text_512", "prompt_tokens": req["n_tokens"], "new_tokens": n,
                         "median_step_s": med, "tokens_per_s": 1.0 / med, "ms_per_token": med * 1e3,
                         "mean_step_s": statistics.fmean(t for run in step_runs for t in run),
                         "method": "prefill once, then N greedy single-token forwards with the KV cache; median "
                                   "over all steps of all repeats"}
        rows.append((f"decode {n} tokens (ctx {req['n_tokens']})", f"{med * 1e3:9.1f} ms/tok",
                     f"{1.0 / med:8.1f} tok/s"))
        print(rows[-1], flush=True)
        save()

        # --- image processor + vision encode, per request with one image
        vision = {}
        for key in VISION_ORDER:
            if key in args.skip:
                continue
            req = reqs[key]
            pre_s, _ = timed(lambda: preprocess(req), VW, VN)
            px = preprocess(req)
            pv, pm = px["pixel_values"], px["pixel_attention_mask"]
            # pooler_output: per sample, [image tokens, hidden]; only the count is kept, as the output is freed.
            tokens = []
            vis_s, runs = timed(lambda: tokens.append(
                sum(int(f.shape[0]) for f in model.model.get_image_features(pv, pm).pooler_output)), VW, VN)
            image_tokens = tokens[-1]
            # get_image_features drops all-zero (padding) frames.
            frames = int((pv.flatten(2) != 0).any(-1).sum())
            n_patches = valid_patches(pm.reshape(-1, *pm.shape[2:]), model.config.vision_config.patch_size,
                                      patch_rule)
            in_prompt = req["input_ids"].count(image_token_id)
            if in_prompt != image_tokens:
                raise SystemExit(f"{inputs_path}: request {key!r} has {in_prompt} image tokens, the model makes "
                                 f"{image_tokens} from {frames} frames")
            vision[key] = {"preprocess_s": pre_s, "vision_encode_s": vis_s, "vision_runs_s": runs,
                           "pixel_values_shape": list(pv.shape), "valid_patches_total": n_patches,
                           "frames": frames, "image_tokens": image_tokens}
            rows.append((f"preprocess {key}", f"{pre_s * 1e3:9.1f} ms", ""))
            rows.append((f"vision+connector {key}", f"{vis_s * 1e3:9.1f} ms",
                         f"{list(pv.shape)}, {frames} frames, {n_patches} patches, {image_tokens} image tokens"))
            print(rows[-2], rows[-1], flush=True)
            save()
        res["vision"] = vision

        ttft = {}
        for key in ("photo_640x480_nosplit", "photo_640x480_split", "photo_980x980_split"):
            if key in args.skip:
                continue
            req = reqs[key]
            s, runs = timed(lambda: model.generate(**request_inputs(req), max_new_tokens=1, do_sample=False), VW, VN)
            ttft[key] = {"s": s, "prompt_tokens": req["n_tokens"],
                         "image_tokens": req["input_ids"].count(image_token_id), "runs_s": runs}
            rows.append((f"TTFT {key}", f"{s * 1e3:9.1f} ms", f"{req['n_tokens']} prompt tokens"))
            print(rows[-1], flush=True)
        res["ttft"] = ttft
        save()



    res["peak_rss_mb"] = rss_mb()
    rows.append(("peak RSS", f"{res['peak_rss_mb']:9.0f} MB", f"after load {rss_after_load:.0f} MB"))

    print()
    print(f"transformers {R.versions()['transformers']}, torch {R.versions()['torch']}, threads {args.threads}, "
          f"{model_type}, float32 {args.attn}, {n_params / 1e6:.1f} M params, median of {N} after {W} warmup")
    for a, b, c in rows:
        print(f"  {a:40s} {b:>16s}  {c}")

    save(final=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
