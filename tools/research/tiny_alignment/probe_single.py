# Frozen-tower linear probe: shape and colour of the single large shape of `basics` pairs ("A large X Y on a plain background.").
import argparse, io, random, torch, pyarrow.parquet as pq
from PIL import Image
from transformers import AutoProcessor, Idefics2ForConditionalGeneration
ap = argparse.ArgumentParser(); ap.add_argument('--model', required=True); ap.add_argument('--pairs', nargs='+', required=True)
ap.add_argument('--steps', type=int, default=300); ap.add_argument('--tune', type=int, default=0, help='steps of tower+head training with the shape label first'); ap.add_argument('--lr', type=float, default=3e-4); ap.add_argument('--size', type=int, default=112, help='images resized to size x size'); a = ap.parse_args()
torch.manual_seed(0); random.seed(0); torch.set_num_threads(2)
proc = AutoProcessor.from_pretrained(a.model); proc.image_processor.do_image_splitting = False
tower = Idefics2ForConditionalGeneration.from_pretrained(a.model).model.vision_model.eval()
C = ['red', 'green', 'blue', 'yellow', 'orange', 'purple']; S = ['circle', 'square', 'triangle', 'diamond']
rows = [r for p in a.pairs for r in pq.read_table(p).to_pylist() if r['text'].startswith('A large')]
pv, ys, yc = [], [], []
for r in rows:
    w = r['text'].split(); img = Image.open(io.BytesIO(r['image']['bytes'])).convert('RGB').resize((a.size, a.size))
    b = proc.image_processor([[img]], return_tensors='pt', do_resize=False)
    pv.append(b['pixel_values'][0, 0]); yc.append(C.index(w[2])); ys.append(S.index(w[3]))
pv = torch.stack(pv); print(pv.shape)
if a.tune:
    te0 = len(rows) // 4; h4 = torch.nn.Linear(tower.config.hidden_size, 4); tower.train()
    opt = torch.optim.AdamW(list(tower.parameters()) + list(h4.parameters()), lr=a.lr)
    yst = torch.tensor(ys)
    for step in range(a.tune):
        idx = torch.randint(te0, len(rows), (32,))
        out = h4(tower(pixel_values=pv[idx]).last_hidden_state.mean(1))
        loss = torch.nn.functional.cross_entropy(out, yst[idx]); opt.zero_grad(); loss.backward(); opt.step()
        if step % 50 == 0: print(step, loss.item(), flush=True)
    tower.eval()
feats = []
with torch.no_grad():
    for i in range(0, len(rows), 64): feats.append(tower(pixel_values=pv[i:i+64]).last_hidden_state.mean(1))
feats = list(torch.cat(feats))
X = torch.stack(feats); X = (X - X.mean(0)) / (X.std(0) + 1e-6); ys = torch.tensor(ys); yc = torch.tensor(yc)
n = len(rows); te = n // 4
for name, y, k in [('shape', ys, 4), ('colour', yc, 6)]:
    head = torch.nn.Linear(X.shape[1], k); opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(a.steps):
        opt.zero_grad(); loss = torch.nn.functional.cross_entropy(head(X[te:]), y[te:]); loss.backward(); opt.step()
    acc = (head(X[:te]).argmax(1) == y[:te]).float().mean().item()
    maj = max((y[:te] == c).float().mean().item() for c in range(k))
    print(f'{name}: test acc {acc:.3f} (majority {maj:.3f}, {n - te} train / {te} test)')
