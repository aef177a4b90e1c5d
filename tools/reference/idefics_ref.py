"""Shared helpers for building tiny random Idefics2 checkpoints and their transformers reference outputs.

Used by make_fixtures.py (committed fixtures), check_forward.py (random parity check against our binary) and
make_big_checkpoint.py. Everything runs on CPU in float32 with eager attention; all randomness comes from explicit
torch.Generator objects so the outputs are reproducible bit for bit on one machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import warnings

import numpy
import PIL
import safetensors
import torch
import transformers
from safetensors.torch import save_file
from transformers import GenerationConfig, Idefics2Config, Idefics2ForConditionalGeneration

# Token ids of the toy vocabulary (vocab_size 323). The three idefics2 special tokens sit at the end of the
# vocabulary like in idefics2-8b (32000/32001/32002 after a 32000-token base vocabulary).
VOCAB_SIZE = 323
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
FAKE_ID = 320  # <fake_token_around_image>
IMAGE_ID = 321  # <image>  (image_token_id)
EOU_ID = 322  # <end_of_utterance>
FIRST_TEXT_ID = 3  # ordinary text ids are drawn from [3, 320)

GENERATE_KWARGS = dict(
    max_new_tokens=8,
    do_sample=False,
    bad_words_ids=[[FAKE_ID], [IMAGE_ID]],
    eos_token_id=[EOS_ID, EOU_ID],
    pad_token_id=PAD_ID,
)


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
    }


def setup_torch() -> None:
    # One thread: reductions are then ordered identically run to run (bit-reproducible fixtures).
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()


def build_config(vision: dict, perceiver: dict, text: dict, **top) -> Idefics2Config:
    """Idefics2Config from three plain dicts. The perceiver hidden size defaults to the text one (as in idefics2-8b)."""
    text = dict(text)
    text.setdefault("vocab_size", VOCAB_SIZE)
    text.setdefault("pad_token_id", PAD_ID)
    text.setdefault("bos_token_id", BOS_ID)
    text.setdefault("eos_token_id", EOS_ID)
    text.setdefault("model_type", "mistral")
    perceiver = dict(perceiver)
    perceiver.setdefault("hidden_size", text["hidden_size"])
    top.setdefault("image_token_id", IMAGE_ID)
    top.setdefault("tie_word_embeddings", False)
    return Idefics2Config(vision_config=vision, perceiver_config=perceiver, text_config=text, **top)


def new_model(config: Idefics2Config, seed: int) -> Idefics2ForConditionalGeneration:
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = Idefics2ForConditionalGeneration(config).float().eval()
    randomize_(model, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID,
        eos_token_id=[EOS_ID, EOU_ID],
        pad_token_id=PAD_ID,
        bad_words_ids=[[FAKE_ID], [IMAGE_ID]],
    )
    return model


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Re-initialise every parameter with well-conditioned random values.

    transformers' own init (std 0.02, norms = 1, perceiver latents = 1) gives near-zero logits and identical latents,
    which would hide bugs (a missing norm weight, latents mixed up). Here: Linear/Conv weights ~ N(0, 1/fan_in),
    biases ~ N(0, 0.1²), norm weights ~ 1 + N(0, 0.1²), embeddings ~ N(0, 1), latents ~ N(0, 1); the lm_head gets
    gain 2 so logits are O(1..10).
    """
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        shape = p.shape
        if name.endswith("latents"):
            val = torch.randn(shape, generator=g)
        elif "norm" in name and p.dim() == 1:
            val = (1.0 + 0.1 * torch.randn(shape, generator=g)) if name.endswith("weight") else 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("bias"):
            val = 0.1 * torch.randn(shape, generator=g)
        elif "embed_tokens" in name or "position_embedding" in name:
            val = torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            gain = 2.0 if name.startswith("lm_head") else 1.0
            val = torch.randn(shape, generator=g) * (gain / math.sqrt(fan_in))
        p.copy_(val.to(p.dtype))


def token_row(g: torch.Generator, layout: list, n_latents: int) -> list[int]:
    """Token ids of one sample: BOS, then the layout items.

    An int item is that many random text ids; "img" is one image block <fake> <image>*n_latents <fake> (two adjacent
    images share the <fake> between them, as Idefics2Processor writes them); "eou" is <end_of_utterance>.
    """
    ids = [BOS_ID]
    prev_img = False
    for item in layout:
        if item == "img":
            if not prev_img:
                ids.append(FAKE_ID)
            ids += [IMAGE_ID] * n_latents + [FAKE_ID]
            prev_img = True
            continue
        prev_img = False
        if item == "eou":
            ids.append(EOU_ID)
        else:
            ids += torch.randint(FIRST_TEXT_ID, FAKE_ID, (int(item),), generator=g).tolist()
    return ids


def left_pad(rows: list[list[int]]) -> dict:
    """input_ids / attention_mask / position_ids with LEFT padding, position ids as generate() builds them."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(rows), length), dtype=torch.int64)
    for b, r in enumerate(rows):
        ids[b, length - len(r):] = torch.tensor(r, dtype=torch.int64)
        mask[b, length - len(r):] = 1
    pos = mask.cumsum(-1) - 1
    pos = pos.masked_fill(mask == 0, 1)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def make_images(g: torch.Generator, sizes: list[list[tuple[int, int]]]) -> dict:
    """pixel_values [B,M,3,H,W] (uniform in [-1,1], zero-padded bottom/right) and pixel_attention_mask [B,M,H,W].

    sizes[b] lists the (height, width) of sample b's images; missing slots up to M are all-zero padding images.
    """
    batch = len(sizes)
    m = max(len(s) for s in sizes)
    h = max(hh for s in sizes for hh, _ in s)
    w = max(ww for s in sizes for _, ww in s)
    pv = torch.zeros((batch, m, 3, h, w), dtype=torch.float32)
    pm = torch.zeros((batch, m, h, w), dtype=torch.int64)
    for b, s in enumerate(sizes):
        for i, (hh, ww) in enumerate(s):
            pv[b, i, :, :hh, :ww] = torch.rand((3, hh, ww), generator=g) * 2.0 - 1.0
            pm[b, i, :hh, :ww] = 1
    return {"pixel_values": pv, "pixel_attention_mask": pm}


def patch_mask(pixel_mask: torch.Tensor, patch: int) -> torch.Tensor:
    """[n, H, W] pixel mask -> [n, H//p, W//p] patch mask: a patch is valid iff ALL its pixels are (trailing partial
    blocks are dropped), as Idefics2Model.get_image_features does."""
    n, h, w = pixel_mask.shape
    hp, wp = h // patch, w // patch
    blocks = pixel_mask[:, : hp * patch, : wp * patch].reshape(n, hp, patch, wp, patch)
    return blocks.sum(dim=(2, 4)) == patch * patch


def save_checkpoint(model, out_dir: str, storage_dtype: torch.dtype, max_shard_size=None) -> None:
    m = model if storage_dtype == torch.float32 else copy.deepcopy(model).to(storage_dtype)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    m.save_pretrained(out_dir, **kwargs)


def load_f32(model_dir: str) -> Idefics2ForConditionalGeneration:
    model = Idefics2ForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def real_images(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-padding images (not all exactly 0.0) and their pixel masks, in batch order."""
    pv, pm = inputs["pixel_values"], inputs["pixel_attention_mask"]
    b, m = pv.shape[:2]
    pv = pv.reshape(b * m, *pv.shape[2:])
    pm = pm.reshape(b * m, *pm.shape[2:])
    keep = (pv != 0.0).flatten(1).any(dim=1)
    return pv[keep], pm[keep]


@torch.no_grad()
def forward_logits(model, inputs: dict) -> torch.Tensor:
    kw = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if "pixel_values" in inputs:
        kw["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        kw["pixel_attention_mask"] = inputs["pixel_attention_mask"]
    return model(**kw).logits


@torch.no_grad()
def logits_f64(model_f32, inputs: dict) -> tuple[torch.Tensor, str]:
    """Logits of a float64 copy of the model, padded positions set to 0.

    Run per sample WITHOUT padding: in float64 transformers' finfo(f64).min mask becomes -inf once the eager softmax
    casts to float32, so fully-masked (left-padded) query rows turn into NaN and poison later layers. Padding never
    changes real-token outputs, so per-sample unpadded runs give the same real-token logits.
    """
    m64 = copy.deepcopy(model_f32).to(torch.float64).eval()
    mask = inputs["attention_mask"]
    b, length = mask.shape
    out = None
    for i in range(b):
        keep = mask[i] == 1
        n = int(keep.sum())
        one = {
            "input_ids": inputs["input_ids"][i : i + 1, keep],
            "attention_mask": torch.ones((1, n), dtype=torch.int64),
            "position_ids": torch.arange(n, dtype=torch.int64)[None],
        }
        if "pixel_values" in inputs:
            pv = inputs["pixel_values"][i : i + 1]
            if (pv != 0.0).any():
                one["pixel_values"] = pv.to(torch.float64)
                one["pixel_attention_mask"] = inputs["pixel_attention_mask"][i : i + 1]
        lg = m64(**one).logits[0]
        if out is None:
            out = torch.zeros((b, length, lg.shape[-1]), dtype=torch.float64)
        out[i, keep] = lg
    return out, "per-sample, unpadded (left padding removed), positions 0..n-1; padded positions are 0"


@torch.no_grad()
def reference(model, inputs: dict, with_f64: bool = True, with_generate: bool = True) -> tuple[dict, dict]:
    """All expected tensors for one case, plus facts for meta.json."""
    layer_outs = []

    def grab(_module, _args, output):
        layer_outs.append((output[0] if isinstance(output, tuple) else output).detach())

    hooks = [layer.register_forward_hook(grab) for layer in model.model.text_model.layers]
    kw = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if "pixel_values" in inputs:
        kw["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        kw["pixel_attention_mask"] = inputs["pixel_attention_mask"]
    out = model(**kw, output_hidden_states=True)
    for h in hooks:
        h.remove()
    exp = {
        "logits": out.logits.float().contiguous(),
        # Debug checkpoints for the text decoder: the merged embeddings (image features scattered into <image>
        # positions) and the residual stream after each decoder layer (before the final norm).
        "inputs_embeds": out.hidden_states[0].float().contiguous(),
        "text_layer_outputs": torch.stack(layer_outs).float().contiguous(),
    }
    assert torch.equal(exp["logits"], forward_logits(model, inputs).float())
    info = {}
    cfg = model.config
    if "pixel_values" in inputs:
        pv, pm = real_images(inputs)
        feats = model.model.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"])
        n_img = pv.shape[0]
        vision = feats.last_hidden_state
        conn = torch.cat(list(feats.pooler_output), dim=0)
        conn = conn.reshape(n_img, cfg.perceiver_config.resampler_n_latents, cfg.text_config.hidden_size)
        pmask = patch_mask(pm, cfg.vision_config.patch_size)
        assert vision.shape[:2] == (n_img, pmask.shape[1] * pmask.shape[2])
        exp["vision_hidden_states"] = vision.float().contiguous()
        exp["patch_attention_mask"] = pmask.to(torch.uint8).contiguous()
        exp["connector_output"] = conn.float().contiguous()
        info["n_images"] = n_img
        info["valid_patches_per_image"] = pmask.flatten(1).sum(1).tolist()
    real = inputs["attention_mask"] == 1
    info["max_abs_logit_real"] = float(exp["logits"][real].abs().max())
    if with_f64:
        l64, how = logits_f64(model, inputs)
        exp["logits_f64"] = l64.contiguous()
        info["logits_f64_method"] = how
        info["max_abs_diff_f32_vs_f64_real"] = float((exp["logits"].double() - l64)[real].abs().max())
    if with_generate:
        kw = {k: inputs[k] for k in ("input_ids", "attention_mask")}
        if "pixel_values" in inputs:
            kw["pixel_values"] = inputs["pixel_values"]
            kw["pixel_attention_mask"] = inputs["pixel_attention_mask"]
        gen = model.generate(**kw, **GENERATE_KWARGS)
        exp["generated_ids"] = gen.to(torch.int64).contiguous()
        info["generate_kwargs"] = {"inputs": sorted(kw), **GENERATE_KWARGS}
    return exp, info


def write_inputs(path: str, inputs: dict) -> None:
    save_file({k: v.contiguous() for k, v in inputs.items()}, path)


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def effective_config(model) -> dict:
    """The config values transformers actually uses (after its load-time rewrites), for meta.json."""
    c = model.config
    v, p, t = c.vision_config, c.perceiver_config, c.text_config
    return {
        "vision": {k: getattr(v, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "image_size", "patch_size", "layer_norm_eps",
                                              "hidden_act")},
        "perceiver": {k: getattr(p, k) for k in ("hidden_size", "rms_norm_eps", "resampler_n_latents",
                                                 "resampler_depth", "resampler_n_heads", "resampler_head_dim",
                                                 "num_key_value_heads", "hidden_act")},
        "text": {
            **{k: getattr(t, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                          "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                                          "sliding_window", "hidden_act", "max_position_embeddings")},
            "rope_theta": t.rope_parameters["rope_theta"],
        },
        "image_token_id": c.image_token_id,
        "tie_word_embeddings": c.tie_word_embeddings,
    }


def dir_size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def fixture_main(doc: str, default_out: str, cases: dict, make_case) -> None:
    """The command line of the model fixture scripts: `--out DIR` (default `default_out`), `--only CASE...`;
    writes VERSIONS.json, then each case with `make_case(name, spec, out)`, printing its summary as one JSON line."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    setup_torch()
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "VERSIONS.json"), versions())
    for name, spec in cases.items():
        if args.only and name not in args.only:
            continue
        print(json.dumps(make_case(name, spec, args.out)))
    print(f"total fixture bytes: {dir_size(args.out)}")
