#!/usr/bin/env python
"""Reference fixtures for ONE training step of Idefics3 and SmolVLM: loss and gradients from transformers (+ peft),
the Idefics3 / SmolVLM counterpart of make_train_step_fixtures.py (Idefics2).

Base models (referenced, not copied): the tiny random checkpoints of tests/fixtures/idefics3/ that the inference
parity tests use:
  idefics3_llama3  model_type idefics3, untied head, Llama-3 rope scaling, attention and MLP biases, head_dim 12 != 40/4
  smolvlm_tied     model_type smolvlm, tied head (not stored), linear rope scaling, 4.x config layout, bf16 weights
The batch of each case is its inputs.safetensors with the left-padded rows moved to right padding (no position_ids:
transformers then uses arange(T), the positions a trainer sees), plus labels. Everything runs on CPU, float32,
eager attention, one thread, model.train() (every dropout is 0, so train and eval give the same loss; checked).

What it writes under tests/fixtures/idefics3/train_step/<case>/:
  batch.safetensors        input_ids, attention_mask, pixel_values, pixel_attention_mask, labels (-100 on the first
                           PROMPT_TOKENS tokens of each row, on <image> tokens, on padding)
  full/loss.safetensors    "loss": f32 [] with every parameter trainable
  full/grads.safetensors   d loss / d p for every parameter, keyed by its checkpoint name (a tied head has no key
                           of its own: its gradient is part of model.text_model.embed_tokens.weight's)
  lora/ dora/              adapter/ (peft save_pretrained), loss.safetensors, logits.safetensors, grads.safetensors
                           keyed by the adapter file's keys
  meta.json                versions, seeds, targets, adapted module paths

Usage:
  /work/.venv/bin/python tools/reference/make_idefics3_train_step_fixtures.py
Deterministic: rerunning rewrites the same values.
"""

import copy
import json
import os
import shutil

import peft
import PIL
import safetensors
import safetensors.torch
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "idefics3", "train_step")
CASES = {
    "idefics3_llama3": Idefics3ForConditionalGeneration,
    "smolvlm_tied": SmolVLMForConditionalGeneration,
}

PAD_ID = 0
IMAGE_TOKEN_ID = 321
PROMPT_TOKENS = 3

# Every nn.Linear of the vision tower, the connector (modality_projection.proj) and the text model; not lm_head,
# not the patch embedding (Conv2d). peft suffix matches: "proj" matches only "...modality_projection.proj".
TARGET_MODULES = [
    "q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2", "proj",
]
LORA_KWARGS = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGET_MODULES, bias="none")
SEED_LORA_A = 1234
SEED_ADAPTER = 4321


def rel(*parts):
    return os.path.join(*parts)


def base_rel(case):
    return rel("tests", "fixtures", "idefics3", case, "model")


def load_base(case):
    cls = CASES[case]
    model = cls.from_pretrained(os.path.join(ROOT, base_rel(case)), dtype=torch.float32, attn_implementation="eager")
    model.train()
    return model


def make_batch(case):
    src = safetensors.torch.load_file(os.path.join(ROOT, "tests", "fixtures", "idefics3", case, "inputs.safetensors"))
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
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")}


def manual_loss(logits, labels):
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    logp = torch.log_softmax(logits.double(), dim=-1)
    keep = shifted != -100
    nll = -logp[keep].gather(-1, shifted[keep].unsqueeze(-1)).squeeze(-1)
    return nll.mean(), int(keep.sum())


def step(model, batch):
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


def directional_check(model, grads, batch, eps=1e-3):
    """Central difference along a random direction over all parameters (f64 copy) against sum(grad * direction):
    tells a mean from a sum or a wrong shift; precision rests on transformers' autograd (see the Idefics2 script)."""
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
    r = abs(numeric - analytic) / abs(numeric)
    print(f"  directional derivative: central difference {numeric:.6f}, from grads {analytic:.6f} (rel {r:.1e})")
    assert r < 5e-3, r
    return {"direction_seed": 99, "eps": eps, "central_difference": numeric, "from_grads": analytic, "rel_diff": r}


def make_full(case, batch, out):
    model = load_base(case)
    for p in model.parameters():
        p.requires_grad_(True)
    loss, logits, n = step(model, batch)
    ckpt = os.path.join(ROOT, base_rel(case), "model.safetensors")
    ckpt_keys = set(safetensors.safe_open(ckpt, "pt").keys())
    grads, zero = {}, []
    for name, p in model.named_parameters():
        assert name in ckpt_keys, f"parameter {name} is not a checkpoint key"
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        grads[name] = p.grad
        if p.grad.abs().sum() == 0:
            zero.append(name)
    assert set(grads) == ckpt_keys, ckpt_keys ^ set(grads)
    fd = directional_check(model, grads, batch)
    d = os.path.join(out, "full")
    save(os.path.join(d, "loss.safetensors"), {"loss": loss})
    save(os.path.join(d, "grads.safetensors"), grads)
    print(f"  full: loss {loss.item():.6f} over {n} label tokens, {len(grads)} grads, all-zero: {zero}")
    return {"loss": loss.item(), "n_label_tokens": n, "n_grads": len(grads), "all_zero_grads": zero,
            "tied_head": bool(model.config.tie_word_embeddings), "directional_derivative_check_f64": fd}


def adapter_key(param_name):
    key = param_name.replace(".default", "")
    if key.endswith("lora_magnitude_vector.weight"):
        key = key[: -len(".weight")]
    return key


def make_adapter(case, batch, out, name, use_dora):
    base = load_base(case)
    torch.manual_seed(SEED_LORA_A)
    model = get_peft_model(base, LoraConfig(use_dora=use_dora, **LORA_KWARGS))
    model.train()
    gen = torch.Generator().manual_seed(SEED_ADAPTER)
    adapted = []
    with torch.no_grad():
        for mpath, module in model.named_modules():
            if isinstance(module, peft.tuners.lora.Linear):
                adapted.append(mpath[len("base_model.model."):])
                # peft's zero lora_B would make d loss / d lora_A zero: draw it instead.
                b = module.lora_B["default"].weight
                b.copy_(0.3 * torch.randn(b.shape, generator=gen))
                if use_dora:
                    # A magnitude that is not ||W + s B A||, so that the magnitude path matters.
                    w = module.base_layer.weight
                    norm = torch.linalg.norm(w + module.get_delta_weight("default"), dim=1)
                    mag = module.lora_magnitude_vector["default"].weight
                    mag.copy_(norm * (1.0 + 0.2 * torch.randn(mag.shape, generator=gen)))
    d = os.path.join(out, name)
    adir = os.path.join(d, "adapter")
    if os.path.isdir(adir):
        shutil.rmtree(adir)
    model.save_pretrained(adir)
    readme = os.path.join(adir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    cfg_path = os.path.join(adir, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["base_model_name_or_path"] = base_rel(case)
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
    print(f"  {name}: loss {loss.item():.6f}, {len(adapted)} adapted modules, {len(grads)} grads")
    return {"loss": loss.item(), "n_label_tokens": n, "adapted_modules": adapted, "n_grads": len(grads)}


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    meta = {
        "script": "tools/reference/make_idefics3_train_step_fixtures.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "pillow": PIL.__version__,
            "safetensors": safetensors.__version__,
        },
        "run": "from_pretrained(base, dtype=float32, attn_implementation='eager'), train(), CPU, 1 thread",
        "labels": f"input_ids with -100 on the first {PROMPT_TOKENS} tokens of each row, on <image> "
        f"({IMAGE_TOKEN_ID}) and on padding",
        "loss": "transformers ForCausalLMLoss: shift inside the model, mean over the batch's label tokens",
        "lora_config": {**LORA_KWARGS, "use_dora": "false in lora/, true in dora/"},
        "seeds": {
            "torch.manual_seed before get_peft_model (lora_A kaiming init)": SEED_LORA_A,
            "generator for lora_B = 0.3 * N(0,1) and DoRA magnitude = ||W + s B A|| * (1 + 0.2 * N(0,1))": SEED_ADAPTER,
        },
        "cases": {},
    }
    for case in CASES:
        print(case)
        out = os.path.join(OUT, case)
        os.makedirs(out, exist_ok=True)
        batch = make_batch(case)
        save(os.path.join(out, "batch.safetensors"), batch)
        meta["cases"][case] = {
            "base_model": base_rel(case),
            "full": make_full(case, batch, out),
            "lora": make_adapter(case, batch, out, "lora", use_dora=False),
            "dora": make_adapter(case, batch, out, "dora", use_dora=True),
        }
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump(meta["versions"], f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
