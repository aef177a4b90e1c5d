#!/usr/bin/env python3
"""Write the end-to-end fixtures: a complete tiny chat checkpoint, small test images and transformers' outputs for
whole requests (chat template -> processor -> greedy generate -> decode).

Writes:
  tests/fixtures/images_e2e/*.png|jpg        small committed test images (one JPEG with EXIF orientation 6)
  tests/fixtures/images_e2e/decoded.safetensors
                                              what PIL decodes for each image AFTER load_image (exif_transpose +
                                              convert("RGB")), uint8 [H, W, 3] - isolates JPEG-decoder differences
  tests/fixtures/e2e/tiny-chat/              model + processor exactly as transformers 5.24 save_pretrained writes them
  tests/fixtures/e2e/tiny-chat-hub-layout/   the same files rearranged in the Hub's older layout
                                              (preprocessor_config.json + processor_config.json{image_seq_len} +
                                              chat_template inside tokenizer_config.json)
  tests/fixtures/e2e/cases.json              requests, rendered prompts, input ids, generations
  tests/fixtures/e2e/<case>.safetensors      input_ids, attention_mask, pixel_values, pixel_attention_mask

Usage: /work/.venv/bin/python tools/reference/make_e2e_fixtures.py
Deterministic on one machine (one torch thread); images are generated, not downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idefics_ref as R  # noqa: E402
from transformers import (  # noqa: E402
    AutoProcessor,
    GenerationConfig,
    Idefics2ImageProcessorPil,
    Idefics2Processor,
)
from transformers.image_utils import load_image  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKENIZER_DIR = os.path.join(REPO, "tests", "fixtures", "tokenizer")
IMAGES_DIR = os.path.join(REPO, "tests", "fixtures", "images_e2e")
E2E_DIR = os.path.join(REPO, "tests", "fixtures", "e2e")
CKPT = os.path.join(E2E_DIR, "tiny-chat")
HUB = os.path.join(E2E_DIR, "tiny-chat-hub-layout")

SEED = 513
N_LATENTS = 6
MAX_NEW_TOKENS = 12
BAD_WORD_GAIN = 2.5
IMAGE_SIZE = {"longest_edge": 64, "shortest_edge": 24}

VISION = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
              image_size=64, patch_size=4)  # position table 16x16 = longest_edge / patch
PERCEIVER = dict(resampler_n_latents=N_LATENTS, resampler_depth=2, resampler_n_heads=2, resampler_head_dim=8,
                 num_key_value_heads=1)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5)


def rel(path: str) -> str:
    return os.path.relpath(path, REPO)


# ----------------------------------------------------------------------------------------------------------- images

def smooth_rgb(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colourful pattern plus a little noise: compresses well, but no two pixels are alike."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(3):
        fx, fy, ph = rng.uniform(0.03, 0.25), rng.uniform(0.03, 0.25), rng.uniform(0, 6.28)
        chans.append(127.5 + 110 * np.sin(fx * x + fy * y + ph) * np.cos(0.5 * fy * x - 0.7 * fx * y))
    img = np.stack(chans, axis=-1) + rng.normal(0, 4, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_images() -> list[dict]:
    if os.path.exists(IMAGES_DIR):
        shutil.rmtree(IMAGES_DIR)
    os.makedirs(IMAGES_DIR)
    out = []

    # 1. landscape PNG 120x80 (W x H) with a few shapes.
    im = Image.fromarray(smooth_rgb(80, 120, 1))
    d = ImageDraw.Draw(im)
    d.rectangle([10, 10, 50, 40], fill=(230, 30, 30))
    d.ellipse([70, 35, 110, 75], fill=(20, 40, 220))
    p = os.path.join(IMAGES_DIR, "landscape_120x80.png")
    im.save(p, optimize=True)
    out.append(dict(path=p, note="RGB PNG, landscape 3:2"))

    # 2. portrait JPEG 45x100, 4:4:4 chroma (no chroma upsampling choices for the decoder).
    im = Image.fromarray(smooth_rgb(100, 45, 2))
    ImageDraw.Draw(im).line([0, 0, 44, 99], fill=(255, 255, 0), width=3)
    p = os.path.join(IMAGES_DIR, "portrait_45x100.jpg")
    im.save(p, quality=92, subsampling=0)
    out.append(dict(path=p, note="RGB JPEG q92 4:4:4, portrait ~1:2.2"))

    # 3. small square PNG 33x33 (odd sides -> uneven crops, every side < shortest_edge after split).
    im = Image.fromarray(smooth_rgb(33, 33, 3))
    p = os.path.join(IMAGES_DIR, "square_33x33.png")
    im.save(p, optimize=True)
    out.append(dict(path=p, note="RGB PNG, tiny odd square"))

    # 4. grayscale ("L") PNG, very wide 110x20.
    g = smooth_rgb(20, 110, 4)[:, :, 0]
    p = os.path.join(IMAGES_DIR, "gray_wide_110x20.png")
    Image.fromarray(g, mode="L").save(p, optimize=True)
    out.append(dict(path=p, note="8-bit grayscale PNG (mode L), very wide"))

    # 5. JPEG stored 60x40 with EXIF Orientation=6 (rotate 90 CW to display) -> shown as 40x60.
    im = Image.fromarray(smooth_rgb(40, 60, 5))
    ImageDraw.Draw(im).rectangle([0, 0, 14, 9], fill=(255, 255, 255))  # marks the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    p = os.path.join(IMAGES_DIR, "exif_rot6_stored_60x40.jpg")
    im.save(p, quality=92, subsampling=0, exif=exif.tobytes())
    out.append(dict(path=p, note="RGB JPEG q92 4:4:4 stored 60x40 (WxH) with EXIF Orientation=6"))

    decoded = {}
    for item in out:
        raw = Image.open(item["path"])
        loaded = load_image(item["path"])  # what Idefics2Processor does with a path: exif_transpose + convert("RGB")
        assert os.path.getsize(item["path"]) < 20_000, item["path"]
        item["file"] = rel(item["path"])
        item["stored_size_wh"] = list(raw.size)
        item["stored_mode"] = raw.mode
        item["exif_orientation"] = raw.getexif().get(0x0112)
        item["loaded_size_wh"] = list(loaded.size)
        item["bytes"] = os.path.getsize(item["path"])
        name = os.path.basename(item["path"])
        decoded[name] = torch.from_numpy(np.asarray(loaded, dtype=np.uint8).copy())
        # Sanity: for PIL inputs the processor's load_image path equals exif_transpose + convert("RGB").
        manual = ImageOps.exif_transpose(Image.open(item["path"])).convert("RGB")
        assert np.array_equal(np.asarray(manual), np.asarray(loaded))
        del item["path"]
    save_file(decoded, os.path.join(IMAGES_DIR, "decoded.safetensors"))
    R.write_json(os.path.join(IMAGES_DIR, "images.json"), {
        "description": "Images as PIL 12.3 decodes them after transformers.image_utils.load_image "
                       "(ImageOps.exif_transpose then convert('RGB')) are in decoded.safetensors, one uint8 "
                       "[H, W, 3] tensor per file name.",
        "images": out,
    })
    return out


# ------------------------------------------------------------------------------------------------------ checkpoint

def new_model(seed: int):
    model = R.new_model(R.build_config(VISION, PERCEIVER, TEXT), seed)
    # Make <fake_token_around_image> / <image> likely argmax candidates, so that the checkpoint's bad_words_ids
    # actually change the greedy output (cases.json records where it does).
    with torch.no_grad():
        model.lm_head.weight[[R.FAKE_ID, R.IMAGE_ID]] *= BAD_WORD_GAIN
    return model


def make_checkpoint() -> None:
    # Remove what this script writes (README.md is hand-written and stays).
    for d in (CKPT, HUB):
        if os.path.exists(d):
            shutil.rmtree(d)
    for f in os.listdir(E2E_DIR) if os.path.exists(E2E_DIR) else []:
        if f.endswith(".safetensors") or f == "cases.json":
            os.remove(os.path.join(E2E_DIR, f))
    os.makedirs(CKPT)
    model = new_model(SEED)
    model.generation_config = GenerationConfig(
        bos_token_id=R.BOS_ID,
        eos_token_id=[R.EOS_ID, R.EOU_ID],
        pad_token_id=R.PAD_ID,
        bad_words_ids=[[R.FAKE_ID], [R.IMAGE_ID]],
    )
    model.save_pretrained(CKPT)

    src = Idefics2Processor.from_pretrained(TOKENIZER_DIR)
    image_processor = Idefics2ImageProcessorPil(
        do_image_splitting=True, size=dict(IMAGE_SIZE),
    )
    processor = Idefics2Processor(
        image_processor=image_processor,
        tokenizer=src.tokenizer,
        image_seq_len=N_LATENTS,
        chat_template=src.chat_template,
    )
    processor.save_pretrained(CKPT)


def make_hub_layout() -> None:
    """The layout of HuggingFaceM4/idefics2-8b on the Hub (written by transformers 4.40): image processor settings in
    preprocessor_config.json, processor_config.json with image_seq_len + chat_template (legacy key), the chat template
    also inside tokenizer_config.json, no chat_template.jinja.

    transformers 5.24 does NOT fall back to tokenizer_config.json's chat_template for the processor
    (processor.chat_template stays None and apply_chat_template raises), so the template must also be in
    processor_config.json (where idefics2-8b has it) for this layout to load like the saved one."""
    os.makedirs(HUB)
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(os.path.join(CKPT, f), os.path.join(HUB, f))
    with open(os.path.join(CKPT, "processor_config.json")) as f:
        pc = json.load(f)
    with open(os.path.join(CKPT, "chat_template.jinja")) as f:
        template = f.read()
    with open(os.path.join(CKPT, "tokenizer_config.json")) as f:
        tc = json.load(f)
    pre = dict(pc["image_processor"])
    pre["processor_class"] = "Idefics2Processor"
    R.write_json(os.path.join(HUB, "preprocessor_config.json"), pre)
    R.write_json(os.path.join(HUB, "processor_config.json"),
                 {"chat_template": template, "image_seq_len": pc["image_seq_len"],
                  "processor_class": "Idefics2Processor"})
    tc["chat_template"] = template
    R.write_json(os.path.join(HUB, "tokenizer_config.json"), tc)


def load_processor(path: str) -> Idefics2Processor:
    proc = AutoProcessor.from_pretrained(path)  # PIL image processor: torchvision is not installed
    assert type(proc) is Idefics2Processor, type(proc)
    assert type(proc.image_processor) is Idefics2ImageProcessorPil, type(proc.image_processor)
    return proc


def check_layouts_equal(a: Idefics2Processor, b: Idefics2Processor) -> dict:
    ia, ib = a.image_processor.to_dict(), b.image_processor.to_dict()
    for k in set(ia) | set(ib):
        if k in ("processor_class",):
            continue
        assert ia.get(k) == ib.get(k), (k, ia.get(k), ib.get(k))
    assert a.image_seq_len == b.image_seq_len
    assert a.chat_template == b.chat_template, (a.chat_template, b.chat_template)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    for t in ("Hello world <image> x", "User:<image>What?<end_of_utterance>\nAssistant:"):
        assert a.tokenizer(t).input_ids == b.tokenizer(t).input_ids
    return {"image_processor": ia, "image_seq_len": a.image_seq_len}


# ----------------------------------------------------------------------------------------------------------- cases

def img(name: str) -> str:
    return rel(os.path.join(IMAGES_DIR, name))


LAND, PORT, SQ, GRAY, EXIF = ("landscape_120x80.png", "portrait_45x100.jpg", "square_33x33.png",
                              "gray_wide_110x20.png", "exif_rot6_stored_60x40.jpg")


def user(*items) -> dict:
    return {"role": "user", "content": list(items)}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def image(name: str) -> dict:
    # "path" is ignored by the chat template; it names the image file for the Rust side.
    return {"type": "image", "path": img(name)}


CASES = [
    dict(name="single_image", description="one image + question, splitting on",
         conversations=[[user(image(LAND), text("What do we see in this image?"))]]),
    dict(name="two_images_one_turn", description="two images in one user turn (text between them), splitting on",
         conversations=[[user(text("Compare"), image(PORT), text("and"), image(EXIF),
                              text("Which one is red?"))]]),
    dict(name="multi_turn_system", description=(
        "system message, a text-only first exchange, then an image (grayscale PNG) at the start of a later "
        "user turn; splitting on"),
         conversations=[[
             {"role": "system", "content": [text("Answer briefly.")]},
             user(text("Hello, how are you?")),
             {"role": "assistant", "content": [text("I am fine.")]},
             user(image(GRAY), text("And this image?")),
         ]]),
    dict(name="text_only", description="no image at all", conversations=[[user(text("Describe the sky in one sentence."))]]),
    dict(name="no_splitting", description=(
        "do_image_splitting=False on processor.image_processor (transformers expands the text from that attribute, "
        "so it is set on the object, which also makes the image call use it): 1 image = <fake><image>*6<fake>"),
         do_image_splitting=False,
         conversations=[[user(image(SQ), text("Is there a tree?")), ]]),
    dict(name="batched_left_pad", description=(
        "two conversations in one call, 1 image vs 2 images (adjacent images), processor(padding=True, "
        "padding_side='left'); pixel_values padded to M=10 images per row and a common H x W. pixel_values are NOT "
        "stored (size): every real slot equals the same image's slot in single_image / two_images_one_turn / "
        "multi_turn_system (checked by the script), padding is 0.0; image_slot_sums_f64 and the sha256 cover it"),
         store_pixel_values=False,
         conversations=[
             [user(image(GRAY), text("What is this?"))],
             [user(image(LAND), image(PORT), text("Describe both pictures."))],
         ]),
]


@torch.no_grad()
def bad_word_steps(model, inputs: dict, gen: torch.Tensor) -> list[list[int]]:
    """For each row, the generation steps whose raw (unmasked) argmax is a bad word (<fake> / <image>)."""
    length = inputs["input_ids"].shape[1]
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(gen[:, length:])], dim=1)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    kw = {k: inputs[k] for k in ("pixel_values", "pixel_attention_mask") if k in inputs}
    logits = model(input_ids=gen, attention_mask=mask, position_ids=pos, **kw).logits
    steps = logits[:, length - 1 : gen.shape[1] - 1].argmax(-1)
    return [[i for i, t in enumerate(row.tolist()) if t in (R.FAKE_ID, R.IMAGE_ID)] for row in steps]


def sha256_f32(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().astype("<f4").tobytes()).hexdigest()


@torch.no_grad()
def run_case(case: dict, proc: Idefics2Processor, model) -> dict:
    splitting = case.get("do_image_splitting", True)
    proc.image_processor.do_image_splitting = splitting
    prompts = [proc.apply_chat_template(conv, add_generation_prompt=True) for conv in case["conversations"]]
    images = [[it["path"] for m in conv for it in m["content"] if it["type"] == "image"]
              for conv in case["conversations"]]
    n_images = sum(len(i) for i in images)
    batched = len(prompts) > 1
    kwargs = dict(return_tensors="pt")
    if batched:
        kwargs.update(padding=True, padding_side="left")
    call_text = prompts if batched else prompts[0]
    if n_images:
        # Raw PIL images as opened from disk: the processor's own load_image does exif_transpose + convert("RGB")
        # (it does not accept local file paths: is_image_or_image_url() is False for them).
        call_images = [[Image.open(os.path.join(REPO, p)) for p in row] for row in images]
        if not batched:
            call_images = call_images[0]
        inputs = proc(text=call_text, images=call_images, **kwargs)
    else:
        inputs = proc(text=call_text, **kwargs)
    inputs = dict(inputs)

    gen = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    length = inputs["input_ids"].shape[1]
    new = gen[:, length:]
    masked_steps = bad_word_steps(model, inputs, gen)

    tensors = {k: v.contiguous() for k, v in inputs.items()}
    if "pixel_attention_mask" in tensors:
        # uint8 instead of transformers' int64 (values 0/1) to keep the fixture small.
        tensors["pixel_attention_mask"] = tensors["pixel_attention_mask"].to(torch.uint8)
    if not case.get("store_pixel_values", True):
        del tensors["pixel_values"]
    tensors["generated_new_ids"] = new.to(torch.int64).contiguous()
    save_file(tensors, os.path.join(E2E_DIR, f"{case['name']}.safetensors"))

    rows = []
    for b in range(len(prompts)):
        mask = inputs["attention_mask"][b] == 1
        ids = inputs["input_ids"][b][mask].tolist()
        new_ids = new[b].tolist()
        # Trim what generate() writes after a finished row (pad) so the list is what a single request returns:
        # everything up to and including the first eos.
        trimmed = []
        for t in new_ids:
            trimmed.append(t)
            if t in (R.EOS_ID, R.EOU_ID):
                break
        rows.append({
            "prompt": prompts[b],
            "images": images[b],
            "input_ids": ids,
            "n_input_tokens": len(ids),
            "n_image_tokens": ids.count(R.IMAGE_ID),
            "generated_new_ids_raw": new_ids,
            "generated_ids": trimmed,
            "stopped_on_eos": bool(trimmed and trimmed[-1] in (R.EOS_ID, R.EOU_ID)),
            "generated_text": proc.decode(trimmed, skip_special_tokens=True),
            "generated_text_batch_decode": proc.batch_decode(new[b:b + 1], skip_special_tokens=True)[0],
            # Steps (0-based, within generated_ids) where the unmasked argmax was <fake> or <image>: there
            # bad_words_ids decided the token.
            "steps_where_bad_words_ids_decided": [i for i in masked_steps[b] if i < len(trimmed)],
        })
    info = {
        "name": case["name"],
        "description": case["description"],
        "do_image_splitting": splitting,
        "conversations": case["conversations"],
        "padding": "left" if batched else None,
        "rows": rows,
        "tensors_file": rel(os.path.join(E2E_DIR, f"{case['name']}.safetensors")),
        "tensors": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in tensors.items()},
    }
    if "pixel_values" in inputs:
        pv, pm = inputs["pixel_values"], inputs["pixel_attention_mask"]
        # Real (post-resize) size of every image slot, from the mask: [h, w], [0, 0] for padding slots.
        sizes = []
        for b in range(pm.shape[0]):
            sizes.append([[int(pm[b, m].any(1).sum()), int(pm[b, m].any(0).sum())] for m in range(pm.shape[1])])
        info["image_slot_sizes_hw"] = sizes
        info["pixel_values_shape"] = list(pv.shape)
        info["pixel_values_stored"] = "pixel_values" in tensors
        info["pixel_values_sum_f64"] = float(pv.double().sum())
        info["image_slot_sums_f64"] = [[float(pv[b, m].double().sum()) for m in range(pv.shape[1])]
                                       for b in range(pv.shape[0])]
        info["_pv"] = pv
        info["pixel_values_sha256_le_f32"] = sha256_f32(pv)

    if batched:
        # Each row alone (no padding) must give the same new tokens: padding never changes real-token outputs.
        alone = []
        for conv, row in zip(case["conversations"], rows):
            sub = dict(case, conversations=[conv], name="_tmp")
            r = run_case_single(sub, proc, model)
            alone.append(r == row["generated_ids"])
        info["rows_match_unbatched_generation"] = alone
        os.remove(os.path.join(E2E_DIR, "_tmp.safetensors"))
    proc.image_processor.do_image_splitting = True
    return info


def run_case_single(case: dict, proc, model) -> list[int]:
    return run_case(case, proc, model)["rows"][0]["generated_ids"]


def check_batched_slots(by_name: dict) -> None:
    """Every real image slot of the batched case equals the same image's slot in a single-request case."""
    pv = by_name["batched_left_pad"]["_pv"]
    same = [((0, 0), "multi_turn_system", 0), ((1, 0), "single_image", 0), ((1, 5), "two_images_one_turn", 0)]
    for (b, m0), other, o0 in same:
        opv = by_name[other]["_pv"]
        for k in range(5):
            a, o = pv[b, m0 + k], opv[0, o0 + k]
            h, w = by_name[other]["image_slot_sizes_hw"][0][o0 + k]
            assert torch.equal(a[:, :h, :w], o[:, :h, :w]), (b, m0 + k, other)
            assert not a[:, h:, :].any() and not a[:, :, w:].any()  # the rest is padding 0.0
    by_name["batched_left_pad"]["real_slots_equal"] = [
        {"row": b, "slots": [m0, m0 + 5], "case": other, "case_slots": [o0, o0 + 5]} for (b, m0), other, o0 in same]


def main() -> None:
    R.setup_torch()
    images = make_images()
    make_checkpoint()
    make_hub_layout()

    proc = load_processor(CKPT)
    hub_proc = load_processor(HUB)
    proc_settings = check_layouts_equal(proc, hub_proc)

    model = R.load_f32(CKPT)
    hub_model = R.load_f32(HUB)
    for k, v in model.state_dict().items():
        assert torch.equal(v, hub_model.state_dict()[k])
    assert model.generation_config.to_dict() == hub_model.generation_config.to_dict()

    cases = []
    for case in CASES:
        info = run_case(case, proc, model)
        # Same request through the hub-layout directory: identical inputs and generation.
        hub_info = run_case(dict(case, name="_hub"), hub_proc, hub_model)
        os.remove(os.path.join(E2E_DIR, "_hub.safetensors"))
        assert [r["input_ids"] for r in hub_info["rows"]] == [r["input_ids"] for r in info["rows"]]
        assert [r["generated_ids"] for r in hub_info["rows"]] == [r["generated_ids"] for r in info["rows"]]
        assert hub_info.get("pixel_values_sha256_le_f32") == info.get("pixel_values_sha256_le_f32")
        cases.append(info)
    check_batched_slots({c["name"]: c for c in cases})
    for c in cases:
        c.pop("_pv", None)
        print(c["name"], [(r["n_input_tokens"], r["generated_ids"], r["generated_text"]) for r in c["rows"]])

    gc = model.generation_config
    out = {
        "description": "End-to-end transformers reference for tests/fixtures/e2e/tiny-chat: chat template -> "
                       "Idefics2Processor (PIL image processor) -> model.generate(max_new_tokens=12, do_sample=False, "
                       "generation_config of the checkpoint) -> decode(skip_special_tokens=True).",
        "versions": R.versions(),
        "script": rel(os.path.abspath(__file__)),
        "checkpoint": rel(CKPT),
        "checkpoint_hub_layout": rel(HUB),
        "hub_layout_loads_identically": True,
        "processor_class": type(proc).__name__,
        "image_processor_class": f"{type(proc.image_processor).__module__}.{type(proc.image_processor).__name__}",
        "image_processor_settings": proc_settings,
        "reference_run": "from_pretrained(dtype=float32, attn_implementation='eager'), eval(), CPU, 1 torch thread",
        "generate": {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False,
                     "eos_token_id": gc.eos_token_id, "bad_words_ids": gc.bad_words_ids,
                     "pad_token_id": gc.pad_token_id},
        "tokens": {"pad": R.PAD_ID, "bos": R.BOS_ID, "eos": R.EOS_ID, "fake_token_around_image": R.FAKE_ID,
                   "image": R.IMAGE_ID, "end_of_utterance": R.EOU_ID},
        "notes": [
            "rows[].input_ids exclude left padding; the safetensors file holds the padded call tensors.",
            "rows[].generated_ids: new tokens up to and including the first eos (2 or 322); "
            "generated_new_ids_raw is what generate() returned for the row (pad 0 after a finished row).",
            "pixel_values_sha256_le_f32: sha256 of pixel_values as little-endian float32, C order.",
            "Images are passed to the processor as raw Image.open(path) objects; the processor's load_image applies "
            "exif_transpose + convert('RGB') (decoded pixels: tests/fixtures/images_e2e/decoded.safetensors).",
        ],
        "cases": cases,
    }
    R.write_json(os.path.join(E2E_DIR, "cases.json"), out)
    print(f"e2e bytes: {R.dir_size(E2E_DIR)}, images bytes: {R.dir_size(IMAGES_DIR)}")


if __name__ == "__main__":
    main()
