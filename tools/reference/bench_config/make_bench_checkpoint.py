#!/usr/bin/env python3
"""Write the random ~175M-parameter benchmark checkpoint described by bench-150m/config.json (not committed).

SigLIP-B-sized vision tower (768 hidden, 12 layers, patch 14, 70x70 position table), 64-latent perceiver (depth 3),
12-layer Mistral decoder (512 hidden, 8 heads / 4 kv, intermediate 1536, vocab 32003 = 32000 + the three idefics2
tokens at 32000/32001/32002 as in idefics2-8b). Weights are re-drawn like idefics_ref.randomize_ (not flat logits).

Writes into OUT (default /work/bench-150m):
  config.json, generation_config.json, model.safetensors    (save_pretrained, float32, ~700 MB)
  processor_config.json    idefics2-8b image settings (980 / 378, splitting on) nested as transformers 5.24 writes
                           it, image_seq_len 64. No tokenizer: the benchmark builds input ids directly.
  bench_images/*.png       the benchmark images (980x980 and 640x480), generated deterministically
  bench_inputs.json        the requests bench_transformers.py times (token layout, images, lengths)

Usage: /work/.venv/bin/python tools/reference/bench_config/make_bench_checkpoint.py [--out /work/bench-150m]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import idefics_ref as R  # noqa: E402
from transformers import GenerationConfig, Idefics2Config, Idefics2ForConditionalGeneration  # noqa: E402

CONFIG_DIR = os.path.join(HERE, "bench-150m")
SEED = 150
FAKE_ID, IMAGE_ID, EOU_ID = 32000, 32001, 32002
IMAGE_SEQ_LEN = 64

PROCESSOR_CONFIG = {
    "image_processor": {
        "do_convert_rgb": True,
        "do_image_splitting": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Idefics2ImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 980, "shortest_edge": 378},
    },
    "image_seq_len": IMAGE_SEQ_LEN,
    "processor_class": "Idefics2Processor",
}

# (file, width, height)
IMAGES = [("photo_980x980.png", 980, 980), ("photo_640x480.png", 640, 480)]


def bench_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = [127.5 + 110 * np.sin(rng.uniform(0.005, 0.05) * x + rng.uniform(0.005, 0.05) * y + c)
             for c in range(3)]
    arr = np.stack(chans, -1) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def image_tokens(n_images: int, splitting: bool) -> list[int]:
    """The processor's expansion of n adjacent <image> placeholders (adjacent images share a <fake>)."""
    per = [IMAGE_ID] * IMAGE_SEQ_LEN + [FAKE_ID]
    one = per * (5 if splitting else 1)
    return [FAKE_ID] + one * n_images


def param_count(config: Idefics2Config) -> dict:
    with torch.device("meta"):
        m = Idefics2ForConditionalGeneration(config)
    parts = {}
    for name, p in m.named_parameters():
        key = ".".join(name.split(".")[:3]) if name.startswith("model.connector") else ".".join(name.split(".")[:2])
        parts[key] = parts.get(key, 0) + p.numel()
    return {"total": sum(parts.values()), **parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/work/bench-150m")
    args = ap.parse_args()
    R.setup_torch()
    torch.set_num_threads(2)

    config = Idefics2Config.from_pretrained(CONFIG_DIR)
    counts = param_count(config)
    print(json.dumps(counts, indent=1))
    print(f"parameters: {counts['total'] / 1e6:.1f} M")

    torch.manual_seed(SEED)
    config._attn_implementation = "eager"
    model = Idefics2ForConditionalGeneration(config).float().eval()
    R.randomize_(model, SEED)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2, EOU_ID], pad_token_id=0,
                                               bad_words_ids=[[FAKE_ID], [IMAGE_ID]])
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    R.write_json(os.path.join(args.out, "processor_config.json"), PROCESSOR_CONFIG)

    img_dir = os.path.join(args.out, "bench_images")
    os.makedirs(img_dir, exist_ok=True)
    for i, (name, w, h) in enumerate(IMAGES):
        bench_image(w, h, 1000 + i).save(os.path.join(img_dir, name))

    # A fixed 24-token "question" and a 512-token text-only prompt (ids from the ordinary range 3..31999).
    g = torch.Generator().manual_seed(SEED)
    question = torch.randint(3, 32000, (24,), generator=g).tolist()
    long_text = torch.randint(3, 32000, (511,), generator=g).tolist()
    user = [1]  # BOS
    requests = {}
    for name, w, h in IMAGES:
        for splitting in (True, False):
            key = f"{os.path.splitext(name)[0]}_{'split' if splitting else 'nosplit'}"
            ids = user + image_tokens(1, splitting) + question + [EOU_ID]
            requests[key] = {"images": [f"bench_images/{name}"], "do_image_splitting": splitting,
                             "input_ids": ids, "n_tokens": len(ids)}
    requests["text_512"] = {"images": [], "do_image_splitting": True, "input_ids": [1] + long_text,
                            "n_tokens": 512}
    R.write_json(os.path.join(args.out, "bench_inputs.json"), {
        "description": "Requests timed by tools/reference/bench_transformers.py. input_ids are the processor's "
                       "expansion (BOS, <fake> (<image>x64 <fake>)x5 or x1, question ids, <end_of_utterance>).",
        "parameters": counts,
        "tokens": {"bos": 1, "eos": 2, "fake_token_around_image": FAKE_ID, "image": IMAGE_ID,
                   "end_of_utterance": EOU_ID},
        "requests": requests,
    })
    print(f"wrote {args.out}: {R.dir_size(args.out) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
