# Exploration only: how much about the shapes scenes can the tiny vision tower tell, and how fast can it learn it?
# A linear head on the mean-pooled tower output predicts which colours and which shapes are present and how many
# shapes there are, from the captions of `idefics data synth` pairs. --frozen trains the head only (what the
# pretrained tower already encodes); otherwise the tower is trained too (how fast it can learn with direct labels).
# --cnn swaps the tower for a one-layer patch CNN with max pooling, as a yardstick.
import argparse, io, random, time, torch, pyarrow.parquet as pq
from PIL import Image
from transformers import AutoProcessor, Idefics2ForConditionalGeneration

ap = argparse.ArgumentParser()
ap.add_argument('--model', required=True)
ap.add_argument('--pairs', nargs='+', required=True, help='pairs.parquet files of idefics data synth')
ap.add_argument('--steps', type=int, default=600); ap.add_argument('--lr', type=float, default=3e-4)
ap.add_argument('--frozen', action='store_true'); ap.add_argument('--cnn', action='store_true')
ap.add_argument('--threads', type=int, default=2)
ap.add_argument('--save', help='write the model with the trained tower here (for torch_sft.py)')
a = ap.parse_args()
torch.manual_seed(0); random.seed(0); torch.set_num_threads(a.threads)
proc = AutoProcessor.from_pretrained(a.model); proc.image_processor.do_image_splitting = False
full_model = Idefics2ForConditionalGeneration.from_pretrained(a.model)
tower = full_model.model.vision_model
patch = tower.config.patch_size
COLOURS = ['red', 'green', 'blue', 'yellow', 'orange', 'purple']; SHAPES = ['circle', 'square', 'triangle', 'diamond']

captions = []
for p in a.pairs:
    captions += [r for r in pq.read_table(p).to_pylist() if ' shape' in r['text'].split(':')[0]]
data = []
for r in captions:
    image = Image.open(io.BytesIO(r['image']['bytes'])).convert('RGB')
    b = proc.image_processor([[image]], return_tensors='pt')
    count = int(r['text'].split()[0]); objects = r['text'].split(':', 1)[1]
    present = [float(c in objects) for c in COLOURS] + [float(s in objects) for s in SHAPES]
    data.append((b['pixel_values'][0, 0], b['pixel_attention_mask'][0, 0], count - 1, torch.tensor(present)))
test, train = data[:300], data[300:]
base = torch.stack([t[3] for t in test]).mean(0)
base = torch.maximum(base, 1 - base)
print(f'{len(train)} train / {len(test)} test scenes; majority baseline: colours {base[:6].mean():.3f} '
      f'shapes {base[6:].mean():.3f} count {max(sum(t[2] == c for t in test) for c in range(9)) / len(test):.3f}', flush=True)

if a.cnn:
    stem = torch.nn.Sequential(torch.nn.Conv2d(3, 128, patch, patch), torch.nn.ReLU(), torch.nn.Conv2d(128, 128, 1))
    features = lambda pv, mask: (stem(pv).flatten(2).transpose(1, 2), 'max')
    params = list(stem.parameters())
else:
    features = lambda pv, mask: (tower(pixel_values=pv, patch_attention_mask=mask).last_hidden_state, 'mean')
    for q in tower.parameters(): q.requires_grad_(not a.frozen)
    params = [] if a.frozen else list(tower.parameters())
head = torch.nn.Linear(128, 10 + 9)
opt = torch.optim.AdamW(params + list(head.parameters()), lr=a.lr, weight_decay=0.0)

def forward(items):
    H = max(i[0].shape[1] for i in items); W = max(i[0].shape[2] for i in items)
    pv = torch.zeros(len(items), 3, H, W); pm = torch.zeros(len(items), H, W, dtype=torch.bool)
    for k, it in enumerate(items):
        pv[k, :, :it[0].shape[1], :it[0].shape[2]] = it[0]; pm[k, :it[1].shape[0], :it[1].shape[1]] = it[1]
    mask = pm.unfold(1, patch, patch).unfold(2, patch, patch).sum((-1, -2)) > 0
    h, pool = features(pv, mask)
    valid = mask.reshape(len(items), -1, 1).float()
    pooled = (h * valid).sum(1) / valid.sum(1) if pool == 'mean' else (h - 1e4 * (1 - valid)).max(1).values
    return head(pooled)

def evaluate():
    tower.eval(); right = torch.zeros(10); right_count = 0
    with torch.no_grad():
        for i in range(0, len(test), 50):
            items = test[i:i + 50]; out = forward(items)
            right += ((out[:, :10] > 0).float() == torch.stack([t[3] for t in items])).float().sum(0)
            right_count += (out[:, 10:].argmax(1) == torch.tensor([t[2] for t in items])).sum().item()
    tower.train(); return right / len(test), right_count / len(test)

t0 = time.time()
for step in range(1, a.steps + 1):
    items = random.sample(train, 32); out = forward(items)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, :10], torch.stack([t[3] for t in items])) \
        + torch.nn.functional.cross_entropy(out[:, 10:], torch.tensor([t[2] for t in items]))
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0:
        acc, count = evaluate()
        print(f'step {step} loss {loss.item():.3f} colours {acc[:6].mean():.3f} shapes {acc[6:].mean():.3f} '
              f'count {count:.3f} ({time.time() - t0:.0f}s)', flush=True)

if a.save:
    full_model.save_pretrained(a.save); proc.save_pretrained(a.save)
    print('saved to', a.save)
