#!/usr/bin/env python3
"""Reference logits of transformers 5.24 for a realistic-shape Idefics3 / SmolVLM checkpoint (not committed).

Meant for the checkpoints of bench_config/make_smolvlm_bench_checkpoints.py (e.g. /work/bench-smolvlm-256m): real
geometry (SmolVLM-256M: patch 16, 32x32 patch grid, scale factor 4, 9 heads / 3 kv heads) where the committed
fixtures are tiny. Writes into the checkpoint directory:
  parity_inputs.safetensors    input_ids / attention_mask / position_ids [1, L], pixel_values [1, 2, 3, T, T],
                               pixel_attention_mask [1, 2, T, T]: one full tile and one tile whose bottom-right part
                               is padding (T = vision image_size)
  parity_expected.safetensors  logits [1, L, V] and connector_output [2, seq, Dt] (float32, eager, CPU)

Used by `IDEFICS3_BIG_CKPT=DIR cargo test -p idefics --test idefics3_parity -- --ignored`.
Usage: /work/.venv/bin/python tools/reference/make_idefics3_big_reference.py --model /work/bench-smolvlm-256m
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idefics_ref as R  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    R.setup_torch()
    torch.set_num_threads(args.threads)
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    cls = {"idefics3": Idefics3ForConditionalGeneration, "smolvlm": SmolVLMForConditionalGeneration}[cfg["model_type"]]
    model = cls.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
    c = model.config
    seq = model.model.image_seq_len
    tile = c.vision_config.image_size
    image, fake = c.image_token_id, c.image_token_id - 1
    g = torch.Generator().manual_seed(7)
    text = lambda n: torch.randint(3, 49152, (n,), generator=g).tolist()  # noqa: E731
    ids = [1] + text(5)
    for _ in range(2):
        ids += [fake] + text(1) + [image] * seq
    ids += [fake] + text(20)
    inputs = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones((1, len(ids)), dtype=torch.int64),
        "position_ids": torch.arange(len(ids))[None],
        "pixel_values": torch.zeros((1, 2, 3, tile, tile)),
        "pixel_attention_mask": torch.zeros((1, 2, tile, tile), dtype=torch.int64),
    }
    inputs["pixel_values"][0, 0] = torch.rand((3, tile, tile), generator=g) * 2 - 1
    inputs["pixel_attention_mask"][0, 0] = 1
    h, w = tile * 3 // 4 + 5, tile // 2 + 3
    inputs["pixel_values"][0, 1, :, :h, :w] = torch.rand((3, h, w), generator=g) * 2 - 1
    inputs["pixel_attention_mask"][0, 1, :h, :w] = 1
    t0 = time.time()
    with torch.no_grad():
        logits = model(**inputs).logits
        feats = model.model.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"])
    conn = torch.cat(list(feats.pooler_output), 0).reshape(2, seq, -1)
    print(f"forward {time.time() - t0:.1f}s, L={len(ids)}, max|logit| {logits.abs().max():.3f}")
    R.write_inputs(os.path.join(args.model, "parity_inputs.safetensors"), inputs)
    R.write_inputs(os.path.join(args.model, "parity_expected.safetensors"),
                   {"logits": logits.float().contiguous(), "connector_output": conn.float().contiguous()})


if __name__ == "__main__":
    main()
