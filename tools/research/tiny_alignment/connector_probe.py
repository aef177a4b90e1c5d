# Shape of the single-object images from the tower (mean or max over patches) or the connector: learned end to end with the shape label, or (--train none) a linear probe on frozen features.
import argparse, io, random, torch, pyarrow.parquet as pq
from PIL import Image
from transformers import AutoProcessor, Idefics2ForConditionalGeneration
ap = argparse.ArgumentParser(); ap.add_argument('--model', required=True); ap.add_argument('--pairs', required=True)
ap.add_argument('--mode', default='tower'); ap.add_argument('--steps', type=int, default=300); ap.add_argument('--lr', type=float, default=1e-3)
ap.add_argument('--size', type=int, default=112); ap.add_argument('--pool', default='mean', help='tower mode: mean or max over the patches'); ap.add_argument('--train', default='vision,connector'); ap.add_argument('--n', type=int, default=3000); ap.add_argument('--qk-scale', type=float, default=1.0, help='multiply the perceiver q/k projections (sharper attention from the start)')
a = ap.parse_args()
torch.manual_seed(0); random.seed(0); torch.set_num_threads(1)
proc = AutoProcessor.from_pretrained(a.model)
m = Idefics2ForConditionalGeneration.from_pretrained(a.model).model
with torch.no_grad():
    for layer in m.connector.perceiver_resampler.layers:
        layer.self_attn.q_proj.weight.mul_(a.qk_scale); layer.self_attn.k_proj.weight.mul_(a.qk_scale)
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
    if a.mode == 'tower': return h.mean(1) if a.pool == 'mean' else h.max(1).values
    c = m.connector(h, attention_mask=torch.ones(h.shape[:2], dtype=torch.bool))
    return c.mean(1) if a.mode == 'conn_mean' else c.flatten(1)
with torch.no_grad(): d = feats(pv[:2]).shape[1]
head = torch.nn.Linear(d, 4)
params = list(head.parameters())
for name, p in m.named_parameters():
    on = any(t in name for t in a.train.split(',')) if a.train not in ('', 'none') else False
    p.requires_grad_(on)
    if on: params.append(p)
if len(params) == 2:  # nothing of the model trains: a linear probe on standardised frozen features
    with torch.no_grad(): X = torch.cat([feats(pv[i:i + 64]) for i in range(0, n, 64)])
    X = (X - X[te:].mean(0)) / (X[te:].std(0) + 1e-6)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for step in range(a.steps):
        opt.zero_grad(); torch.nn.functional.cross_entropy(head(X[te:]), ys[te:]).backward(); opt.step()
    with torch.no_grad(): print(a.mode, a.pool, 'frozen linear probe: test acc', f'{(head(X[:te]).argmax(1) == ys[:te]).float().mean().item():.3f}')
    raise SystemExit
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
def acc():
    with torch.no_grad(): return (head(feats(pv[:te])).argmax(1) == ys[:te]).float().mean().item()
for step in range(a.steps + 1):
    if step % 100 == 0: print(a.mode, step, f'test acc {acc():.3f}', flush=True)
    if step == a.steps: break
    idx = torch.randint(te, n, (32,))
    loss = torch.nn.functional.cross_entropy(head(feats(pv[idx])), ys[idx]); opt.zero_grad(); loss.backward(); opt.step()
