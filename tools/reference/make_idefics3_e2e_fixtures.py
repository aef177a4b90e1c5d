#!/usr/bin/env python3
"""End-to-end fixtures for Idefics3 and SmolVLM: complete tiny random checkpoints (model + tokenizer + processor +
chat template + generation config) and transformers' outputs for whole requests (chat template -> processor ->
forward logits -> greedy generate -> decode).

Writes tests/fixtures/idefics3/e2e/:
  <case>/                      checkpoint folder (config.json, model.safetensors, generation_config.json,
                               tokenizer.json, tokenizer_config.json, processor_config.json, chat_template.jinja)
  <case>/requests.json         per request: conversation or raw prompt, image files, rendered prompt, input_ids,
                               pixel_values shape + sha256, logits positions, generated ids and decoded text
  <case>/outputs.safetensors   per request `<name>/pixel_values` (only if small), `<name>/logits_last` [V],
                               `<name>/logits_at` [P, V] (the rows at requests.json's logits_positions)
  <case>/batch.json            one batched call (two conversations, left padding): per row the unpadded
                               input_ids, generated ids and text; pixel_values shape + sha256
  <case>/batch.safetensors     the padded call tensors (input_ids, attention_mask, pixel_attention_mask as u8)
                               and `logits_last` [B, V], `logits_at` [B, P, V] at batch.json's logits_positions
  VERSIONS.json

Tokenizer: tests/fixtures/idefics3/processor/tokenizer (make_idefics3_processor_fixtures.py, byte-level BPE with the
Idefics3 / SmolVLM special tokens); the model vocabulary is its length. Images: the committed PNGs of
tests/fixtures/images_e2e (Pillow and the Rust decoder agree exactly on PNG).

Run with the project venv plus `num2words` (SmolVLMProcessor imports it; keep it out of /work/.venv), e.g. the venv
described in make_idefics3_processor_fixtures.py:
    /tmp/venv-n2w/bin/python tools/reference/make_idefics3_e2e_fixtures.py
Deterministic on one machine (one torch thread). `--batch-only` writes only batch.json / batch.safetensors from
the committed checkpoints (the other files stay as they are).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idefics_ref as R  # noqa: E402
import make_idefics3_processor_fixtures as P  # noqa: E402  (also lets SmolVLMProcessor go without a video processor)
from transformers import (  # noqa: E402
    GenerationConfig,
    GPT2Tokenizer,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil  # noqa: E402
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil  # noqa: E402
from transformers.models.smolvlm.processing_smolvlm import SmolVLMProcessor  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "idefics3" / "e2e"
TOKENIZER_DIR = REPO / "tests" / "fixtures" / "idefics3" / "processor" / "tokenizer"
IMAGES = REPO / "tests" / "fixtures" / "images_e2e"
MAX_NEW_TOKENS = 8
# Full logits rows are stored at this many evenly spaced prompt positions (plus the last one).
LOGIT_POSITIONS = 6
# pixel_values are stored when they hold at most this many floats (else shape + sha256 only).
PIXEL_STORE_LIMIT = 20_000
TIED_EMBED_SCALE = 0.2

CASES = {
    "smolvlm_tied": dict(
        model_type="smolvlm", seed=71, tie=True,
        description=("SmolVLM, tied head, default rope (theta 1000), text 40 hidden / 4 heads / 1 kv head, vision 24 "
                     "hidden / 3 heads / patch 4 / tile 32 (8x8 patches), scale_factor 4 -> 4 tokens per tile; "
                     "image processor longest edge 64, tile 32 (up to 2x2 tiles + the global image)"),
        vision=dict(hidden_size=24, intermediate_size=36, num_hidden_layers=2, num_attention_heads=3,
                    image_size=32, patch_size=4),
        text=dict(hidden_size=40, intermediate_size=52, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, rms_norm_eps=1e-6, max_position_embeddings=512,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000.0}),
        scale_factor=4,
        image=dict(P.IMAGE_DEFAULTS, size={"longest_edge": 64}, max_image_size={"longest_edge": 32}),
        template=P.SMOLVLM_TEMPLATE,
    ),
    "idefics3_llama3": dict(
        model_type="idefics3", seed=73, tie=False,
        description=("Idefics3, untied head, Llama-3 rope (theta 500, factor 8, original max 128), attention and MLP "
                     "biases, text 40 hidden / 4 heads / 2 kv heads / head_dim 12, vision 24 hidden / 2 heads / "
                     "patch 4 / tile 24 (6x6 patches), scale_factor 2 -> 9 tokens per tile; image processor longest "
                     "edge 48, tile 24 (up to 2x2 tiles + the global image)"),
        vision=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                    image_size=24, patch_size=4),
        text=dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=12, rms_norm_eps=1e-5, max_position_embeddings=512,
                  attention_bias=True, mlp_bias=True,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 128}),
        scale_factor=2,
        image=dict(P.IMAGE_DEFAULTS, size={"longest_edge": 48}, max_image_size={"longest_edge": 24}),
        template=P.IDEFICS3_TEMPLATE,
    ),
}

LAND, SQ, GRAY = "landscape_120x80.png", "square_33x33.png", "gray_wide_110x20.png"


def image(name: str) -> dict:
    # "path" is ignored by the chat template; it names the image file for the Rust side.
    return {"type": "image", "path": str((IMAGES / name).relative_to(REPO))}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


REQUESTS = [
    dict(name="chat_one_image", conversation=[{"role": "user", "content": [image(LAND), text("What is in the image?")]}]),
    dict(name="chat_one_image_nosplit", do_image_splitting=False,
         conversation=[{"role": "user", "content": [image(LAND), text("What is in the image?")]}]),
    dict(name="chat_two_images", conversation=[
        {"role": "user", "content": [text("Compare the two images."), image(SQ), image(GRAY)]}]),
    dict(name="chat_text_only", conversation=[
        {"role": "user", "content": [text("Describe the picture in one sentence.")]},
        {"role": "assistant", "content": [text("There is a dog on the grass.")]},
        {"role": "user", "content": [text("And the cat?")]}]),
    dict(name="raw_prompt", raw="User:<image>Read the text in the image.<end_of_utterance>\nAssistant:",
         images=[SQ]),
]


def build_model(spec: dict, tokenizer):
    cfg_cls, model_cls = ((SmolVLMConfig, SmolVLMForConditionalGeneration) if spec["model_type"] == "smolvlm"
                          else (Idefics3Config, Idefics3ForConditionalGeneration))
    ids = tokenizer.convert_tokens_to_ids
    pad, bos, eou = ids("<|im_end|>"), ids("<|im_start|>"), ids("<end_of_utterance>")
    fake, img = ids("<fake_token_around_image>"), ids("<image>")
    text_cfg = dict(spec["text"], model_type="llama", vocab_size=len(tokenizer), pad_token_id=pad, bos_token_id=bos,
                    eos_token_id=eou)
    config = cfg_cls(vision_config=dict(spec["vision"]), text_config=text_cfg, scale_factor=spec["scale_factor"],
                     image_token_id=img, tie_word_embeddings=spec["tie"], pad_token_id=pad)
    torch.manual_seed(spec["seed"])
    config._attn_implementation = "eager"
    model = model_cls(config).float().eval()
    R.randomize_(model, spec["seed"])
    if spec["tie"]:
        # The tied head is the N(0, 1) embedding: logits of std ~sqrt(hidden) make greedy decoding repeat one
        # token; a smaller scale keeps the generations varied.
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(TIED_EMBED_SCALE)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[eou], pad_token_id=pad,
                                               bad_words_ids=[[fake], [img]])
    return model, model_cls


def write_processor(spec: dict, d: Path, tokenizer, seq_len: int) -> None:
    """The transformers 5.x save_pretrained layout (as make_idefics3_processor_fixtures.py writes its 'saved' ones)."""
    Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**spec["image"]), tokenizer=tokenizer,
                      image_seq_len=seq_len, chat_template=spec["template"]).save_pretrained(d)
    if spec["model_type"] == "smolvlm":
        # save_pretrained cannot write a SmolVLMProcessor without its video processor (torchvision): the layout is
        # the Idefics3 one with the class names changed.
        cfg = json.loads((d / "processor_config.json").read_text())
        cfg["processor_class"] = "SmolVLMProcessor"
        cfg["image_processor"]["image_processor_type"] = "SmolVLMImageProcessor"
        (d / "processor_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
        tok_cfg["processor_class"] = "SmolVLMProcessor"
        (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")


def load_processor(spec: dict, d: Path):
    if spec["model_type"] == "idefics3":
        proc = Idefics3Processor.from_pretrained(d)
        assert type(proc.image_processor) is Idefics3ImageProcessorPil
        return proc
    cfg = json.loads((d / "processor_config.json").read_text())
    proc = SmolVLMProcessor(image_processor=SmolVLMImageProcessorPil.from_pretrained(d),
                            tokenizer=GPT2Tokenizer.from_pretrained(d), video_processor=None,
                            image_seq_len=cfg["image_seq_len"], chat_template=(d / "chat_template.jinja").read_text())
    proc.video_processor = SimpleNamespace(num_frames=64, fps=1)  # read by apply_chat_template, unused for images
    return proc


def sha256_f32(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().astype("<f4").tobytes()).hexdigest()


@torch.no_grad()
def run_request(req: dict, proc, model, tensors: dict) -> dict:
    kwargs = {}
    if "do_image_splitting" in req:
        kwargs["do_image_splitting"] = req["do_image_splitting"]
    if "conversation" in req:
        prompt = proc.apply_chat_template(req["conversation"], add_generation_prompt=True, tokenize=False)
        names = [Path(it["path"]).name for m in req["conversation"] for it in m["content"] if it["type"] == "image"]
        # What processor.apply_chat_template(tokenize=True) does (processing_utils.py): no second BOS when the
        # rendered text starts with it.
        bos = proc.tokenizer.bos_token
        kwargs["add_special_tokens"] = not (bos is not None and prompt.startswith(bos))
    else:
        prompt, names = req["raw"], req["images"]
    images = [Image.open(IMAGES / n) for n in names]
    inputs = dict(proc(text=[prompt], images=[images] if images else None, return_tensors="pt", **kwargs))
    ids = inputs["input_ids"][0].tolist()
    fwd = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")
           if k in inputs}
    logits = model(**fwd).logits[0].float()
    n = len(ids)
    positions = sorted({round(i * (n - 1) / (LOGIT_POSITIONS - 1)) for i in range(LOGIT_POSITIONS)})
    gen = model.generate(**fwd, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    new = gen[0, n:].tolist()
    eos = set(model.generation_config.eos_token_id)
    trimmed = []
    for t in new:
        trimmed.append(t)
        if t in eos:
            break
    name = req["name"]
    tensors[f"{name}/logits_last"] = logits[-1].contiguous()
    tensors[f"{name}/logits_at"] = logits[positions].contiguous()
    out = {
        "name": name,
        "conversation": req.get("conversation"),
        "raw_prompt": req.get("raw"),
        "images": [str((IMAGES / n).relative_to(REPO)) for n in names],
        "do_image_splitting": req.get("do_image_splitting", True),
        "prompt": prompt,
        "input_ids": ids,
        "n_image_tokens": ids.count(model.config.image_token_id),
        "logits_positions": positions,
        "max_abs_logit": float(logits.abs().max()),
        "generated_ids": trimmed,
        "stopped_on_eos": bool(trimmed and trimmed[-1] in eos),
        "generated_text": proc.decode(trimmed, skip_special_tokens=True),
    }
    if "pixel_values" in inputs:
        pv = inputs["pixel_values"]
        out["pixel_values_shape"] = list(pv.shape)
        out["pixel_values_sha256_le_f32"] = sha256_f32(pv)
        out["pixel_values_stored"] = pv.numel() <= PIXEL_STORE_LIMIT
        if out["pixel_values_stored"]:
            tensors[f"{name}/pixel_values"] = pv[0].contiguous()
    return out


BATCH = [
    [{"role": "user", "content": [image(LAND), text("What is in the image?")]}],
    [{"role": "user", "content": [text("Compare the two images."), image(SQ), image(GRAY)]}],
]


@torch.no_grad()
def make_batch(d: Path, proc, model) -> None:
    """Two conversations in one processor call with padding_side='left' (1 image vs 2 images, splitting on):
    pixel_values padded with all-zero images to the longest row's image count, the model run with the position
    ids generate() uses (count of real tokens so far - 1)."""
    prompts = [proc.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in BATCH]
    names = [[Path(it["path"]).name for m in c for it in m["content"] if it["type"] == "image"] for c in BATCH]
    bos = proc.tokenizer.bos_token
    add_special = not (bos is not None and prompts[0].startswith(bos))
    images = [[Image.open(IMAGES / n) for n in row] for row in names]
    inputs = dict(proc(text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt",
                       add_special_tokens=add_special))
    mask = inputs["attention_mask"]
    assert (mask[:, 0] == 0).any(), "one row must be left-padded"
    fwd = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")}
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    logits = model(**fwd, position_ids=position_ids).logits.float()
    gen = model.generate(**fwd, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    length = fwd["input_ids"].shape[1]
    eos = set(model.generation_config.eos_token_id)
    rows, at = [], []
    for b in range(len(BATCH)):
        real = mask[b].nonzero().flatten().tolist()
        ids = inputs["input_ids"][b][mask[b] == 1].tolist()
        positions = sorted({real[round(i * (len(real) - 1) / (LOGIT_POSITIONS - 1))] for i in range(LOGIT_POSITIONS)})
        at.append(logits[b, positions])
        trimmed = []
        for t in gen[b, length:].tolist():
            trimmed.append(t)
            if t in eos:
                break
        # The same conversation alone (no padding) must give the same tokens: padding never changes real outputs.
        alone = dict(proc(text=[prompts[b]], images=[images[b]], return_tensors="pt", add_special_tokens=add_special))
        alone_gen = model.generate(**alone, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        alone_new = alone_gen[0, alone["input_ids"].shape[1]:].tolist()[: len(trimmed)]
        rows.append({
            "conversation": BATCH[b],
            "images": [str((IMAGES / n).relative_to(REPO)) for n in names[b]],
            "prompt": prompts[b],
            "input_ids": ids,
            "n_padding": length - len(ids),
            "logits_positions": positions,
            "max_abs_logit": float(logits[b, real].abs().max()),
            "generated_ids": trimmed,
            "stopped_on_eos": bool(trimmed and trimmed[-1] in eos),
            "generated_text": proc.decode(trimmed, skip_special_tokens=True),
            "matches_unbatched_generation": alone_new == trimmed,
        })
    pv, pm = inputs["pixel_values"], inputs["pixel_attention_mask"]
    save_file({
        "input_ids": inputs["input_ids"].to(torch.int64).contiguous(),
        "attention_mask": mask.to(torch.int64).contiguous(),
        "pixel_attention_mask": pm.to(torch.uint8).contiguous(),
        "logits_last": logits[:, -1].contiguous(),
        "logits_at": torch.stack(at).contiguous(),
    }, d / "batch.safetensors")
    R.write_json(d / "batch.json", {
        "description": make_batch.__doc__.strip(),
        "do_image_splitting": True,
        "padding_side": "left",
        "pixel_values_shape": list(pv.shape),
        "pixel_values_sha256_le_f32": sha256_f32(pv),
        "image_slot_is_padding": [[bool(not pv[b, m].any()) for m in range(pv.shape[1])] for b in range(pv.shape[0])],
        "rows": rows,
    })
    print(d.name, "batch", list(pv.shape), [(r["n_padding"], r["generated_ids"], r["matches_unbatched_generation"])
                                            for r in rows])


def make_case(name: str, spec: dict) -> dict:
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    tokenizer = GPT2Tokenizer.from_pretrained(TOKENIZER_DIR)
    model, model_cls = build_model(spec, tokenizer)
    model.save_pretrained(d)
    seq_len = (spec["vision"]["image_size"] // spec["vision"]["patch_size"]) ** 2 // spec["scale_factor"] ** 2
    write_processor(spec, d, tokenizer, seq_len)

    ref = model_cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    proc = load_processor(spec, d)
    assert proc.image_seq_len == ref.model.image_seq_len == seq_len
    tensors, requests = {}, []
    for req in REQUESTS:
        requests.append(run_request(req, proc, ref, tensors))
        r = requests[-1]
        print(name, r["name"], len(r["input_ids"]), r.get("pixel_values_shape"), r["generated_ids"],
              repr(r["generated_text"]), round(r["max_abs_logit"], 2))
    save_file(tensors, d / "outputs.safetensors")
    make_batch(d, proc, ref)
    R.write_json(d / "requests.json", {
        "description": spec["description"],
        "model_type": spec["model_type"],
        "seed": spec["seed"],
        "reference_run": "from_pretrained(dtype=float32, attn_implementation='eager'), eval(), CPU, 1 torch thread; "
                         "processor with the PIL image processor (no torchvision)",
        "generate": {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False,
                     **{k: getattr(ref.generation_config, k) for k in ("eos_token_id", "pad_token_id",
                                                                       "bad_words_ids")}},
        "notes": ["generated_ids: new tokens up to and including the first eos",
                  "generated_text: processor.decode(generated_ids, skip_special_tokens=True)",
                  "pixel_values_sha256_le_f32: sha256 of pixel_values [1, M, 3, H, W] as little-endian float32",
                  "outputs.safetensors: <request>/logits_last [V], <request>/logits_at [len(logits_positions), V], "
                  "<request>/pixel_values [M, 3, H, W] when pixel_values_stored"],
        "requests": requests,
    })
    return {"case": name, "bytes": R.dir_size(d)}


def batch_only() -> None:
    for name, spec in CASES.items():
        d = OUT / name
        _, model_cls = (None, SmolVLMForConditionalGeneration) if spec["model_type"] == "smolvlm" else (
            None, Idefics3ForConditionalGeneration)
        model = model_cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        make_batch(d, load_processor(spec, d), model)


def main() -> None:
    R.setup_torch()
    if "--batch-only" in sys.argv[1:]:
        batch_only()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for name, spec in CASES.items():
        print(json.dumps(make_case(name, spec)))
    versions = R.versions()
    versions["script"] = "tools/reference/make_idefics3_e2e_fixtures.py"
    R.write_json(OUT / "VERSIONS.json", versions)
    print(f"total fixture bytes: {R.dir_size(OUT)}")


if __name__ == "__main__":
    main()
