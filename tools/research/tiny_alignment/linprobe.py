import sys, io, re, torch, pyarrow.parquet as pq
from PIL import Image
from transformers import AutoProcessor, Idefics2ForConditionalGeneration
m = sys.argv[1]
proc = AutoProcessor.from_pretrained(m); proc.image_processor.do_image_splitting = False
model = Idefics2ForConditionalGeneration.from_pretrained(m).eval()
rows = [r for r in pq.read_table('runs/tiny/data/train/pairs.parquet').to_pylist() if ' shape' in r['text'].split(':')[0]][:500]
cols = ['red', 'green', 'blue', 'yellow', 'orange', 'purple']
X1, X2, X0, Y = [], [], [], []
with torch.no_grad():
    for r in rows:
        im = Image.open(io.BytesIO(r['image']['bytes'])).convert('RGB')
        b = proc.image_processor([[im]], return_tensors='pt')
        pv = b['pixel_values'][0]
        h = model.model.vision_model(pixel_values=pv).last_hidden_state
        f = model.model.get_image_features(pixel_values=b['pixel_values'], pixel_attention_mask=b['pixel_attention_mask'])
        f = f if torch.is_tensor(f) else (f.pooler_output if hasattr(f, 'pooler_output') else f[0])
        f = f if torch.is_tensor(f) else f[0]
        X0.append(pv.mean((2, 3)).reshape(-1)); X1.append(h.mean(1)[0]); X2.append(f.reshape(-1, f.shape[-1]).mean(0))
        n = int(r['text'].split()[0]); t = r['text'].split(':', 1)[1]
        Y.append([n] + [float(c in t) for c in cols])
Y = torch.tensor(Y)
def probe(X, name):
    X = torch.stack(X); X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    X = torch.cat([X, torch.ones(len(X), 1)], 1)
    tr, te = slice(0, 350), slice(350, None)
    W = torch.linalg.solve(X[tr].T @ X[tr] + 1.0 * torch.eye(X.shape[1]), X[tr].T @ Y[tr])
    P = X[te] @ W
    r2 = 1 - ((P - Y[te]) ** 2).sum(0) / ((Y[te] - Y[te].mean(0)) ** 2).sum(0)
    print('%-10s R2 count %.2f  colours %s' % (name, r2[0], ' '.join('%.2f' % v for v in r2[1:])))
print(len(rows), 'shape images')
probe(X0, 'pixels'); probe(X1, 'vision'); probe(X2, 'connector')
