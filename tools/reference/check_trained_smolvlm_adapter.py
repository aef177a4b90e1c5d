#!/usr/bin/env python
"""A LoRA adapter trained by `idefics train` on the tiny SmolVLM checkpoint loads in peft and gives our logits.

1. Runs `idefics train` (LoRA r=4 on the vision tower, connector and text model; 4 steps on the committed
   synthetic chat data, lr 5e-2 so that the adapter moves the logits well beyond the tolerance) on tests/fixtures/idefics3/e2e/smolvlm_tied (model_type smolvlm, tied head).
2. Runs `idefics forward` on the run's merged checkpoint (final/) for one chat prompt with one split image:
   our input_ids, pixel_values, pixel_attention_mask and logits.
3. Loads the base with transformers and the adapter with `peft.PeftModel.from_pretrained`, and the merged
   checkpoint with transformers alone, on exactly those inputs, and compares the logits with ours:
   max |ours - ref| <= 1e-4 * max(1, max |ref|) (the tolerance of the other parity tests).

Writes tests/fixtures/idefics3/trained_adapter/: adapter/ (ours, as `idefics train` saved it), recipe.toml (with
repo-relative paths), ours.safetensors (the `idefics forward` output), peft_logits.safetensors (peft's logits of
base + our adapter), result.json (versions, differences, PASS). crates/idefics-train/tests/idefics3_train_step_parity.rs
checks that merging the committed adapter reproduces peft's logits.

Usage (after `cargo build -p idefics-cli`):
  /work/.venv/bin/python tools/reference/check_trained_smolvlm_adapter.py [--idefics PATH/TO/idefics]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import peft
import PIL
import safetensors
import safetensors.torch
import torch
import transformers
from peft import PeftModel
from transformers import SmolVLMForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_REL = "tests/fixtures/idefics3/e2e/smolvlm_tied"
DATA_REL = "tests/fixtures/data/train"
IMAGE_REL = "tests/fixtures/images_e2e/landscape_120x80.png"
OUT = os.path.join(ROOT, "tests", "fixtures", "idefics3", "trained_adapter")
PROMPT = "User:<image>What is in the picture?<end_of_utterance>\nAssistant:"

RECIPE = """[model]
path = "{root}/{base}"
[output]
dir = "{out}"
[[data.sources]]
kind = "cauldron"
paths = ["{root}/{data}/chat_shapes.parquet", "{root}/{data}/chat_ocr.parquet"]
[data.collate]
max_seq_len = 600
split_fraction = 0.5
[trainable]
vision = "lora"
projection = "lora"
text = "lora"
[lora]
r = 4
alpha = 8
[optim]
lr = 5e-2
warmup_steps = 1
[run]
steps = 4
batch_size = 2
seed = 7
"""


def run(cmd):
    print("+", " ".join(cmd))
    subprocess.run(cmd, check=True)


def load(path):
    return SmolVLMForConditionalGeneration.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")


def compare(ours, ref, mask):
    keep = mask.bool()
    diff = (ours[keep] - ref[keep]).abs().max().item()
    scale = max(1.0, ref[keep].abs().max().item())
    return diff, 1e-4 * scale


def main():
    ap = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap.add_argument("--idefics", default=os.path.join(target, "debug", "idefics"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        recipe = RECIPE.format(root=ROOT, base=BASE_REL, data=DATA_REL, out=run_dir)
        recipe_path = os.path.join(tmp, "recipe.toml")
        with open(recipe_path, "w") as f:
            f.write(recipe)
        run([args.idefics, "train", "--config", recipe_path])
        ours_path = os.path.join(OUT, "ours.safetensors")
        run([args.idefics, "forward", "--model", os.path.join(run_dir, "final"), "--prompt", PROMPT,
             "--image", os.path.join(ROOT, IMAGE_REL), "--split", "--out", ours_path])
        adir = os.path.join(OUT, "adapter")
        if os.path.isdir(adir):
            shutil.rmtree(adir)
        shutil.copytree(os.path.join(run_dir, "adapter"), adir)
        with open(os.path.join(OUT, "recipe.toml"), "w") as f:
            f.write(RECIPE.format(root=".", base=BASE_REL, data=DATA_REL, out="<temporary run dir>"))

        ours = safetensors.torch.load_file(ours_path)
        feed = {k: ours[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")}
        feed["pixel_values"] = feed["pixel_values"].float()
        our_logits = ours["logits"].float()
        with torch.no_grad():
            adapted = PeftModel.from_pretrained(load(os.path.join(ROOT, BASE_REL)), adir).eval()
            cfg = adapted.peft_config["default"]
            peft_logits = adapted(**feed).logits.float()
            base_logits = load(os.path.join(ROOT, BASE_REL)).eval()(**feed).logits.float()
            merged_tf = load(os.path.join(run_dir, "final")).eval()
            merged_logits = merged_tf(**feed).logits.float()
    mask = feed["attention_mask"]
    d_peft, tol = compare(our_logits, peft_logits, mask)
    d_merged, tol_m = compare(our_logits, merged_logits, mask)
    # The adapter must change the model by much more than the tolerance, or the comparison proves nothing.
    effect, _ = compare(base_logits, peft_logits, mask)
    passed = d_peft <= tol and d_merged <= tol_m and effect > 20 * tol
    safetensors.torch.save_file({"logits": peft_logits.contiguous()}, os.path.join(OUT, "peft_logits.safetensors"))
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "script": "tools/reference/check_trained_smolvlm_adapter.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "pillow": PIL.__version__,
            "safetensors": safetensors.__version__,
            "idefics_rs_commit": commit,
        },
        "base_model": BASE_REL,
        "prompt": PROMPT,
        "image": IMAGE_REL,
        "adapter": {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "use_dora": cfg.use_dora,
                    "n_target_modules": len(cfg.target_modules)},
        "tolerance": "max |ours - ref| <= 1e-4 * max(1, max |ref|) over positions with attention_mask 1",
        "ours_vs_peft_adapter_max_abs_diff": d_peft,
        "ours_vs_transformers_on_our_merged_checkpoint_max_abs_diff": d_merged,
        "tolerance_abs": tol,
        "adapter_effect_max_abs_logit_change_vs_base": effect,
        "pass": passed,
    }
    with open(os.path.join(OUT, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(json.dumps(result, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
