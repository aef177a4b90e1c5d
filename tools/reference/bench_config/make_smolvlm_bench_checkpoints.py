#!/usr/bin/env python3
"""Write random checkpoints with the exact shapes of SmolVLM-256M, SmolVLM-500M and SmolVLM2-2.2B (not committed).

Shapes are those of the Hub configs (HuggingFaceTB/SmolVLM-256M-Instruct, SmolVLM-500M-Instruct, SmolVLM2-2.2B-Instruct;
listed in SHAPES below). Fields marked "assumed" in SHAPES were not read from a Hub file: they do not change the
compute, only what the numbers are called. Weights are re-drawn like idefics_ref.randomize_ (not flat logits), so
speed and memory are those of the real models; the outputs mean nothing.

Writes into OUT_ROOT/bench-smolvlm-<name> (default OUT_ROOT /work):
  config.json, generation_config.json, model.safetensors   save_pretrained in --dtype (default bfloat16, as the Hub
                                                           checkpoints are stored; about 0.5 / 1.0 / 4.5 GB)
  preprocessor_config.json                                 the checkpoint family's image settings (longest edge,
                                                           tile size, LANCZOS, splitting on)
  bench_images/photo_640x480.png, photo_980x980.png        generated photo-like images
  bench_inputs.json                                        token ids of the timed requests (no tokenizer: ids only);
                                                           the tile grids come from transformers' image processor

--inputs-only rewrites bench_images/ and bench_inputs.json of existing directories (weights untouched); requests
that were already there keep their exact ids (checked).

Usage: /work/.venv/bin/python tools/reference/bench_config/make_smolvlm_bench_checkpoints.py [--only 256m 500m 2.2b]
       [--out-root /work] [--dtype bfloat16|float32] [--count-only] [--inputs-only]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import idefics_ref as R  # noqa: E402
from transformers import (  # noqa: E402
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

# SmolVLM tokenizer ids (vocabulary 49280): <|im_start|> 1 (bos), <|im_end|> 2, <global-img> 49152,
# <row_r_col_c> 49153 + (r-1)*6 + (c-1), <fake_token_around_image> 49189, <image> 49190, <end_of_utterance> 49279.
BOS, IM_END, GLOBAL_IMG, ROW_COL0, FAKE, IMAGE, EOU = 1, 2, 49152, 49153, 49189, 49190, 49279
NEWLINE = 198  # "\n" in the SmolLM2 tokenizer (assumed; only its being an ordinary text id matters here)

SIGLIP_B16_512 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=512, patch_size=16)
SIGLIP_SO400M_384 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                         image_size=384, patch_size=14)

SHAPES = {
    "256m": dict(
        model_type="idefics3",
        vision=SIGLIP_B16_512,
        text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, vocab_size=49280),
        scale_factor=4,
        tie=False,
        image={"longest_edge": 2048, "tile": 512},
        assumed=[],
    ),
    "500m": dict(
        model_type="idefics3",
        vision=SIGLIP_B16_512,
        text=dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                  num_key_value_heads=5, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, vocab_size=49280),
        scale_factor=4,
        tie=False,
        image={"longest_edge": 2048, "tile": 512},
        assumed=[],
    ),
    "2.2b": dict(
        model_type="smolvlm",
        vision=SIGLIP_SO400M_384,
        text=dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                  num_key_value_heads=32, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 130000.0}, vocab_size=49280),
        scale_factor=3,
        tie=False,
        image={"longest_edge": 1536, "tile": 384},
        assumed=["vision intermediate_size / layers / heads (SigLIP-SO400M)", "text rope_theta, kv heads and "
                 "vocab (SmolLM2-1.7B + the 128 SmolVLM tokens)", "tie_word_embeddings false",
                 "image longest_edge 1536 / tile 384"],
    ),
}

CLASSES = {"idefics3": (Idefics3Config, Idefics3ForConditionalGeneration),
           "smolvlm": (SmolVLMConfig, SmolVLMForConditionalGeneration)}


def make_config(shape: dict):
    cfg_cls, _ = CLASSES[shape["model_type"]]
    text = dict(shape["text"], model_type="llama", bos_token_id=BOS, eos_token_id=IM_END, pad_token_id=IM_END)
    return cfg_cls(vision_config=dict(shape["vision"]), text_config=text, scale_factor=shape["scale_factor"],
                   image_token_id=IMAGE, tie_word_embeddings=shape["tie"])


def param_count(shape: dict) -> dict:
    _, model_cls = CLASSES[shape["model_type"]]
    with torch.device("meta"):
        m = model_cls(make_config(shape))
    parts: dict[str, int] = {}
    for name, p in m.named_parameters():
        key = ".".join(name.split(".")[:2])
        parts[key] = parts.get(key, 0) + p.numel()
    return {"total": sum(parts.values()), **parts}


def image_tokens(rows: int, cols: int, seq: int) -> list[int]:
    """Idefics3Processor's expansion of one image split into rows x cols tiles plus the global image."""
    if rows == 0 and cols == 0:
        return [FAKE, GLOBAL_IMG] + [IMAGE] * seq + [FAKE]
    ids: list[int] = []
    for r in range(rows):
        for c in range(cols):
            ids += [FAKE, ROW_COL0 + r * 6 + c] + [IMAGE] * seq
        ids.append(NEWLINE)
    return ids + [NEWLINE, FAKE, GLOBAL_IMG] + [IMAGE] * seq + [FAKE]


def bench_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = [127.5 + 110 * np.sin(rng.uniform(0.005, 0.05) * x + rng.uniform(0.005, 0.05) * y + c)
             for c in range(3)]
    arr = np.stack(chans, -1) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def preprocessor_config(shape: dict) -> dict:
    tile, longest = shape["image"]["tile"], shape["image"]["longest_edge"]
    return {
        "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "Idefics3ImageProcessor", "max_image_size": {"longest_edge": tile},
        "resample": 1, "rescale_factor": 1 / 255, "size": {"longest_edge": longest},
        "processor_class": "Idefics3Processor",
    }


def tile_grid(shape: dict, image: Image.Image) -> tuple[int, int]:
    """(rows, cols) of the split image, as transformers' Idefics3 image processor computes them."""
    cfg = {k: v for k, v in preprocessor_config(shape).items() if k not in ("image_processor_type", "processor_class")}
    out = Idefics3ImageProcessorPil(**cfg)([[image]], return_row_col_info=True)
    return int(out["rows"][0][0]), int(out["cols"][0][0])


# The timed photos: (name, width, height, image seed).
PHOTOS = (("photo_640x480", 640, 480, 1000), ("photo_980x980", 980, 980, 1001))


def write_inputs(name: str, shape: dict, out: str, seed: int) -> None:
    """bench_images/ and bench_inputs.json; requests already in an existing bench_inputs.json must not change."""
    counts = param_count(shape)
    img_dir = os.path.join(out, "bench_images")
    os.makedirs(img_dir, exist_ok=True)
    side = shape["vision"]["image_size"] // shape["vision"]["patch_size"]
    seq = side * side // shape["scale_factor"] ** 2
    g = torch.Generator().manual_seed(seed)
    question = torch.randint(3, 49152, (24,), generator=g).tolist()
    long_text = torch.randint(3, 49152, (511,), generator=g).tolist()
    requests, images = {}, {}
    for photo, w, h, image_seed in PHOTOS:
        image = bench_image(w, h, image_seed)
        path = f"bench_images/{photo}.png"
        images[path] = image
        rows, cols = tile_grid(shape, image)
        requests[f"{photo}_split"] = {"images": [path], "do_image_splitting": True, "tiles": rows * cols + 1,
                                      "input_ids": [BOS] + image_tokens(rows, cols, seq) + question + [EOU]}
        requests[f"{photo}_nosplit"] = {"images": [path], "do_image_splitting": False, "tiles": 1,
                                        "input_ids": [BOS] + image_tokens(0, 0, seq) + question + [EOU]}
    requests["text_512"] = {"images": [], "do_image_splitting": True, "tiles": 0, "input_ids": [BOS] + long_text}
    for r in requests.values():
        r["n_tokens"] = len(r["input_ids"])
    inputs_path = os.path.join(out, "bench_inputs.json")
    if os.path.exists(inputs_path):
        with open(inputs_path) as f:
            old = json.load(f)["requests"]
        changed = [k for k in old if old[k] != requests.get(k)]
        if changed:
            raise SystemExit(f"{inputs_path}: requests {changed} would change; not rewriting it")
    for path, image in images.items():
        # An identical file is left alone (a benchmark may be reading it).
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        full = os.path.join(out, path)
        if not (os.path.exists(full) and open(full, "rb").read() == buf.getvalue()):
            with open(full, "wb") as f:
                f.write(buf.getvalue())
    R.write_json(inputs_path, {
        "description": f"Requests for the SmolVLM-{name} shapes: Idefics3Processor's token layout, ids only.",
        "parameters": counts,
        "assumed": shape["assumed"],
        "image_seq_len": seq,
        "tokens": {"bos": BOS, "eos": [IM_END, EOU], "global_img": GLOBAL_IMG, "row_1_col_1": ROW_COL0,
                   "fake_token_around_image": FAKE, "image": IMAGE, "end_of_utterance": EOU, "newline": NEWLINE},
        "requests": requests,
    })
    print(f"{out}: " + ", ".join(f"{k} {r['n_tokens']} tokens / {r['tiles']} tiles" for k, r in requests.items()),
          flush=True)


def write_one(name: str, shape: dict, out: str, dtype: torch.dtype, seed: int) -> None:
    counts = param_count(shape)
    print(f"{name}: {counts['total'] / 1e6:.1f} M parameters {json.dumps(counts)}", flush=True)
    _, model_cls = CLASSES[shape["model_type"]]
    config = make_config(shape)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    R.randomize_(model, seed)
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=[IM_END, EOU], pad_token_id=IM_END)
    os.makedirs(out, exist_ok=True)
    R.save_checkpoint(model, out, dtype, "2GB")
    del model
    R.write_json(os.path.join(out, "preprocessor_config.json"), preprocessor_config(shape))
    write_inputs(name, shape, out, seed)
    print(f"wrote {out}: {R.dir_size(out) / 1e6:.0f} MB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--out-root", default="/work")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--count-only", action="store_true", help="print parameter counts, write nothing")
    ap.add_argument("--inputs-only", action="store_true",
                    help="rewrite bench_images/ and bench_inputs.json of existing directories only")
    args = ap.parse_args()
    R.setup_torch()
    torch.set_num_threads(2)
    # One seed for every shape, so that a directory does not depend on which others the same run writes.
    seed = 250
    for name in args.only:
        if args.count_only:
            counts = param_count(SHAPES[name])
            print(f"{name}: {counts['total'] / 1e6:.1f} M parameters {json.dumps(counts)}")
            continue
        out = os.path.join(args.out_root, f"bench-smolvlm-{name}")
        if args.inputs_only:
            write_inputs(name, SHAPES[name], out, seed)
            continue
        write_one(name, SHAPES[name], out, getattr(torch, args.dtype), seed)


if __name__ == "__main__":
    main()
