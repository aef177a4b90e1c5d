# Exploration only: which stage-1 settings let the image reach the caption (torch, on our assembled checkpoint).
import sys, io, random, time, torch, pyarrow.parquet as pq, argparse
from PIL import Image
from transformers import AutoProcessor, Idefics2ForConditionalGeneration
ap = argparse.ArgumentParser()
ap.add_argument('--model', required=True); ap.add_argument('--lr', type=float, default=1e-3)
ap.add_argument('--steps', type=int, default=300); ap.add_argument('--bs', type=int, default=8)
ap.add_argument('--train', default='connector,text,vision'); ap.add_argument('--conn_lr', type=float, default=None)
ap.add_argument('--shapes_only', action='store_true'); ap.add_argument('--solid', action='store_true'); ap.add_argument('--freeze', default=''); ap.add_argument('--norm_w', type=float, default=None); ap.add_argument('--wd', type=float, default=0.1); ap.add_argument('--single', type=int, default=0)
ap.add_argument('--zero_latents', action='store_true')
a = ap.parse_args()
torch.manual_seed(0); random.seed(0); torch.set_num_threads(2)
proc = AutoProcessor.from_pretrained(a.model); proc.image_processor.do_image_splitting = False
model = Idefics2ForConditionalGeneration.from_pretrained(a.model)
tok = proc.tokenizer
if a.zero_latents:
    with torch.no_grad(): model.model.connector.perceiver_resampler.latents.zero_()
if a.norm_w is not None:
    with torch.no_grad(): model.model.connector.perceiver_resampler.norm.weight.fill_(a.norm_w)
IMG = '<fake_token_around_image>' + '<image>' * 16 + '<fake_token_around_image>'
COLS = {'red': (220, 30, 30), 'green': (30, 180, 30), 'blue': (30, 30, 220), 'yellow': (240, 220, 20), 'purple': (150, 40, 180), 'orange': (250, 140, 0)}
def solid_rows(n, seed):
    rng = random.Random(seed); rows = []
    for _ in range(n):
        c = rng.choice(list(COLS)); im = Image.new('RGB', (rng.randint(40, 224), rng.randint(40, 224)), COLS[c])
        bio = io.BytesIO(); im.save(bio, 'PNG'); rows.append({'image': {'bytes': bio.getvalue()}, 'text': 'a plain ' + c + ' image.'})
    return rows
from PIL import ImageDraw
def single_rows(n, seed):
    rng = random.Random(seed); rows = []
    for _ in range(n):
        W, H = rng.randint(100, 224), rng.randint(100, 224)
        bg = (235 + rng.randint(-10, 10), 240 + rng.randint(-10, 10), 230 + rng.randint(-10, 10))
        im = Image.new('RGB', (W, H), bg); d = ImageDraw.Draw(im)
        c = rng.choice(list(COLS)); sh = rng.choice(['circle', 'square', 'triangle', 'diamond'])
        big = rng.random() < 0.5; r = int(min(W, H) * (0.22 if big else 0.1))
        cx, cy = rng.randint(r, W - r), rng.randint(r, H - r)
        if sh == 'circle': d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLS[c])
        elif sh == 'square': d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=COLS[c])
        elif sh == 'triangle': d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLS[c])
        else: d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=COLS[c])
        bio = io.BytesIO(); im.save(bio, 'PNG')
        rows.append({'image': {'bytes': bio.getvalue()}, 'text': '1 shape on a plain background: a %s %s %s.' % ('large' if big else 'small', c, sh)})
    return rows
def load(p):
    if a.single: 
        rows = single_rows(a.single if 'train' in p else 48, 1 if 'train' in p else 2)
    else:
      rows = pq.read_table(p).to_pylist() if not a.solid else solid_rows(400 if 'train' in p else 48, hash(p) % 1000)
    if a.shapes_only and not a.single: rows = [r for r in rows if ' shape' in r['text'].split(':')[0]]
    out = []
    for r in rows:
        im = Image.open(io.BytesIO(r['image']['bytes'])).convert('RGB')
        b = proc.image_processor([[im]], return_tensors='pt')
        pre = [tok.bos_token_id] + tok(IMG, add_special_tokens=False).input_ids
        ids = pre + tok(r['text'], add_special_tokens=False).input_ids + [tok.eos_token_id]
        out.append((b['pixel_values'][0, 0], ids, len(pre)))
    return out
train = load('runs/tiny/data/train/pairs.parquet'); test = load('runs/tiny/data/heldout/pairs.parquet')[:48]
print(len(train), 'train pairs', flush=True)
def batch(items, shuffle_images=False):
    L = max(len(i[1]) for i in items); H = max(i[0].shape[1] for i in items); W = max(i[0].shape[2] for i in items)
    ids = torch.zeros(len(items), L, dtype=torch.long); lab = torch.full((len(items), L), -100); am = torch.zeros(len(items), L, dtype=torch.long)
    pv = torch.zeros(len(items), 1, 3, H, W); pm = torch.zeros(len(items), 1, H, W, dtype=torch.bool)
    imgs = [i[0] for i in items]
    if shuffle_images: imgs = imgs[3:] + imgs[:3]
    for k, (im, s, npre) in enumerate(items):
        ids[k, :len(s)] = torch.tensor(s); am[k, :len(s)] = 1; lab[k, npre:len(s)] = torch.tensor(s[npre:])
    for k, im in enumerate(imgs):
        pv[k, 0, :, :im.shape[1], :im.shape[2]] = im; pm[k, 0, :im.shape[1], :im.shape[2]] = True
    return dict(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_attention_mask=pm, labels=lab)
groups = {'connector': 'model.connector.', 'text': 'model.text_model.', 'vision': 'model.vision_model.', 'head': 'lm_head'}
train_parts = a.train.split(',')
params = []
for n, p in model.named_parameters():
    on = any(n.startswith(groups[g]) for g in train_parts) and not (a.freeze and any(f in n for f in a.freeze.split(',')))
    p.requires_grad_(on)
    if on: params.append((n, p))
pg = [{'params': [p for n, p in params if not n.startswith('model.connector.')], 'lr': a.lr},
      {'params': [p for n, p in params if n.startswith('model.connector.')], 'lr': a.conn_lr or a.lr}]
opt = torch.optim.AdamW(pg, weight_decay=a.wd)
def first_tok_loss(b):
    out = model(**b); lg = out.logits
    ls = []
    for k in range(lg.shape[0]):
        pos = (b['labels'][k] != -100).nonzero()[0].item()
        ls.append(torch.nn.functional.cross_entropy(lg[k, pos - 1][None], b['labels'][k, pos][None]).item())
    return out.loss.item(), sum(ls) / len(ls)
def conn_stats():
    b = batch(test[:8])
    f = model.model.get_image_features(pixel_values=b['pixel_values'], pixel_attention_mask=b['pixel_attention_mask'])
    f = f if torch.is_tensor(f) else (f.pooler_output if hasattr(f, 'pooler_output') else f[0])
    f = f if torch.is_tensor(f) else f[0]
    f = f.reshape(8, -1)
    pv = b['pixel_values'][:, 0]
    h = model.model.vision_model(pixel_values=pv).last_hidden_state
    c = model.model.connector.modality_projection(h)
    return 'conn across-image rel std %.4f  vision %.4f  ctx %.4f ctx rms %.4f' % ((f - f.mean(0)).norm() / f.norm(), (h.mean(1) - h.mean((0,1))).norm() / h.mean(1).norm(), (c.mean(1) - c.mean((0,1))).norm() / c.mean(1).norm(), c.pow(2).mean().sqrt())
def evaluate():
    model.eval(); r = s = fr = fs = 0.0
    with torch.no_grad(): print('   ', conn_stats())
    with torch.no_grad():
        for i in range(0, 48, 16):
            a1, b1 = first_tok_loss(batch(test[i:i+16])); a2, b2 = first_tok_loss(batch(test[i:i+16], True))
            r += a1; s += a2; fr += b1; fs += b2
    print(f'   first token (count) loss right {fr/3:.3f} shuffled {fs/3:.3f}')
    model.train(); return r / 3, s / 3
t0 = time.time()
for step in range(a.steps + 1):
    if step % 50 == 0:
        r, s = evaluate(); print(f'step {step} right {r:.4f} shuffled {s:.4f} gap {s-r:.4f} ({time.time()-t0:.0f}s)', flush=True)
    if step == a.steps: break
    lr_scale = min(1.0, (step + 1) / 20)
    for g, base in zip(opt.param_groups, [a.lr, a.conn_lr or a.lr]): g['lr'] = base * lr_scale
    loss = model(**batch(random.sample(train, a.bs))).loss
    loss.backward(); torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0); opt.step(); opt.zero_grad()
import os
if os.environ.get('SAVE'):
    model.save_pretrained(os.environ['SAVE']); proc.save_pretrained(os.environ['SAVE'])
