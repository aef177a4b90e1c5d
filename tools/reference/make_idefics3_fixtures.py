#!/usr/bin/env python3
"""Write the tiny random Idefics3 / SmolVLM reference fixtures under tests/fixtures/idefics3/.

For every case: a checkpoint written by transformers' save_pretrained (model/), one or more input sets
(inputs[_NAME].safetensors), transformers' outputs for each (expected[_NAME].safetensors) and a description
(meta.json). Expectations are computed from the checkpoint RELOADED with from_pretrained(dtype=float32,
attn_implementation="eager"), so they reflect what transformers does with the files as written (including configs
rewritten into the 4.x layout after saving).

Usage: /work/.venv/bin/python tools/reference/make_idefics3_fixtures.py [--out tests/fixtures/idefics3] [--only NAME ...]
Deterministic: rerunning rewrites byte-identical files.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys

import torch
from transformers import (
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idefics_ref as R  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# The toy vocabulary of idefics_ref (323 ids): pad 0, bos 1, eos 2, <fake_token_around_image> 320, <image> 321,
# <end_of_utterance> 322, text ids in [3, 320). Tile markers (<row_r_col_c> / <global-img> in real checkpoints) are
# ordinary text ids here: the model treats them as text.
VOCAB, PAD, BOS, EOS, FAKE, IMAGE, EOU = R.VOCAB_SIZE, R.PAD_ID, R.BOS_ID, R.EOS_ID, R.FAKE_ID, R.IMAGE_ID, R.EOU_ID

GENERATE_KWARGS = dict(
    max_new_tokens=8,
    do_sample=False,
    bad_words_ids=[[FAKE], [IMAGE]],
    eos_token_id=[EOS, EOU],
    pad_token_id=PAD,
)

CLASSES = {
    "idefics3": (Idefics3Config, Idefics3ForConditionalGeneration),
    "smolvlm": (SmolVLMConfig, SmolVLMForConditionalGeneration),
}


def to_4x_layout(cfg: dict) -> None:
    """Rewrite a 5.x config.json into the transformers 4.x layout: text_config.rope_theta and rope_scaling (with
    the old "type" key) instead of rope_parameters, torch_dtype instead of dtype."""
    text = cfg["text_config"]
    rope = dict(text.pop("rope_parameters"))
    text["rope_theta"] = rope.pop("rope_theta")
    rope_type = rope.pop("rope_type")
    if rope_type != "default":
        text["rope_scaling"] = {"type": rope_type, **rope}
    for sub in (cfg, cfg["text_config"], cfg["vision_config"]):
        if "dtype" in sub:
            sub["torch_dtype"] = sub.pop("dtype")
    cfg["transformers_version"] = "4.57.6"


CASES = {
    "idefics3_llama3": dict(
        model_type="idefics3",
        seed=31,
        description=(
            "Idefics3, untied head, Llama-3 rope scaling (theta 500, factor 8, low 1, high 4, original max 128: "
            "with head_dim 12 the six frequencies fall in all three bands), attention_bias and mlp_bias true, "
            "text 4 heads / 2 kv heads with head_dim 12 != hidden 40 / 4, vision 24 hidden / 2 heads / patch 4 / "
            "image_size 24 (6x6 positions), scale_factor 2 -> 9 tokens per image. Batch [2 images, 1 image + an "
            "all-zero padding slot], batch image 26x26 (trailing 2-px row and column dropped), images 26x26, "
            "17x21 (any-pixel rule: 5x6 valid patches; all-pixels would give 4x5) and 13x24; left padding."
        ),
        vision=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                    image_size=24, patch_size=4),
        text=dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=12, rms_norm_eps=1e-5, max_position_embeddings=256,
                  attention_bias=True, mlp_bias=True,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 128}),
        scale_factor=2,
        tie=False,
        storage=torch.float32,
        layout_4x=False,
        inputs={
            "": dict(layouts=[[3, "img", 4, "img", 2, "eou"], [5, "img", 6]],
                     images=[[(26, 26), (17, 21)], [(13, 24)]], size=(26, 26)),
        },
    ),
    "smolvlm_tied": dict(
        model_type="smolvlm",
        seed=47,
        description=(
            "SmolVLM, tied head (tie_word_embeddings: lm_head not stored), config.json rewritten in the 4.x "
            "layout (text_config.rope_theta 1000 + rope_scaling {type: linear, factor 2}, torch_dtype), weights "
            "stored in bfloat16 (expectations from the float32 reload), text 4 heads / 1 kv head (head_dim 10), "
            "no biases, vision 24 hidden / 3 heads / patch 4 / image_size 32 (8x8 positions), scale_factor 4 -> "
            "4 tokens per tile. Input sets: '' = batch [3 tiles, 1 tile + 2 padding slots] of 32x32 tiles with "
            "left padding; 'allpad' = SmolVLM's rule: every image of the batch is all-zero padding, so the first "
            "one is kept and its 4 <image> tokens receive its features; 'textonly' = no pixel_values."
        ),
        vision=dict(hidden_size=24, intermediate_size=36, num_hidden_layers=2, num_attention_heads=3,
                    image_size=32, patch_size=4),
        text=dict(hidden_size=40, intermediate_size=52, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, rms_norm_eps=1e-6, max_position_embeddings=128,
                  rope_parameters={"rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0}),
        scale_factor=4,
        tie=True,
        storage=torch.bfloat16,
        layout_4x=True,
        inputs={
            "": dict(layouts=[[2, "tiles3", 3, "eou"], [4, "img", 5]],
                     images=[[(32, 32)] * 3, [(32, 32)]], size=(32, 32)),
            "allpad": dict(layouts=[[3, "img", 4], [9]], images=[[None], []], size=(32, 32)),
            "textonly": dict(layouts=[[7, "eou", 3], [12]], images=None, size=None),
        },
    ),
}


def build(spec: dict):
    cfg_cls, model_cls = CLASSES[spec["model_type"]]
    text = dict(spec["text"])
    text.update(model_type="llama", vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    config = cfg_cls(vision_config=dict(spec["vision"]), text_config=text, scale_factor=spec["scale_factor"],
                     image_token_id=IMAGE, tie_word_embeddings=spec["tie"])
    torch.manual_seed(spec["seed"])
    config._attn_implementation = "eager"
    model = model_cls(config).float().eval()
    R.randomize_(model, spec["seed"])
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, EOU], pad_token_id=PAD,
                                               bad_words_ids=[[FAKE], [IMAGE]])
    return model


def load_f32(model_type: str, model_dir: str):
    _, model_cls = CLASSES[model_type]
    return model_cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()


def token_row(g: torch.Generator, layout: list, seq: int) -> list[int]:
    """BOS, then the items: an int is that many random text ids; "img" one image as the processor writes an
    unsplit one (<fake> <marker> <image>*seq <fake>); "tilesN" N tiles (<fake> <marker> <image>*seq each, then a
    closing <fake>); "eou" <end_of_utterance>."""
    ids = [BOS]
    for item in layout:
        if item == "eou":
            ids.append(EOU)
        elif isinstance(item, str) and item.startswith("tiles"):
            for _ in range(int(item[5:])):
                ids += [FAKE, int(torch.randint(3, FAKE, (1,), generator=g))] + [IMAGE] * seq
            ids.append(FAKE)
        elif item == "img":
            ids += [FAKE, int(torch.randint(3, FAKE, (1,), generator=g))] + [IMAGE] * seq + [FAKE]
        else:
            ids += torch.randint(3, FAKE, (int(item),), generator=g).tolist()
    return ids


def make_images(g: torch.Generator, sizes: list, hw: tuple[int, int]) -> dict:
    """pixel_values [B,M,3,H,W] uniform in [-1,1] top-left, zero-padded; pixel_attention_mask [B,M,H,W]. A `None`
    size is an all-zero padding image (mask all 0) in an explicit slot; missing slots up to M are padding too."""
    b, m = len(sizes), max(len(s) for s in sizes)
    h, w = hw
    pv = torch.zeros((b, m, 3, h, w), dtype=torch.float32)
    pm = torch.zeros((b, m, h, w), dtype=torch.int64)
    for i, s in enumerate(sizes):
        for j, size in enumerate(s):
            if size is None:
                continue
            hh, ww = size
            pv[i, j, :, :hh, :ww] = torch.rand((3, hh, ww), generator=g) * 2.0 - 1.0
            pm[i, j, :hh, :ww] = 1
    return {"pixel_values": pv, "pixel_attention_mask": pm}


@torch.no_grad()
def reference(model, inputs: dict) -> tuple[dict, dict]:
    kw = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if "pixel_values" in inputs:
        kw["pixel_values"] = inputs["pixel_values"]
        kw["pixel_attention_mask"] = inputs["pixel_attention_mask"]
    out = model(**kw, output_hidden_states=True)
    exp = {"logits": out.logits.float().contiguous(), "inputs_embeds": out.hidden_states[0].float().contiguous()}
    info = {}
    if "pixel_values" in inputs:
        feats = model.model.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"])
        exp["vision_hidden_states"] = feats.last_hidden_state.float().contiguous()
        seq = model.model.image_seq_len
        conn = torch.cat(list(feats.pooler_output), dim=0).reshape(-1, seq, model.config.text_config.hidden_size)
        exp["connector_output"] = conn.float().contiguous()
        info["n_images_through_tower"] = int(conn.shape[0])
    real = inputs["attention_mask"] == 1
    info["max_abs_logit_real"] = float(exp["logits"][real].abs().max())
    gen_kw = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    if "pixel_values" in inputs:
        gen_kw["pixel_values"] = inputs["pixel_values"]
        gen_kw["pixel_attention_mask"] = inputs["pixel_attention_mask"]
    exp["generated_ids"] = model.generate(**gen_kw, **GENERATE_KWARGS).to(torch.int64).contiguous()
    info["generate_kwargs"] = {"inputs": sorted(gen_kw), **GENERATE_KWARGS}
    return exp, info


def make_case(name: str, spec: dict, out_root: str) -> dict:
    out = os.path.join(out_root, name)
    if os.path.exists(out):
        shutil.rmtree(out)
    model_dir = os.path.join(out, "model")
    os.makedirs(model_dir)
    model = build(spec)
    R.save_checkpoint(model, model_dir, spec["storage"], None)
    if spec["layout_4x"]:
        cfg_path = os.path.join(model_dir, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        to_4x_layout(cfg)
        R.write_json(cfg_path, cfg)

    ref = load_f32(spec["model_type"], model_dir)
    stored = copy.deepcopy(model).to(spec["storage"]).float().state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, stored[k]), f"{name}: reloaded {k} differs"
    assert ref.config.tie_word_embeddings == spec["tie"]
    if spec["tie"]:
        assert ref.lm_head.weight.data_ptr() == ref.model.text_model.embed_tokens.weight.data_ptr()
    rotary = ref.model.text_model.rotary_emb
    assert rotary.rope_type == spec["text"]["rope_parameters"]["rope_type"], rotary.rope_type

    seq = ref.model.image_seq_len
    g = torch.Generator().manual_seed(spec["seed"])
    summary = {"case": name, "image_seq_len": seq}
    meta_inputs = {}
    for key, ins in spec["inputs"].items():
        rows = [token_row(g, lay, seq) for lay in ins["layouts"]]
        inputs = R.left_pad(rows)
        if ins["images"] is not None:
            inputs.update(make_images(g, ins["images"], ins["size"]))
        expected, info = reference(ref, inputs)
        expected["rope_inv_freq"] = rotary.inv_freq.float().contiguous()
        suffix = f"_{key}" if key else ""
        R.write_inputs(os.path.join(out, f"inputs{suffix}.safetensors"), inputs)
        R.write_inputs(os.path.join(out, f"expected{suffix}.safetensors"), expected)
        meta_inputs[key or "default"] = {
            "image_sizes_hw": ins["images"],
            "real_lengths": inputs["attention_mask"].sum(1).tolist(),
            "inputs": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in inputs.items()},
            "expected": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in expected.items()},
            **info,
        }
        summary[key or "default"] = info["max_abs_logit_real"]

    t = ref.config.text_config
    meta = {
        "case": name,
        "model_type": spec["model_type"],
        "description": spec["description"],
        "seed": spec["seed"],
        "storage_dtype": str(spec["storage"]).replace("torch.", ""),
        "config_layout": "4.x (rewritten after save)" if spec["layout_4x"] else "5.x (as saved)",
        "effective_config": {
            "vision": spec["vision"],
            "text": {k: getattr(t, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                                "head_dim", "rms_norm_eps", "attention_bias", "mlp_bias",
                                                "max_position_embeddings")},
            "rope_parameters": dict(t.rope_parameters),
            "scale_factor": ref.config.scale_factor,
            "image_seq_len": seq,
            "tie_word_embeddings": ref.config.tie_word_embeddings,
        },
        "tokens": {"pad": PAD, "bos": BOS, "eos": EOS, "fake_token_around_image": FAKE, "image": IMAGE,
                   "end_of_utterance": EOU},
        "input_sets": meta_inputs,
        "reference_run": "from_pretrained(model/, dtype=float32, attn_implementation='eager'), eval(), CPU, 1 thread",
        "compare": "logits only where attention_mask == 1; tolerance 1e-4 * max(1, max|ref logit|)",
    }
    R.write_json(os.path.join(out, "meta.json"), meta)
    summary["bytes"] = R.dir_size(out)
    return summary


if __name__ == "__main__":
    R.fixture_main(__doc__, os.path.join(REPO, "tests", "fixtures", "idefics3"), CASES, make_case)
