# Direct-label shape learning speed of a random-init Idefics2 vision tower, patch size P, image size S.
import argparse, io, random, torch, pyarrow.parquet as pq, numpy as np
from PIL import Image
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer
from transformers.models.idefics2.configuration_idefics2 import Idefics2VisionConfig
ap = argparse.ArgumentParser(); ap.add_argument('--pairs', required=True); ap.add_argument('--patch', type=int, default=16)
ap.add_argument('--size', type=int, default=112); ap.add_argument('--steps', type=int, default=400); ap.add_argument('--lr', type=float, default=1e-3)
ap.add_argument('--n', type=int, default=3000); ap.add_argument('--pool', default='mean')
ap.add_argument('--layers', type=int, default=4); ap.add_argument('--hidden', type=int, default=128); a = ap.parse_args()
torch.manual_seed(0); random.seed(0); torch.set_num_threads(1)
cfg = Idefics2VisionConfig(hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=a.layers, num_attention_heads=4, patch_size=a.patch, image_size=224)
tower = Idefics2VisionTransformer(cfg)
S = ['circle', 'square', 'triangle', 'diamond']
rows = [r for r in pq.read_table(a.pairs).to_pylist() if r['text'].startswith('A large')][:a.n]
pv, ys = [], []
for r in rows:
    img = Image.open(io.BytesIO(r['image']['bytes'])).convert('RGB').resize((a.size, a.size), Image.BILINEAR)
    x = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 127.5 - 1
    pv.append(x); ys.append(S.index(r['text'].split()[3]))
pv = torch.stack(pv); ys = torch.tensor(ys); n = len(rows); te = n // 5
head = torch.nn.Linear(a.hidden, 4)
opt = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=a.lr, weight_decay=0.01)
def f(x):
    h = tower(pixel_values=x).last_hidden_state
    return h.mean(1) if a.pool == 'mean' else h.max(1).values
def acc():
    tower.eval()
    with torch.no_grad(): r = (head(f(pv[:te])).argmax(1) == ys[:te]).float().mean().item()
    tower.train(); return r
import time; t0 = time.time()
for step in range(a.steps + 1):
    if step % 100 == 0: print(f'patch {a.patch} size {a.size} {a.layers}x{a.hidden} {a.pool} lr {a.lr} step {step} test acc {acc():.3f} ({time.time()-t0:.0f}s)', flush=True)
    if step == a.steps: break
    idx = torch.randint(te, n, (32,))
    loss = torch.nn.functional.cross_entropy(head(f(pv[idx])), ys[idx]); opt.zero_grad(); loss.backward(); opt.step()
