#!/usr/bin/env python3
"""Random parity check of `idefics forward` against transformers on a checkpoint the fixtures never saw.

From --seed, draws random tower sizes (heads, GQA ratios, head dims, patch size, latents, sliding window, rope theta,
storage dtype ...), writes a random Idefics2 checkpoint with save_pretrained and random inputs with images of random
sizes (left-padded batch, all-zero padding images), runs

    <idefics> forward --model DIR --inputs FILE --out FILE

and compares the `logits` it writes (f32 [B,L,V]) with transformers' float32 logits on real tokens
(attention_mask == 1). PASS iff max|diff| <= 1e-4 * max(1, max|ref logit|), the tolerance the Rust tests use.
If the output file also holds vision_hidden_states / connector_output they are compared too (informational).

Usage: /work/.venv/bin/python tools/reference/check_forward.py --idefics target/debug/idefics --seed 7 [--keep DIR]
Exit status: 0 PASS, 1 FAIL, 2 the binary failed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idefics_ref as R  # noqa: E402


def draw_case(seed: int) -> dict:
    """Random but valid sizes for all three towers plus the batch layout."""
    rng = random.Random(seed)
    v_heads = rng.randint(1, 4)
    patch = rng.randint(3, 8)
    n_side = rng.randint(4, 9)
    vision = dict(
        hidden_size=v_heads * rng.randint(3, 10),
        intermediate_size=rng.randint(7, 64),
        num_hidden_layers=rng.randint(1, 2),
        num_attention_heads=v_heads,
        image_size=patch * n_side,
        patch_size=patch,
        layer_norm_eps=rng.choice([1e-6, 1e-5]),
    )
    t_heads = rng.randint(1, 6)
    t_kv = rng.choice([d for d in range(1, t_heads + 1) if t_heads % d == 0])
    t_head_dim = 2 * rng.randint(2, 7)  # rotate-half RoPE needs an even head dim
    explicit_head_dim = rng.random() < 0.5
    hidden = rng.randint(12, 48) if explicit_head_dim else t_heads * t_head_dim
    text = dict(
        hidden_size=hidden,
        intermediate_size=rng.randint(9, 80),
        num_hidden_layers=rng.randint(1, 2),
        num_attention_heads=t_heads,
        num_key_value_heads=t_kv,
        rms_norm_eps=rng.choice([1e-6, 1e-5]),
        rope_parameters={"rope_type": "default", "rope_theta": rng.choice([10000.0, 1000.0, 123.0, 1e6])},
        sliding_window=rng.choice([4096, None, rng.randint(3, 12)]),
    )
    if explicit_head_dim:
        text["head_dim"] = t_head_dim
    p_heads = rng.randint(1, 6)
    perceiver = dict(
        resampler_n_latents=rng.randint(1, 8),
        resampler_depth=rng.randint(1, 3),
        resampler_n_heads=p_heads,
        resampler_head_dim=rng.randint(2, 10),
        num_key_value_heads=rng.choice([d for d in range(1, p_heads + 1) if p_heads % d == 0]),
        rms_norm_eps=rng.choice([1e-6, 1e-5]),
    )
    batch = rng.randint(1, 3)
    counts = [rng.randint(0, 3) for _ in range(batch)]
    if sum(counts) == 0:
        counts[rng.randrange(batch)] = 1
    side = vision["image_size"]
    images = [[(rng.randint(patch, side), rng.randint(patch, side)) for _ in range(c)] for c in counts]
    layouts = []
    for c in counts:
        lay = [rng.randint(0, 6)]
        for _ in range(c):
            lay += ["img", rng.randint(0, 5)]
        if rng.random() < 0.3:
            lay.append("eou")
        layouts.append(lay)
    storage = rng.choice([torch.float32, torch.float32, torch.bfloat16, torch.float16])
    return dict(vision=vision, text=text, perceiver=perceiver, images=images, layouts=layouts, storage=storage)


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if tuple(ours.shape) != tuple(ref.shape):
        print(f"{name}: shape mismatch: ours {list(ours.shape)} vs transformers {list(ref.shape)}")
        return float("inf")
    d = (ours.double() - ref.double()).abs()
    if mask is not None:
        d = d[mask]
    return float(d.max()) if d.numel() else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idefics", required=True, help="path to the built `idefics` binary")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--keep", default=None, help="write checkpoint/inputs/outputs here instead of a temp dir")
    args = ap.parse_args()
    R.setup_torch()

    case = draw_case(args.seed)
    work = args.keep or tempfile.mkdtemp(prefix=f"idefics-check-{args.seed}-")
    model_dir = os.path.join(work, "model")
    os.makedirs(model_dir, exist_ok=True)

    config = R.build_config(case["vision"], case["perceiver"], case["text"])
    model = R.new_model(config, 1000 + args.seed)
    R.save_checkpoint(model, model_dir, case["storage"])
    ref_model = R.load_f32(model_dir)

    g = torch.Generator().manual_seed(args.seed)
    n_latents = ref_model.config.perceiver_config.resampler_n_latents
    inputs = R.left_pad([R.token_row(g, lay, n_latents) for lay in case["layouts"]])
    inputs.update(R.make_images(g, case["images"]))
    expected, info = R.reference(ref_model, inputs, with_f64=True, with_generate=False)
    inputs_path = os.path.join(work, "inputs.safetensors")
    out_path = os.path.join(work, "ours.safetensors")
    R.write_inputs(inputs_path, inputs)
    R.write_inputs(os.path.join(work, "expected.safetensors"), expected)

    print(f"seed {args.seed}: storage {str(case['storage']).replace('torch.', '')}, "
          f"vision {case['vision']}, perceiver {case['perceiver']}, text {case['text']}")
    print(f"images per sample (h,w): {case['images']}; input_ids {list(inputs['input_ids'].shape)}; work dir {work}")

    cmd = [args.idefics, "forward", "--model", model_dir, "--inputs", inputs_path, "--out", out_path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"FAIL: `{' '.join(cmd)}` exited with {proc.returncode} (files kept in {work})\n{proc.stderr.strip()}")
        return 2
    ours = load_file(out_path)
    if "logits" not in ours:
        print(f"FAIL: {out_path} has no `logits` tensor (has {sorted(ours)})")
        return 1

    real = inputs["attention_mask"] == 1
    ref_logits = expected["logits"]
    max_ref = float(ref_logits[real].abs().max())
    tol = 1e-4 * max(1.0, max_ref)
    diff = compare("logits", ours["logits"], ref_logits, real)
    diff64 = compare("logits_f64", ours["logits"], expected["logits_f64"], real)
    print(f"max|ref logit| {max_ref:.4g}; tolerance {tol:.3g}")
    print(f"max|ours - transformers f32| on real tokens: {diff:.3g}")
    print(f"max|ours - transformers f64| on real tokens: {diff64:.3g} "
          f"(transformers f32 vs f64: {info['max_abs_diff_f32_vs_f64_real']:.3g})")
    for k in ("vision_hidden_states", "connector_output"):
        if k in ours:
            print(f"max|ours - transformers| {k}: {compare(k, ours[k], expected[k]):.3g}")
    ok = diff <= tol
    print("PASS" if ok else "FAIL")
    if ok and args.keep is None:
        shutil.rmtree(work)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
