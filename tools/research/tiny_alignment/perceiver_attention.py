"""Is the perceiver mean-pooling the tower away? Entropy of its cross-attention over [latents; patches] on
single-object images, against the uniform distribution's, with transformers loading our checkpoint.

    /work/.venv/bin/python tools/research/tiny_alignment/perceiver_attention.py --model runs/tiny/sft/final \
        --chat DATA/heldout/chat_basics.parquet [--n 40]
"""
import argparse
import io
import math

import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import AutoProcessor, Idefics2ForConditionalGeneration


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--chat", required=True, help="chat_basics.parquet (The Cauldron layout)")
    ap.add_argument("--n", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = Idefics2ForConditionalGeneration.from_pretrained(args.model, attn_implementation="eager").eval()
    proc = AutoProcessor.from_pretrained(args.model)
    rows = pq.read_table(args.chat).slice(0, args.n).to_pylist()
    captured = []

    def hook(_mod, _args, _kwargs, out):
        captured.append(out[1])

    for layer in model.model.connector.perceiver_resampler.layers:
        layer.self_attn.register_forward_hook(hook, with_kwargs=True)
    shape_rows, plain_rows = [], []
    with torch.no_grad():
        for r in rows:
            image = Image.open(io.BytesIO(r["images"][0]["bytes"])).convert("RGB")
            batch = proc.image_processor([image], do_image_splitting=False, return_tensors="pt")
            captured.clear()
            model.model.get_image_features(
                pixel_values=batch["pixel_values"], pixel_attention_mask=batch.get("pixel_attention_mask")
            )
            p = captured[0].float().clamp_min(1e-12)
            entropy = -(p * p.log()).sum(-1).mean().item()
            uniform = math.log(p.shape[-1])
            plain = r["texts"][0]["user"].startswith("What colour is the image")
            (plain_rows if plain else shape_rows).append((entropy, uniform))
    for name, xs in (("single shape", shape_rows), ("plain colour", plain_rows)):
        if xs:
            e = sum(x[0] for x in xs) / len(xs)
            u = sum(x[1] for x in xs) / len(xs)
            print(f"{name:13s} {len(xs):3d} images: attention entropy {e:.2f} nats, uniform {u:.2f}")


if __name__ == "__main__":
    main()
