"""SigLIP sigmoid loss reference (Zhai et al. 2023, Algorithm 1) on fixed embeddings.

Writes tests/fixtures/siglip/sigmoid_loss.json: inputs, the loss and its gradients w.r.t. the embeddings,
t' and b, computed in float64 torch. Run: /work/.venv/bin/python tools/reference/siglip_loss.py
"""
import json
import pathlib

import torch
import torch.nn.functional as F


def loss_fn(img, txt, t_prime, b):
    zimg = F.normalize(img, dim=-1)
    ztxt = F.normalize(txt, dim=-1)
    logits = zimg @ ztxt.T * t_prime.exp() + b
    n = img.shape[0]
    labels = 2 * torch.eye(n, dtype=img.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / n


def case(seed, n, e, t_prime, b):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, e, generator=g, dtype=torch.float64).requires_grad_()
    txt = (img.detach() * 0.5 + torch.randn(n, e, generator=g, dtype=torch.float64)).requires_grad_()
    tp = torch.tensor(t_prime, dtype=torch.float64, requires_grad=True)
    bb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(img, txt, tp, bb)
    loss.backward()
    return {
        "img_emb": img.detach().tolist(), "txt_emb": txt.detach().tolist(),
        "t_prime": t_prime, "bias": b, "loss": loss.item(),
        "grad_img": img.grad.tolist(), "grad_txt": txt.grad.tolist(),
        "grad_t_prime": tp.grad.item(), "grad_bias": bb.grad.item(),
    }


out = {
    "versions": {"torch": torch.__version__},
    "formula": "-sum(logsigmoid((2I-1) * (exp(t') * normalize(img) @ normalize(txt).T + b))) / n",
    "cases": [
        case(0, 4, 6, float(torch.log(torch.tensor(10.0))), -10.0),
        case(1, 5, 3, 2.0, 1.5),
        case(2, 3, 8, 4.0, -3.0),
    ],
}
path = pathlib.Path(__file__).resolve().parents[2] / "tests/fixtures/siglip/sigmoid_loss.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print("wrote", path, [c["loss"] for c in out["cases"]])
