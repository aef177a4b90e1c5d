#!/usr/bin/env python
"""An adapter trained on a quantized base (`idefics train --quant`) loads in peft onto the f32 base and gives our logits.

1. `idefics train --quant Q` on the bundled model (models/idefics2-tiny, text decoder 256 wide, so q4k / q6k
   blocks fit): LoRA or DoRA on the text decoder, a few steps on the committed chat fixtures, lr 1e-2 so that the
   adapter moves the logits far beyond the tolerance.
2. Ours, f32 base + adapter (not quantized): `idefics merge --base models/idefics2-tiny --adapter RUN/adapter`, then
   `idefics forward` of the merged checkpoint on one chat prompt with one image (input_ids, pixel_values, ...,
   logits).
3. peft: `PeftModel.from_pretrained(f32 base, RUN/adapter)`. The adapter file's keys must be exactly peft's adapter
   state-dict keys (`get_peft_model_state_dict`) with equal values, and loading it under a second name must report
   no unexpected key and no missing adapter key. Then peft's logits on our inputs against ours:
   max |ours - peft| <= 1e-4 over positions with attention_mask 1; the adapter must move the logits by more than
   20x that (or the comparison proves nothing).

Prints a JSON result; --json writes it too. Exit status 0 on PASS.

Usage (after `cargo build -p idefics-cli`, from anywhere):
  /work/.venv/bin/python tools/reference/check_qlora_adapter.py [--idefics PATH] [--quant q4k] [--mode lora|dora]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import peft
import safetensors.torch
import torch
import transformers
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from transformers import Idefics2ForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_REL = "models/idefics2-tiny"
IMAGE_REL = "tests/fixtures/images_e2e/landscape_120x80.png"
PROMPT = "User:<image>What shape is in the image?<end_of_utterance>\nAssistant:"
TOL = 1e-4

RECIPE = """[model]
path = "{root}/{base}"
[output]
dir = "{out}"
[[data.sources]]
kind = "cauldron"
paths = ["{root}/tests/fixtures/data/train/chat_shapes.parquet", "{root}/tests/fixtures/data/train/chat_basics.parquet"]
[data.collate]
max_seq_len = 512
split_fraction = 0.0
[trainable]
text = "{mode}"
[lora]
r = 4
alpha = 8
[optim]
lr = 1e-2
warmup_steps = 1
[run]
steps = {steps}
batch_size = 2
seed = 7
"""


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def load_base():
    return Idefics2ForConditionalGeneration.from_pretrained(
        os.path.join(ROOT, BASE_REL), dtype=torch.float32, attn_implementation="eager").eval()


def max_diff(a, b, keep):
    return (a[keep] - b[keep]).abs().max().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap.add_argument("--idefics", default=os.path.join(target, "debug", "idefics"))
    ap.add_argument("--quant", default="q4k", choices=["q8_0", "q4k", "q6k"])
    ap.add_argument("--mode", default="lora", choices=["lora", "dora"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        recipe = os.path.join(tmp, "recipe.toml")
        with open(recipe, "w") as f:
            f.write(RECIPE.format(root=ROOT, base=BASE_REL, out=run_dir, mode=args.mode, steps=args.steps))
        run([args.idefics, "train", "--config", recipe, "--quant", args.quant])
        adir = os.path.join(run_dir, "adapter")
        if os.path.isdir(os.path.join(run_dir, "final")):
            sys.exit("a run on a quantized base wrote final/ (it should write the adapter only)")
        merged = os.path.join(tmp, "merged")
        run([args.idefics, "merge", "--base", os.path.join(ROOT, BASE_REL), "--adapter", adir, "--out", merged])
        ours_path = os.path.join(tmp, "ours.safetensors")
        run([args.idefics, "forward", "--model", merged, "--prompt", PROMPT, "--image", os.path.join(ROOT, IMAGE_REL),
             "--out", ours_path])
        ours = safetensors.torch.load_file(ours_path)
        file_tensors = safetensors.torch.load_file(os.path.join(adir, "adapter_model.safetensors"))
        with open(os.path.join(adir, "adapter_config.json")) as f:
            adapter_config = json.load(f)

        feed = {k: ours[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")}
        feed["pixel_values"] = feed["pixel_values"].float()
        with torch.no_grad():
            model = PeftModel.from_pretrained(load_base(), adir).eval()
            cfg = model.peft_config["default"]
            peft_state = get_peft_model_state_dict(model)
            missing_in_peft = sorted(set(file_tensors) - set(peft_state))
            missing_in_file = sorted(set(peft_state) - set(file_tensors))
            value_diff = max((file_tensors[k].float() - peft_state[k].float()).abs().max().item()
                             for k in file_tensors if k in peft_state)
            second = model.load_adapter(adir, adapter_name="check")
            unexpected = list(second.unexpected_keys)
            missing_adapter = [k for k in second.missing_keys if "lora_" in k and ".check" in k]
            peft_logits = model(**feed).logits.float()
            base_logits = load_base()(**feed).logits.float()
    keep = feed["attention_mask"].bool()
    our_logits = ours["logits"].float()
    d = max_diff(our_logits, peft_logits, keep)
    effect = max_diff(base_logits, peft_logits, keep)
    keys_ok = not missing_in_peft and not missing_in_file and value_diff == 0.0 and not unexpected \
        and not missing_adapter
    passed = keys_ok and d <= TOL and effect > 20 * TOL
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "script": "tools/reference/check_qlora_adapter.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "idefics_rs_commit": commit},
        "base_model": BASE_REL,
        "trained_on": f"{args.quant} base ({args.mode}, {args.steps} steps)",
        "adapter": {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "use_dora": cfg.use_dora,
                    "n_tensors": len(file_tensors), "n_target_modules": len(adapter_config.get("target_modules") or [])},
        "keys": {"file_not_in_peft": missing_in_peft, "peft_not_in_file": missing_in_file,
                 "max_value_diff": value_diff, "unexpected_on_load": unexpected,
                 "missing_adapter_keys_on_load": missing_adapter},
        "tolerance": f"max |ours - peft| <= {TOL} over positions with attention_mask 1",
        "ours_f32_base_plus_adapter_vs_peft_max_abs_diff": d,
        "max_abs_logit": peft_logits[keep].abs().max().item(),
        "adapter_effect_max_abs_logit_change_vs_base": effect,
        "pass": passed,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
