#!/usr/bin/env python3
"""Write a random Idefics2 checkpoint with idefics2-8b's widths and only a few layers (not committed), to measure
what loading idefics2-8b costs in memory, dense and quantized, without 32 GB of weights.

Widths as HuggingFaceM4/idefics2-8b's config.json: Mistral text model 4096 hidden, 14336 intermediate, 32 heads /
8 kv, vocab 32003, untied head; SigLIP-SO400M vision tower 1152 hidden, 4304 intermediate, 16 heads, patch 14,
image 980; perceiver 64 latents, 16 heads x 96, 4 kv heads. Depths are cut to --text-layers / --vision-layers /
--perceiver-depth (default 2 / 1 / 1). Weights are N(0, 0.02) (transformers' init), stored in bfloat16 as the Hub
checkpoint is. Memory of the full model follows by scaling the per-layer figures (docs/quantization.md).

Usage: /work/.venv/bin/python tools/reference/bench_config/make_8b_widths_checkpoint.py [--out /work/bench-8b-widths]
"""

from __future__ import annotations

import argparse
import os

import torch
from transformers import Idefics2Config, Idefics2ForConditionalGeneration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/work/bench-8b-widths")
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--vision-layers", type=int, default=1)
    ap.add_argument("--perceiver-depth", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(8)
    config = Idefics2Config(
        text_config=dict(
            model_type="mistral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
            num_key_value_heads=8, num_hidden_layers=args.text_layers, vocab_size=32003, max_position_embeddings=32768,
            rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False,
        ),
        vision_config=dict(
            hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=args.vision_layers,
            patch_size=14, image_size=980,
        ),
        perceiver_config=dict(
            hidden_act="silu", resampler_n_latents=64, resampler_depth=args.perceiver_depth, resampler_n_heads=16,
            resampler_head_dim=96, num_key_value_heads=4,
        ),
        image_token_id=32001,
        tie_word_embeddings=False,
    )
    model = Idefics2ForConditionalGeneration(config).to(torch.bfloat16).eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    text = sum(p.numel() for name, p in model.named_parameters() if "text_model" in name or "lm_head" in name)
    print(f"wrote {args.out}: {n / 1e6:.1f} M parameters ({text / 1e6:.1f} M in the text model and head)")


if __name__ == "__main__":
    main()
