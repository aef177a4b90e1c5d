#!/usr/bin/env python
"""Round-trip check of idefics-rs training outputs against transformers + peft.

Two modes, both comparing logits that idefics-rs computed (OUR_LOGITS.safetensors, key "logits", f32 [B, T, V]) with
the logits transformers computes on the same inputs:

  # our adapter must load in peft and give our logits
  check_peft_roundtrip.py --base MODEL_DIR --adapter ADAPTER_DIR --inputs batch.safetensors --logits OUR.safetensors
  # our merged checkpoint must load in transformers and give our logits
  check_peft_roundtrip.py --merged MERGED_DIR --inputs batch.safetensors --logits OUR.safetensors

--inputs holds input_ids, attention_mask, pixel_values, pixel_attention_mask (optionally position_ids; other keys
are ignored). Only positions with attention_mask == 1 are compared; tolerance 1e-4 * max(1, max |reference logit|)
unless --tol is given. --save-merged DIR (adapter mode) also writes peft's merge_and_unload() checkpoint there.
Prints the max abs diff and PASS / FAIL; exit status 0 on PASS, 1 on FAIL.
Runs on CPU, float32, eager attention, eval(), one thread.
"""

import argparse
import json
import os
import sys

import safetensors.torch
import torch
from transformers import (
    Idefics2ForConditionalGeneration,
    Idefics3ForConditionalGeneration,
    SmolVLMForConditionalGeneration,
)

# The model class of each config.json model_type (Idefics2, Idefics3, SmolVLM / SmolVLM2).
CLASSES = {
    "idefics2": Idefics2ForConditionalGeneration,
    "idefics3": Idefics3ForConditionalGeneration,
    "smolvlm": SmolVLMForConditionalGeneration,
}

INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "position_ids")


def load(path):
    with open(os.path.join(path, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type not in CLASSES:
        sys.exit(f"{path}: model_type {model_type!r} is not one of {sorted(CLASSES)}")
    return CLASSES[model_type].from_pretrained(path, dtype=torch.float32, attn_implementation="eager")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--adapter", help="peft adapter dir (adapter_config.json + adapter_model.safetensors)")
    mode.add_argument("--merged", help="full checkpoint dir (config.json + *.safetensors)")
    ap.add_argument("--base", help="base model dir (with --adapter)")
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--logits", required=True, help="safetensors with key 'logits' [B, T, V]")
    ap.add_argument("--tol", type=float, help="absolute tolerance (default 1e-4 * max(1, max|ref|))")
    ap.add_argument("--save-merged", help="with --adapter: save peft's merge_and_unload() checkpoint here")
    args = ap.parse_args()
    if args.adapter and not args.base:
        ap.error("--adapter needs --base")
    if args.save_merged and not args.adapter:
        ap.error("--save-merged needs --adapter")

    torch.set_num_threads(1)
    inputs = safetensors.torch.load_file(args.inputs)
    missing = [k for k in INPUT_KEYS[:4] if k not in inputs]
    if missing:
        sys.exit(f"{args.inputs}: missing {missing}")
    feed = {k: inputs[k] for k in INPUT_KEYS if k in inputs}
    ours = safetensors.torch.load_file(args.logits)
    if "logits" not in ours:
        sys.exit(f"{args.logits}: no tensor 'logits' (has {sorted(ours)})")
    ours = ours["logits"].float()

    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load(args.base), args.adapter)
        cfg = model.peft_config["default"]
        print(
            f"adapter {args.adapter}: r={cfg.r} alpha={cfg.lora_alpha} use_dora={cfg.use_dora} "
            f"rslora={cfg.use_rslora} targets={sorted(cfg.target_modules) if cfg.target_modules else None}"
        )
    else:
        model = load(args.merged)
        print(f"merged checkpoint {args.merged}")
    model.eval()
    with torch.no_grad():
        ref = model(**feed).logits.float()
    if ref.shape != ours.shape:
        print(f"FAIL: logits shape {tuple(ours.shape)} != reference {tuple(ref.shape)}")
        return 1
    keep = feed["attention_mask"].bool()
    diff = (ref[keep] - ours[keep]).abs().max().item()
    scale = max(1.0, ref[keep].abs().max().item())
    tol = args.tol if args.tol is not None else 1e-4 * scale
    ok = diff <= tol
    print(f"max |ref - ours| = {diff:.3e} over {int(keep.sum())} positions (tol {tol:.3e}): {'PASS' if ok else 'FAIL'}")

    if args.save_merged:
        merged = model.merge_and_unload()
        merged.save_pretrained(args.save_merged)
        print(f"peft merge_and_unload() saved to {args.save_merged}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
