#!/usr/bin/env python
"""Reference fixtures for ONE training step of Idefics2: loss and gradients from transformers (+ peft).

Base model: tests/fixtures/idefics2/cfg_a/model (referenced, not copied). The batch is cfg_a's inputs with sample 0
moved from left to right padding, and labels added. Everything runs on CPU, float32, eager attention, one thread,
`model.train()` (every dropout of cfg_a is 0, so train and eval give the same loss; checked below).

What it writes under tests/fixtures/train_step/:
  batch.safetensors        input_ids, attention_mask (right padding on sample 0), pixel_values, pixel_attention_mask,
                           labels (-100 on the first PROMPT_TOKENS tokens of each sample, on image tokens, on padding)
  full/loss.safetensors    "loss": f32 [] : Idefics2ForConditionalGeneration(**batch, labels=labels).loss
  full/grads.safetensors   d loss / d p for EVERY parameter, keyed by its checkpoint name (model.vision_model...)
  full/logits.safetensors  "logits": f32 [B, T, V] of that forward
  lora/ dora/              adapter/ (peft save_pretrained: adapter_config.json, adapter_model.safetensors),
                           loss.safetensors, logits.safetensors, and grads.safetensors keyed by the adapter file's keys
                           (base_model.model.<path>.lora_A.weight / .lora_B.weight / .lora_magnitude_vector)
  meta.json                versions, seeds, target modules and adapted module paths, what each file is

The loss is transformers' ForCausalLMLoss: logits upcast to f32, labels shifted inside the model (label t+1 is
predicted at position t, a -100 appended at the end), cross-entropy with mean over the label tokens != -100 of the
whole batch. The script recomputes that by hand from the logits and asserts agreement.

Usage:
  /work/.venv/bin/python tools/reference/make_train_step_fixtures.py          # (re)write the fixtures
  then: tools/reference/check_peft_roundtrip.py is run on the generated adapters (see --check below)
"""

import argparse
import copy
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
from peft import LoraConfig, get_peft_model
from transformers import Idefics2ForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "train_step")
BASE_REL = os.path.join("tests", "fixtures", "idefics2", "cfg_a", "model")
INPUTS_REL = os.path.join("tests", "fixtures", "idefics2", "cfg_a", "inputs.safetensors")
BASE = os.path.join(ROOT, BASE_REL)

PAD_ID = 0
IMAGE_TOKEN_ID = 321
PROMPT_TOKENS = 3  # label-masked prompt prefix of each sample

# Every nn.Linear of the vision tower, connector (modality_projection + perceiver) and text model; not lm_head,
# not the patch embedding (Conv2d). Names are peft suffix matches.
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2"]
LORA_KWARGS = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGET_MODULES, bias="none")
SEED_LORA_A = 1234  # global RNG seed before get_peft_model (peft's kaiming init of lora_A)
SEED_ADAPTER = 4321  # generator for lora_B and the DoRA magnitude perturbation


def load_base():
    model = Idefics2ForConditionalGeneration.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager")
    model.train()
    return model


def make_batch():
    """cfg_a's inputs, sample 0 turned from left to right padding, plus labels."""
    src = safetensors.torch.load_file(os.path.join(ROOT, INPUTS_REL))
    ids = src["input_ids"].clone()
    mask = src["attention_mask"].clone()
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        real = ids[b][mask[b] == 1].clone()
        ids[b] = PAD_ID
        ids[b, :n] = real
        mask[b] = 0
        mask[b, :n] = 1
    labels = ids.clone()
    labels[:, :PROMPT_TOKENS] = -100
    labels[ids == IMAGE_TOKEN_ID] = -100
    labels[mask == 0] = -100
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": src["pixel_values"].clone(),
        "pixel_attention_mask": src["pixel_attention_mask"].clone(),
        "labels": labels,
    }


def model_inputs(batch):
    # No position_ids: with right padding transformers uses arange(T), the positions a trainer sees.
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")}


def manual_loss(logits, labels):
    """ForCausalLMLoss written out: shift, ignore -100, mean over the batch's label tokens."""
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    logp = torch.log_softmax(logits.double(), dim=-1)
    keep = shifted != -100
    nll = -logp[keep].gather(-1, shifted[keep].unsqueeze(-1)).squeeze(-1)
    return nll.mean(), int(keep.sum())


def step(model, batch):
    """One forward + backward; returns (loss, logits, n_label_tokens)."""
    model.zero_grad(set_to_none=True)
    out = model(**model_inputs(batch), labels=batch["labels"])
    out.loss.backward()
    ref, n = manual_loss(out.logits.detach(), batch["labels"])
    assert abs(out.loss.item() - ref.item()) <= 1e-5 * abs(ref.item()), (out.loss.item(), ref.item())
    with torch.no_grad():
        model.eval()
        eval_loss = model(**model_inputs(batch), labels=batch["labels"]).loss.item()
        model.train()
    assert eval_loss == out.loss.item(), "train and eval losses differ (dropout?)"
    return out.loss.detach(), out.logits.detach(), n


def save(path, tensors):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    safetensors.torch.save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path)


def make_full(batch):
    model = load_base()
    for p in model.parameters():
        p.requires_grad_(True)
    loss, logits, n = step(model, batch)
    ckpt_keys = set(safetensors.safe_open(os.path.join(BASE, "model.safetensors"), "pt").keys())
    grads = {}
    zero = []
    for name, p in model.named_parameters():
        assert name in ckpt_keys, f"parameter {name} is not a checkpoint key"
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        grads[name] = p.grad
        if p.grad.abs().sum() == 0:
            zero.append(name)
    assert set(grads) == ckpt_keys, ckpt_keys ^ set(grads)
    fd = directional_check(model, grads, batch)
    d = os.path.join(OUT, "full")
    save(os.path.join(d, "loss.safetensors"), {"loss": loss})
    save(os.path.join(d, "grads.safetensors"), grads)
    save(os.path.join(d, "logits.safetensors"), {"logits": logits})
    print(f"full: loss {loss.item():.6f} over {n} label tokens, {len(grads)} grads, all-zero: {zero}")
    return {
        "loss": loss.item(),
        "n_label_tokens": n,
        "n_grads": len(grads),
        "all_zero_grads": zero,
        "directional_derivative_check_f64": fd,
    }


def directional_check(model, grads, batch, eps=1e-3):
    """Independent check that the grads are d(loss)/d(params) of THIS loss (mean over label tokens, shifted): a
    central difference along a random direction over ALL parameters against sum(grad * direction).

    The difference runs on an f64 copy with the loss recomputed in f64 (ForCausalLMLoss would cast the logits back
    to f32), but transformers keeps f32 islands inside (eager softmax and RMSNorm upcast to f32, then cast back),
    so the difference is only good to ~1e-3: enough to tell mean from sum (x n_label_tokens) or a wrong shift,
    not a precision check. The precision claim rests on autograd of transformers' own loss."""
    gen = torch.Generator().manual_seed(99)
    m64 = copy.deepcopy(model).double().eval()
    dirs = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in m64.named_parameters()}
    feed = model_inputs(batch)
    feed["pixel_values"] = feed["pixel_values"].double()

    def loss_at(t):
        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in m64.named_parameters()}
            for n, p in m64.named_parameters():
                p.add_(t * dirs[n])
            val = manual_loss(m64(**feed).logits, batch["labels"])[0].item()
            for n, p in m64.named_parameters():
                p.copy_(saved[n])
        return val

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = sum((grads[n].double() * dirs[n]).sum().item() for n in dirs)
    rel = abs(numeric - analytic) / abs(numeric)
    print(f"full: directional derivative: central difference {numeric:.6f}, from grads {analytic:.6f} (rel {rel:.1e})")
    assert rel < 5e-3, rel
    return {"direction_seed": 99, "eps": eps, "central_difference": numeric, "from_grads": analytic, "rel_diff": rel}


def adapter_key(param_name):
    """named_parameters() name -> the key peft writes in adapter_model.safetensors."""
    key = param_name.replace(".default", "")
    if key.endswith("lora_magnitude_vector.weight"):
        key = key[: -len(".weight")]
    return key


def make_adapter(batch, name, use_dora):
    base = load_base()
    torch.manual_seed(SEED_LORA_A)
    model = get_peft_model(base, LoraConfig(use_dora=use_dora, **LORA_KWARGS))
    model.train()
    gen = torch.Generator().manual_seed(SEED_ADAPTER)
    adapted = []
    with torch.no_grad():
        for mpath, module in model.named_modules():
            if isinstance(module, peft.tuners.lora.Linear):
                adapted.append(mpath[len("base_model.model.") :])
                # peft's lora_B starts at zero, which would make d loss / d lora_A zero: draw it instead, scaled
                # so that s * B A is a sizeable fraction of W.
                b = module.lora_B["default"].weight
                b.copy_(0.3 * torch.randn(b.shape, generator=gen))
                if use_dora:
                    # A magnitude that is not ||W + s B A||, so m / ||.|| != 1 and the magnitude path matters.
                    w = module.base_layer.weight
                    norm = torch.linalg.norm(w + module.get_delta_weight("default"), dim=1)
                    mag = module.lora_magnitude_vector["default"].weight
                    mag.copy_(norm * (1.0 + 0.2 * torch.randn(mag.shape, generator=gen)))
    d = os.path.join(OUT, name)
    adir = os.path.join(d, "adapter")
    if os.path.isdir(adir):
        shutil.rmtree(adir)
    model.save_pretrained(adir)
    readme = os.path.join(adir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    # peft writes target_modules from a set (order varies with PYTHONHASHSEED) and the base path as given: sort
    # the one and make the other repo-relative, so regenerating is byte-identical. Neither changes how peft loads.
    cfg_path = os.path.join(adir, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["base_model_name_or_path"] = BASE_REL
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")

    loss, logits, n = step(model, batch)
    saved = safetensors.torch.load_file(os.path.join(adir, "adapter_model.safetensors"))
    grads = {}
    for pname, p in model.named_parameters():
        if p.requires_grad:
            key = adapter_key(pname)
            assert key in saved, f"{pname} -> {key} not in the saved adapter"
            assert torch.equal(saved[key], p.detach()), key
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
            grads[key] = p.grad
    assert set(grads) == set(saved), set(grads) ^ set(saved)
    save(os.path.join(d, "loss.safetensors"), {"loss": loss})
    save(os.path.join(d, "grads.safetensors"), grads)
    save(os.path.join(d, "logits.safetensors"), {"logits": logits})
    frozen = sum(1 for _, p in model.named_parameters() if not p.requires_grad)
    print(f"{name}: loss {loss.item():.6f}, {len(adapted)} adapted modules, {len(grads)} grads, {frozen} frozen")
    return {
        "loss": loss.item(),
        "n_label_tokens": n,
        "adapted_modules": adapted,
        "n_grads": len(grads),
        "n_frozen_params": frozen,
    }


def check_roundtrip(name):
    """Run check_peft_roundtrip.py on the adapter (vs the logits saved here) and on peft's merged checkpoint."""
    script = os.path.join(ROOT, "tools", "reference", "check_peft_roundtrip.py")
    d = os.path.join(OUT, name)
    inputs = os.path.join(OUT, "batch.safetensors")
    logits = os.path.join(d, "logits.safetensors")
    run = [sys.executable, script, "--inputs", inputs, "--logits", logits]
    subprocess.run(run + ["--base", BASE, "--adapter", os.path.join(d, "adapter")], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(run + ["--base", BASE, "--adapter", os.path.join(d, "adapter"), "--save-merged", tmp], check=True)
        subprocess.run(run + ["--merged", tmp], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-check", action="store_true", help="skip the check_peft_roundtrip.py self-test")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    batch = make_batch()
    save(os.path.join(OUT, "batch.safetensors"), batch)
    meta = {
        "script": "tools/reference/make_train_step_fixtures.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "pillow": PIL.__version__,
            "safetensors": safetensors.__version__,
        },
        "base_model": BASE_REL,
        "batch_source": INPUTS_REL + " (sample 0 moved from left to right padding; position_ids not passed)",
        "run": "from_pretrained(base, dtype=float32, attn_implementation='eager'), train(), CPU, 1 thread",
        "labels": f"input_ids, with -100 on the first {PROMPT_TOKENS} tokens of each sample, on image tokens "
        f"({IMAGE_TOKEN_ID}) and on padding (attention_mask 0); <fake_token_around_image> (320) keeps its label",
        "loss": "transformers ForCausalLMLoss: f32 logits, labels shifted inside the model (pad one -100 at the end, "
        "drop the first), cross-entropy mean over all label tokens != -100 of the batch (n_label_tokens)",
        "lora_config": {**LORA_KWARGS, "use_dora": "false in lora/, true in dora/"},
        "seeds": {
            "torch.manual_seed before get_peft_model (lora_A kaiming init)": SEED_LORA_A,
            "generator for lora_B = 0.3 * N(0,1) and DoRA magnitude = ||W + s B A|| * (1 + 0.2 * N(0,1))": SEED_ADAPTER,
        },
        "files": {
            "batch.safetensors": "input_ids i64 [B,T], attention_mask i64 [B,T], pixel_values f32 [B,N,3,H,W], "
            "pixel_attention_mask i64 [B,N,H,W], labels i64 [B,T]",
            "full/loss.safetensors": "'loss' f32 []: all parameters trainable",
            "full/grads.safetensors": "gradient of every parameter keyed by its checkpoint name",
            "full/logits.safetensors": "'logits' f32 [B,T,V] of the same forward",
            "<lora|dora>/adapter/": "peft save_pretrained output (adapter_config.json, adapter_model.safetensors)",
            "<lora|dora>/loss.safetensors": "'loss' f32 []: only adapter parameters trainable, base frozen",
            "<lora|dora>/grads.safetensors": "gradient of every adapter parameter keyed as in adapter_model.safetensors"
            " (base_model.model.<path>.lora_A.weight, .lora_B.weight, .lora_magnitude_vector)",
            "<lora|dora>/logits.safetensors": "'logits' f32 [B,T,V] of the adapted model",
        },
        "notes": [
            "peft detaches ||W + s B A|| in DoRA (paper section 4.3): no gradient flows through the norm.",
            "peft saves the DoRA magnitude as '<path>.lora_magnitude_vector' (named_parameters has "
            "'.lora_magnitude_vector.default.weight'); grads use the saved key.",
            "cfg_a has tie_word_embeddings = false: lm_head and embed_tokens are separate parameters with separate "
            "grads; lm_head is not a LoRA target and no modules_to_save are used, so lora/dora train only adapters.",
            "The Idefics2 docstring says image-token labels are ignored, but transformers 5.24 does NOT mask them: "
            "the labels here mask them explicitly.",
            "Padded logits rows (attention_mask 0) are included in the logits files; they carry no loss.",
            "The vision k_proj.bias grads are mathematically zero (adding a constant to every key shifts each "
            "query's scores by one constant, which softmax ignores); the stored values are f32 noise (~1e-9). "
            "Compare them with an absolute tolerance, not relative to their own max.",
            "adapter_config.json says init_lora_weights = true (peft records the config, not what we did): lora_B "
            "(and the DoRA magnitude) were overwritten after init; the saved tensors are what counts.",
            "peft writes target_modules from a set and base_model_name_or_path as an absolute path; this script "
            "rewrites adapter_config.json with target_modules sorted and the repo-relative base path.",
        ],
    }
    meta["full"] = make_full(batch)
    meta["lora"] = make_adapter(batch, "lora", use_dora=False)
    meta["dora"] = make_adapter(batch, "dora", use_dora=True)
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    if not args.no_check:
        for name in ("lora", "dora"):
            check_roundtrip(name)


if __name__ == "__main__":
    main()
