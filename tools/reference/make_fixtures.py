#!/usr/bin/env python3
"""Write the tiny random Idefics2 reference fixtures under tests/fixtures/idefics2/.

For every case: a checkpoint written by transformers' save_pretrained (model/), input tensors (inputs.safetensors),
transformers' outputs (expected.safetensors) and a description (meta.json). Expectations are always computed from the
checkpoint RELOADED with from_pretrained(dtype=float32, attn_implementation="eager"), so they reflect what transformers
does with the files as written (including configs we edit after saving).

Usage: /work/.venv/bin/python tools/reference/make_fixtures.py [--out tests/fixtures/idefics2] [--only cfg_a ...]
Deterministic: rerunning rewrites byte-identical files (checked with sha256sum).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idefics_ref as R  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def edit_cfg_a(cfg: dict) -> None:
    # State a perceiver hidden size / eps that differ from the text ones. transformers (Idefics2Config.__post_init__)
    # then overwrites BOTH with the text values at load time; the weights are text-hidden-sized.
    cfg["perceiver_config"]["hidden_size"] = 24
    cfg["perceiver_config"]["rms_norm_eps"] = 1e-3


def edit_cfg_c(cfg: dict) -> None:
    # Rewrite into the transformers 4.x shape: rope_theta as a plain text_config field (no rope_parameters),
    # torch_dtype instead of dtype, a 4.x transformers_version.
    text = cfg["text_config"]
    theta = text.pop("rope_parameters")["rope_theta"]
    text["rope_theta"] = theta
    text.pop("rope_scaling", None)
    for sub in (cfg, cfg["text_config"], cfg["vision_config"], cfg["perceiver_config"]):
        if "dtype" in sub:
            sub["torch_dtype"] = sub.pop("dtype")
    cfg["transformers_version"] = "4.57.6"


CASES = {
    "cfg_a": dict(
        seed=101,
        description=(
            "config.json states perceiver hidden_size 24 / rms_norm_eps 1e-3 while text hidden_size is 32: "
            "transformers replaces both with the text values (32, 1e-5) at load time. Batch [1 image, 3 images], "
            "images of different sizes (not multiples of patch 4 -> partially valid patches are invalid; batch "
            "width 45 -> trailing 1-px column dropped), an all-zero padding image slot x2 for sample 0, "
            "two adjacent images sharing a <fake_token_around_image>, left padding."
        ),
        vision=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                    image_size=48, patch_size=4),
        perceiver=dict(resampler_n_latents=4, resampler_depth=2, resampler_n_heads=4, resampler_head_dim=6,
                       num_key_value_heads=2),
        text=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-5),
        storage=torch.float32,
        shard=None,
        edit=edit_cfg_a,
        layouts=[[4, "img", 6, "eou"], [2, "img", "img", 3, "img", 2]],
        images=[[(30, 41)], [(48, 45), (21, 14), (37, 26)]],
    ),
    "cfg_b": dict(
        seed=202,
        description=(
            "Odd head counts / GQA: text 6 heads / 2 kv heads (head_dim 6), vision 3 heads, perceiver 5 heads / "
            "1 kv head; sliding_window 8 with sequences of 40-46 tokens; rope_theta 1000. Batch [0 images, 1 image] "
            "(sample 0's image slot is an all-zero padding image), image 40x29 with patch 6 (trailing partial "
            "patch rows/cols dropped), left padding."
        ),
        vision=dict(hidden_size=24, intermediate_size=36, num_hidden_layers=1, num_attention_heads=3,
                    image_size=42, patch_size=6),
        perceiver=dict(resampler_n_latents=7, resampler_depth=1, resampler_n_heads=5, resampler_head_dim=4,
                       num_key_value_heads=1),
        text=dict(hidden_size=36, intermediate_size=56, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, sliding_window=8, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000.0}),
        storage=torch.float32,
        shard=None,
        edit=None,
        layouts=[[40, "eou", 4], [12, "img", 18]],
        images=[[], [(40, 29)]],
    ),
    "cfg_c": dict(
        seed=303,
        description=(
            "config.json rewritten in the transformers 4.x shape (text_config.rope_theta = 500 instead of "
            "rope_parameters, torch_dtype instead of dtype, transformers_version 4.57.6); weights stored in "
            "bfloat16 and sharded (model.safetensors.index.json); expectations from the checkpoint reloaded as "
            "float32. Batch [2 images, 1 image], patch 8 with image sides 50/17/33 (partial patches)."
        ),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=56, patch_size=8),
        perceiver=dict(resampler_n_latents=3, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=10,
                       num_key_value_heads=2),
        text=dict(hidden_size=40, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
        storage=torch.bfloat16,
        shard="40KB",
        edit=edit_cfg_c,
        layouts=[[3, "img", 5, "img", 2], [6, "img", 7]],
        images=[[(56, 50), (17, 33)], [(40, 56)]],
    ),
    "cfg_d": dict(
        seed=404,
        description=(
            "float16-stored checkpoint (expectations from the float32 reload), text only (no pixel_values); "
            "text head_dim 12 != hidden 40 / 4 heads, odd intermediate sizes (text 37, vision 19), rms_norm_eps "
            "1e-6, left padding."
        ),
        vision=dict(hidden_size=16, intermediate_size=19, num_hidden_layers=1, num_attention_heads=2,
                    image_size=16, patch_size=4),
        perceiver=dict(resampler_n_latents=5, resampler_depth=1, resampler_n_heads=3, resampler_head_dim=7,
                       num_key_value_heads=1),
        text=dict(hidden_size=40, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=12, rms_norm_eps=1e-6),
        storage=torch.float16,
        shard=None,
        edit=None,
        layouts=[[20, "eou"], [33]],
        images=None,
    ),
}


def make_case(name: str, spec: dict, out_root: str) -> dict:
    out = os.path.join(out_root, name)
    if os.path.exists(out):
        shutil.rmtree(out)
    model_dir = os.path.join(out, "model")
    os.makedirs(model_dir)

    config = R.build_config(spec["vision"], spec["perceiver"], spec["text"])
    model = R.new_model(config, spec["seed"])
    R.save_checkpoint(model, model_dir, spec["storage"], spec["shard"])
    cfg_path = os.path.join(model_dir, "config.json")
    if spec["edit"] is not None:
        with open(cfg_path) as f:
            cfg = json.load(f)
        spec["edit"](cfg)
        R.write_json(cfg_path, cfg)

    ref = R.load_f32(model_dir)
    # The reload must hold exactly the stored weights (upcast), i.e. nothing was re-initialised or dropped.
    stored = model.to(spec["storage"]).float().state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, stored[k]), f"{name}: reloaded {k} differs"

    g = torch.Generator().manual_seed(spec["seed"])
    n_latents = ref.config.perceiver_config.resampler_n_latents
    rows = [R.token_row(g, lay, n_latents) for lay in spec["layouts"]]
    inputs = R.left_pad(rows)
    if spec["images"] is not None:
        inputs.update(R.make_images(g, spec["images"]))
        n_img = sum(len(s) for s in spec["images"])
        assert int((inputs["input_ids"] == R.IMAGE_ID).sum()) == n_img * n_latents

    expected, info = R.reference(ref, inputs)
    R.write_inputs(os.path.join(out, "inputs.safetensors"), inputs)
    R.write_inputs(os.path.join(out, "expected.safetensors"), expected)

    meta = {
        "case": name,
        "description": spec["description"],
        "seed": spec["seed"],
        "storage_dtype": str(spec["storage"]).replace("torch.", ""),
        "sharded": spec["shard"] is not None,
        "config_edited_after_save": spec["edit"] is not None,
        "effective_config": R.effective_config(ref),
        "tokens": {"pad": R.PAD_ID, "bos": R.BOS_ID, "eos": R.EOS_ID, "fake_token_around_image": R.FAKE_ID,
                   "image": R.IMAGE_ID, "end_of_utterance": R.EOU_ID},
        "padding_side": "left",
        "real_lengths": inputs["attention_mask"].sum(1).tolist(),
        "image_sizes_hw": spec["images"],
        "inputs": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in inputs.items()},
        "expected": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in expected.items()},
        "reference_run": "from_pretrained(model/, dtype=float32, attn_implementation='eager'), eval(), CPU, 1 thread",
        "compare": "logits only where attention_mask == 1 (padded rows are garbage); "
                   "tolerance 1e-4 * max(1, max|ref logit|)",
        **info,
    }
    R.write_json(os.path.join(out, "meta.json"), meta)
    return {"case": name, "bytes": R.dir_size(out), "L": inputs["input_ids"].shape[1], **info}


if __name__ == "__main__":
    R.fixture_main(__doc__, os.path.join(REPO, "tests", "fixtures", "idefics2"), CASES, make_case)
