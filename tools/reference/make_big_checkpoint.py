#!/usr/bin/env python3
"""Write a ~1.2 GB float32 random Idefics2 checkpoint with realistic shapes (NOT committed), for load-time / peak-RSS
measurements and a full-size parity run.

Shapes: SigLIP-B-like vision tower (768 hidden, 12 layers, 12 heads, patch 14, image_size 980 -> 70x70 position
grid), 64-latent perceiver (depth 2, 16 heads x 64, 4 kv heads), ~180M-parameter Mistral-style decoder (1024 hidden,
10 layers, 16 heads / 4 kv heads, intermediate 2816, vocab 32003 with the idefics2 special ids 32000/32001/32002).

Writes to --out (default /work/bigckpt):
  model/                     config.json, generation_config.json, sharded safetensors + model.safetensors.index.json
  inputs.safetensors         same tensor names/dtypes as the fixtures: batch [1 image, 2 images], left padding
  expected.safetensors       transformers float32 outputs: logits [B,L,V], vision_hidden_states, patch_attention_mask,
                             connector_output (skip with --no-expected)
  meta.json                  shapes, parameter count, file sizes, versions

Usage: /work/.venv/bin/python tools/reference/make_big_checkpoint.py [--out /work/bigckpt] [--no-expected]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idefics_ref as R  # noqa: E402

BIG_VOCAB = 32003
BIG_FAKE, BIG_IMAGE, BIG_EOU = 32000, 32001, 32002


def big_token_row(g: torch.Generator, layout: list, n_latents: int) -> list[int]:
    ids = [R.BOS_ID]
    prev_img = False
    for item in layout:
        if item == "img":
            ids += ([] if prev_img else [BIG_FAKE]) + [BIG_IMAGE] * n_latents + [BIG_FAKE]
            prev_img = True
            continue
        prev_img = False
        ids += [BIG_EOU] if item == "eou" else torch.randint(3, BIG_FAKE, (int(item),), generator=g).tolist()
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/work/bigckpt")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--max-shard-size", default="500MB")
    ap.add_argument("--no-expected", action="store_true", help="skip the transformers reference forward")
    args = ap.parse_args()
    R.setup_torch()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))  # speed over bit-reproducibility here

    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    model_dir = os.path.join(args.out, "model")
    os.makedirs(model_dir)

    config = R.build_config(
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=980, patch_size=14),
        perceiver=dict(resampler_n_latents=64, resampler_depth=2, resampler_n_heads=16, resampler_head_dim=64,
                       num_key_value_heads=4),
        text=dict(vocab_size=BIG_VOCAB, hidden_size=1024, intermediate_size=2816, num_hidden_layers=10,
                  num_attention_heads=16, num_key_value_heads=4, rms_norm_eps=1e-5,
                  max_position_embeddings=32768),
        image_token_id=BIG_IMAGE,
    )
    t0 = time.time()
    model = R.new_model(config, args.seed)
    model.generation_config.eos_token_id = [R.EOS_ID, BIG_EOU]
    model.generation_config.bad_words_ids = [[BIG_FAKE], [BIG_IMAGE]]
    n_params = sum(p.numel() for p in model.parameters())
    R.save_checkpoint(model, model_dir, torch.float32, args.max_shard_size)
    print(f"wrote {n_params / 1e6:.1f}M params ({R.dir_size(model_dir) / 1e9:.2f} GB) in {time.time() - t0:.0f}s")

    g = torch.Generator().manual_seed(args.seed)
    layouts = [[20, "img", 30], [10, "img", "img", 25, "eou"]]
    rows = [big_token_row(g, lay, 64) for lay in layouts]
    inputs = R.left_pad(rows)
    images = [[(378, 504)], [(490, 490), (365, 421)]]
    inputs.update(R.make_images(g, images))
    R.write_inputs(os.path.join(args.out, "inputs.safetensors"), inputs)

    info = {}
    if not args.no_expected:
        t0 = time.time()
        del model
        ref = R.load_f32(model_dir)
        expected, info = R.reference(ref, inputs, with_f64=False, with_generate=False)
        R.write_inputs(os.path.join(args.out, "expected.safetensors"), expected)
        print(f"reference forward in {time.time() - t0:.0f}s; max|logit| {info['max_abs_logit_real']:.3f}")

    R.write_json(os.path.join(args.out, "meta.json"), {
        "description": "random-weight Idefics2 with realistic shapes for load-time / peak-RSS measurement",
        "seed": args.seed,
        "n_params": n_params,
        "model_bytes": R.dir_size(model_dir),
        "image_sizes_hw": images,
        "real_lengths": inputs["attention_mask"].sum(1).tolist(),
        "inputs": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in inputs.items()},
        "versions": R.versions(),
        **info,
    })
    print(f"done: {args.out}")


if __name__ == "__main__":
    main()
