# Shape of single-object images learned end to end through (a) tower mean-pool, (b) connector mean, (c) connector flat.
import argparse, io, random, torch, pyarrow.parquet as pq
from PIL import Image
from transformers import AutoProcessor, Idefics2ForConditionalGeneration
ap = argparse.ArgumentParser(); ap.add_argument('--model', required=True); ap.add_argument('--pairs', required=True)
ap.add_argument('--mode', default='tower'); ap.add_argument('--steps', type=int, default=300); ap.add_argument('--lr', type=float, default=1e-3)
ap.add_argument('--size', type=int, default=112); ap.add_argument('--train', default='vision,connector'); ap.add_argument('--n', type=int, default=3000)
a = ap.parse_args()
torch.manual_seed(0); random.seed(0); torch.set_num_threads(1)
proc = AutoProcessor.from_pretrained(a.model)
m = Idefics2ForConditionalGeneration.from_pretrained(a.model).model
S = ['circle', 'square', 'triangle', 'diamond']
rows = [r for r in pq.read_table(a.pairs).to_pylist() if r['text'].startswith('A large')][:a.n]
pv, ys = [], []
for r in rows:
    w = r['text'].split(); img = Image.open(io.BytesIO(r['image']['bytes'])).convert('RGB').resize((a.size, a.size))
    b = proc.image_processor([[img]], return_tensors='pt', do_resize=False, do_image_splitting=False)
    pv.append(b['pixel_values'][0, 0]); ys.append(S.index(w[3]))
pv = torch.stack(pv); ys = torch.tensor(ys); n = len(rows); te = n // 5
def feats(x):
    h = m.vision_model(pixel_values=x).last_hidden_state
    if a.mode == 'tower': return h.mean(1)
    c = m.connector(h, attention_mask=torch.ones(h.shape[:2], dtype=torch.bool))
    return c.mean(1) if a.mode == 'conn_mean' else c.flatten(1)
with torch.no_grad(): d = feats(pv[:2]).shape[1]
head = torch.nn.Linear(d, 4)
params = list(head.parameters())
for name, p in m.named_parameters():
    on = any(t in name for t in a.train.split(',')) if a.train else False
    p.requires_grad_(on)
    if on: params.append(p)
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
def acc():
    with torch.no_grad(): return (head(feats(pv[:te])).argmax(1) == ys[:te]).float().mean().item()
for step in range(a.steps + 1):
    if step % 100 == 0: print(a.mode, step, f'test acc {acc():.3f}', flush=True)
    if step == a.steps: break
    idx = torch.randint(te, n, (32,))
    loss = torch.nn.functional.cross_entropy(head(feats(pv[idx])), ys[idx]); opt.zero_grad(); loss.backward(); opt.step()
