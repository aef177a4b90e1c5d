"""transformers + peft side of `idefics bench-train`: the same batch (written by `idefics bench-train
--write-batch`), the same plan (full: every parameter; lora / dora: peft all-linear minus the head and the conv
patch embedding, r, alpha = 2r), AdamW, clip 1.0; one untimed warm-up step, then the median step time and the
process's peak RSS. Prints one JSON line like the Rust side.

    python tools/bench/bench_train_torch.py --model DIR --batch batch.safetensors --mode lora --steps 3
"""

import argparse
import json
import resource
import time

import torch
from safetensors.torch import load_file
from transformers import Idefics2ForConditionalGeneration


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", required=True)
    ap.add_argument("--mode", choices=["full", "lora", "dora"], required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = Idefics2ForConditionalGeneration.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager"
    )
    load_s = time.time() - t0
    rss_loaded = rss_mb()
    if args.mode != "full":
        from peft import LoraConfig, get_peft_model

        names = ["q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2"]
        cfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=names,
                         use_dora=args.mode == "dora")
        model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    b = load_file(args.batch)
    inputs = dict(
        input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=b["pixel_values"],
        pixel_attention_mask=b["pixel_attention_mask"].bool(), labels=b["labels"],
    )

    def step():
        t = time.time()
        opt.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return time.time() - t, loss.item()

    step()
    times, losses = [], []
    for _ in range(args.steps):
        dt, l = step()
        times.append(dt)
        losses.append(l)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times_sorted = sorted(times)
    print(json.dumps({
        "impl": "transformers+peft", "mode": args.mode, "trainable_params": n_trainable, "load_s": load_s,
        "step_s_median": times_sorted[len(times) // 2], "step_s_all": times, "loss": losses,
        "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
