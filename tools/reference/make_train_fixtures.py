#!/usr/bin/env python
"""Reference fixtures for the idefics-rs training primitives.

What it writes (all small, committed under tests/fixtures/train/):
  <case>/base.safetensors           the frozen base weights, named as in the base model's state_dict
  <case>/adapter_config.json        peft's own files, written by `save_pretrained`
  <case>/adapter_model.safetensors
  <case>/reference.safetensors      input x, target, output, loss, merged weights, and the gradient of every
                                    adapter parameter (keyed "grad.<peft key>") and of the input ("grad.x")
  ce.safetensors                    causal-LM cross-entropy (transformers ForCausalLMLoss) values and grads
  adamw.safetensors                 three torch.optim.AdamW steps with param groups and grad-norm clipping
  schedules.json                    transformers LR-schedule factors per step
  meta.json                         library versions

The loss of the adapter cases is mean((out - target)^2) over all elements.

Usage:
  /work/.venv/bin/python tools/reference/make_train_fixtures.py            # (re)write the fixtures
  /work/.venv/bin/python tools/reference/make_train_fixtures.py --verify-rust DIR
      DIR/<case>/ holds an adapter written by idefics-rs (adapter_config.json, adapter_model.safetensors) and
      rust_out.safetensors ("x", "out"); peft loads the adapter onto the fixture's base model and the outputs
      are compared.
"""

import argparse
import json
import math
import os
import sys

import peft
import safetensors
import safetensors.torch
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers import optimization as sched

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "train")


class OneLinear(torch.nn.Module):
    """A single nn.Linear at module path "proj"."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 12, bias=True)

    def forward(self, x):
        return self.proj(x)


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 24, bias=True)
        self.fc2 = torch.nn.Linear(24, 16, bias=False)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class ToyMlp(torch.nn.Module):
    """Two layers at nested paths "mlp.fc1" / "mlp.fc2", so adapter keys contain dots inside the module path."""

    def __init__(self):
        super().__init__()
        self.mlp = Mlp()

    def forward(self, x):
        return self.mlp(x)


CASES = {
    # name: (model class, LoraConfig kwargs)
    "linear_lora": (OneLinear, dict(r=4, lora_alpha=8, target_modules=["proj"])),
    "linear_dora": (OneLinear, dict(r=4, lora_alpha=8, target_modules=["proj"], use_dora=True)),
    "mlp_dora_rslora": (
        ToyMlp,
        dict(r=4, lora_alpha=6, target_modules=["fc1", "fc2"], use_dora=True, use_rslora=True),
    ),
}


def adapter_key(param_name):
    """named_parameters() name -> the key peft writes in adapter_model.safetensors."""
    key = param_name.replace(".default", "")
    if key.endswith("lora_magnitude_vector.weight"):
        key = key[: -len(".weight")]
    return key


def build_base(cls, seed):
    torch.manual_seed(seed)
    return cls().float()


def make_case(out_dir, name, cls, lora_kwargs, seed):
    case_dir = os.path.join(out_dir, name)
    os.makedirs(case_dir, exist_ok=True)
    base = build_base(cls, seed)
    base_state = {k: v.detach().clone().contiguous() for k, v in base.state_dict().items()}
    safetensors.torch.save_file(base_state, os.path.join(case_dir, "base.safetensors"))

    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, 3, 16, generator=gen)
    with torch.no_grad():
        out_base = base(x).clone()

    torch.manual_seed(seed + 2)  # lora_A's kaiming init draws from the global generator
    model = get_peft_model(base, LoraConfig(**lora_kwargs))
    # Non-zero lora_B (peft initialises it to zero) so the adapter path and its gradients are not trivial; for DoRA,
    # a magnitude that is not the effective weight's norm, so m / ||W + sBA|| != 1.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        for module in model.modules():
            if isinstance(module, peft.tuners.lora.Linear) and module.lora_magnitude_vector:
                w = module.base_layer.weight
                delta = module.get_delta_weight("default")
                norm = torch.linalg.norm(w + delta, dim=1)
                mag = module.lora_magnitude_vector["default"].weight
                mag.copy_(norm * (1.0 + 0.2 * torch.randn(mag.shape, generator=gen)))
    model.save_pretrained(case_dir)
    readme = os.path.join(case_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)

    target = torch.randn(out_base.shape, generator=gen)
    xg = x.clone().requires_grad_(True)
    model.train()
    out = model(xg)
    loss = ((out - target) ** 2).mean()
    loss.backward()

    ref = {
        "x": x,
        "target": target,
        "out": out.detach(),
        "out_base": out_base,
        "loss": loss.detach().reshape(1),
        "grad.x": xg.grad,
    }
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
            ref["grad." + adapter_key(pname)] = p.grad.detach().clone()

    # peft's own merge, for our merge in f32 to match.
    merged = model.merge_and_unload()
    for k, v in merged.state_dict().items():
        ref["merged." + k] = v.detach().clone()
    with torch.no_grad():
        ref["out_merged"] = merged(x)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in ref.items()}, os.path.join(case_dir, "reference.safetensors")
    )
    print(f"{name}: loss {loss.item():.6f}, {len(ref)} tensors")


def make_ce(out_dir):
    gen = torch.Generator().manual_seed(7)
    vocab = 11
    logits = (3.0 * torch.randn(2, 6, vocab, generator=gen)).requires_grad_(True)
    labels = torch.randint(0, vocab, (2, 6), generator=gen)
    # Prompt tokens and padding masked with -100 as a chat collator does.
    labels[0, :2] = -100
    labels[1, 4:] = -100
    loss = ForCausalLMLoss(logits, labels, vocab_size=vocab)
    loss.backward()
    n_items = int((labels[..., 1:] != -100).sum())

    logits_bf16 = logits.detach().bfloat16().requires_grad_(True)
    loss_bf16 = ForCausalLMLoss(logits_bf16, labels, vocab_size=vocab)
    loss_bf16.backward()

    safetensors.torch.save_file(
        {
            "logits": logits.detach(),
            "labels": labels,
            "loss": loss.detach().reshape(1),
            "n_items": torch.tensor([n_items], dtype=torch.int64),
            "grad.logits": logits.grad,
            "logits_bf16": logits_bf16.detach(),
            "loss_bf16": loss_bf16.detach().reshape(1),
            "grad.logits_bf16": logits_bf16.grad,
        },
        os.path.join(out_dir, "ce.safetensors"),
    )
    print(f"ce: loss {loss.item():.6f} over {n_items} tokens")


def make_adamw(out_dir):
    gen = torch.Generator().manual_seed(11)
    names = ["layer.weight", "layer.bias", "norm.weight"]
    shapes = [(4, 3), (4,), (3,)]
    params = {n: torch.nn.Parameter(torch.randn(s, generator=gen)) for n, s in zip(names, shapes)}
    decay = [params["layer.weight"]]
    no_decay = [params["layer.bias"], params["norm.weight"]]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    out = {f"init.{n}": p.detach().clone() for n, p in params.items()}
    lrs = [1e-2, 5e-3, 2e-2]
    scales = [3.0, 0.05, 1.0]  # grad-norm above, below and around max_norm
    max_norm = 1.0
    for step, (lr, scale) in enumerate(zip(lrs, scales)):
        for n, p in params.items():
            g = scale * torch.randn(p.shape, generator=gen)
            out[f"grad{step}.{n}"] = g.clone()
            p.grad = g
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
        out[f"norm{step}"] = norm.detach().reshape(1)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        for n, p in params.items():
            out[f"after{step}.{n}"] = p.detach().clone()
    out["lrs"] = torch.tensor(lrs, dtype=torch.float64)
    out["max_norm"] = torch.tensor([max_norm], dtype=torch.float64)
    safetensors.torch.save_file(out, os.path.join(out_dir, "adamw.safetensors"))
    print("adamw: 3 steps")


def make_schedules(out_dir):
    warmup, total = 3, 12
    steps = list(range(0, total + 2))
    rows = {
        "constant": [sched._get_constant_schedule_with_warmup_lr_lambda(s, num_warmup_steps=warmup) for s in steps],
        "linear": [
            sched._get_linear_schedule_with_warmup_lr_lambda(s, num_warmup_steps=warmup, num_training_steps=total)
            for s in steps
        ],
        "cosine": [
            sched._get_cosine_schedule_with_warmup_lr_lambda(
                s, num_warmup_steps=warmup, num_training_steps=total, num_cycles=0.5
            )
            for s in steps
        ],
        "cosine_min_0.1": [
            sched._get_cosine_schedule_with_warmup_lr_lambda(
                s, num_warmup_steps=warmup, num_training_steps=total, num_cycles=0.5, min_lr_rate=0.1
            )
            for s in steps
        ],
    }
    with open(os.path.join(out_dir, "schedules.json"), "w") as f:
        json.dump({"warmup_steps": warmup, "total_steps": total, "steps": steps, "factors": rows}, f, indent=1)
    print("schedules: 4")


def verify_rust(dir_):
    """Load adapters written by idefics-rs with peft and compare outputs."""
    ok = True
    for name, (cls, _kwargs) in CASES.items():
        case_dir = os.path.join(dir_, name)
        if not os.path.isdir(case_dir):
            print(f"{name}: missing in {dir_}")
            ok = False
            continue
        base = build_base(cls, 0)
        state = safetensors.torch.load_file(os.path.join(DEFAULT_OUT, name, "base.safetensors"))
        base.load_state_dict(state)
        model = PeftModel.from_pretrained(base, case_dir)
        cfg = model.peft_config["default"]
        rust = safetensors.torch.load_file(os.path.join(case_dir, "rust_out.safetensors"))
        with torch.no_grad():
            out = model(rust["x"])
        diff = (out - rust["out"]).abs().max().item()
        rel = diff / rust["out"].abs().max().item()
        good = rel <= 1e-5
        ok &= good
        print(
            f"{name}: use_dora={cfg.use_dora} r={cfg.r} alpha={cfg.lora_alpha} rslora={cfg.use_rslora} "
            f"targets={sorted(cfg.target_modules)}: max|peft-rust| {diff:.3e} (rel {rel:.3e}) "
            f"{'OK' if good else 'MISMATCH'}"
        )
    print("ALL OK" if ok else "FAILED")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--verify-rust")
    args = ap.parse_args()
    if args.verify_rust:
        sys.exit(verify_rust(args.verify_rust))
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    for name, (cls, kwargs) in CASES.items():
        make_case(args.out, name, cls, kwargs, seed=0)
    make_ce(args.out)
    make_adamw(args.out)
    make_schedules(args.out)
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(
            {
                "script": "tools/reference/make_train_fixtures.py",
                "torch": torch.__version__,
                "peft": peft.__version__,
                "transformers": transformers.__version__,
                "safetensors": safetensors.__version__,
                "adapter_loss": "mean((out - target)^2)",
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
