# Exploration only: can the tiny vision tower tell which of the 40 synthetic words are written in an OCR image?
# A linear head on the tower output (mean and max over the patches, side by side) predicts the words present
# (multi-label), from the captions of `idefics data synth --tasks ocr` pairs. --frozen trains the head only
# (what the tower already encodes); otherwise the tower is trained too (how fast it can learn to read with
# direct labels). Score: precision@1 (the top-scored word is in the image) against the frequency baseline.
import argparse, io, random, re, time, torch, pyarrow.parquet as pq
from PIL import Image
from synth_words import WORDS
from transformers import AutoProcessor, Idefics2ForConditionalGeneration

ap = argparse.ArgumentParser()
ap.add_argument('--model', required=True)
ap.add_argument('--train-pairs', required=True); ap.add_argument('--test-pairs', required=True)
ap.add_argument('--steps', type=int, default=600); ap.add_argument('--lr', type=float, default=3e-4)
ap.add_argument('--frozen', action='store_true'); ap.add_argument('--size', type=int, default=224)
ap.add_argument('--threads', type=int, default=1); ap.add_argument('--batch', type=int, default=32)
ap.add_argument('--max-train', type=int, default=100000)
ap.add_argument('--arch', default='tower', choices=['tower', 'random', 'cnn'],
                help='the checkpoint tower, the same tower re-initialised, or a small CNN (yardstick)')
a = ap.parse_args()
torch.manual_seed(0); random.seed(0); torch.set_num_threads(a.threads)
proc = AutoProcessor.from_pretrained(a.model); ip = proc.image_processor
ip.do_image_splitting = False; ip.size = {'longest_edge': a.size, 'shortest_edge': min(a.size, 112)}
tower = Idefics2ForConditionalGeneration.from_pretrained(a.model).model.vision_model
if a.arch == 'random':
    tower = type(tower)(tower.config)
patch = tower.config.patch_size; width = tower.config.hidden_size

def load(path, limit):
    rows = [r for r in pq.read_table(path).to_pylist() if r['text'].startswith('Text on')][:limit]
    out = []
    for r in rows:
        image = Image.open(io.BytesIO(r['image']['bytes'])).convert('RGB')
        b = ip([[image]], return_tensors='pt')
        present = set(re.findall(r'"([^"]+)"', r['text']))
        out.append((b['pixel_values'][0, 0], b['pixel_attention_mask'][0, 0],
                    torch.tensor([float(w in present) for w in WORDS])))
    return out
train = load(a.train_pairs, a.max_train); test = load(a.test_pairs, 600)
test = [t for t in test if t[2].sum() > 0]
freq = torch.stack([t[2] for t in train]).mean(0)
base = sum(t[2][freq.argmax()].item() for t in test) / len(test)
print(f'{len(train)} train / {len(test)} test images with a word; frequency baseline p@1 {base:.3f}', flush=True)

for q in tower.parameters(): q.requires_grad_(not a.frozen)
if a.arch == 'cnn':  # 4 stride-2 3x3 convs: the same 16-pixel grid as the tower's patches
    cnn = torch.nn.Sequential(*[m for i, (ci, co) in enumerate([(3, 32), (32, 64), (64, 128), (128, width)])
                                for m in (torch.nn.Conv2d(ci, co, 3, 2, 1), torch.nn.ReLU())])
    tower = cnn
head = torch.nn.Linear(2 * width, len(WORDS))
params = ([] if a.frozen else list(tower.parameters())) + list(head.parameters())
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)

def forward(items):
    H = max(i[0].shape[1] for i in items); W = max(i[0].shape[2] for i in items)
    pv = torch.zeros(len(items), 3, H, W); pm = torch.zeros(len(items), H, W, dtype=torch.bool)
    for k, it in enumerate(items):
        pv[k, :, :it[0].shape[1], :it[0].shape[2]] = it[0]; pm[k, :it[1].shape[0], :it[1].shape[1]] = it[1]
    mask = pm.unfold(1, patch, patch).unfold(2, patch, patch).sum((-1, -2)) > 0
    if a.arch == 'cnn':
        h = cnn(pv).flatten(2).transpose(1, 2)
    else:
        h = tower(pixel_values=pv, patch_attention_mask=mask).last_hidden_state
    valid = mask.reshape(len(items), -1, 1).float()
    mean = (h * valid).sum(1) / valid.sum(1); mx = (h - 1e4 * (1 - valid)).max(1).values
    return head(torch.cat([mean, mx], -1))

def evaluate():
    tower.eval(); right = 0
    with torch.no_grad():
        for i in range(0, len(test), 50):
            items = test[i:i + 50]; out = forward(items)
            labels = torch.stack([t[2] for t in items])
            right += labels.gather(1, out.argmax(1, keepdim=True)).sum().item()
    tower.train(); return right / len(test)

t0 = time.time()
for step in range(1, a.steps + 1):
    items = random.sample(train, a.batch); out = forward(items)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out, torch.stack([t[2] for t in items]))
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0:
        print(f'step {step} loss {loss.item():.4f} p@1 {evaluate():.3f} ({time.time() - t0:.0f}s)', flush=True)
