# Exploration only: how fast can the tiny vision tower learn to read one word? Each step renders a fresh batch of
# single-word images (one of the 40 synthetic words, DejaVu Sans or Mono, random size, colour and position on a
# light canvas) and trains tower + linear head (mean and max over the patches) to classify the word. Compares the
# checkpoint's tower, the same tower re-initialised (--arch random, optionally with another --patch) and a CNN.
import argparse, random, time, torch
from PIL import Image, ImageDraw, ImageFont
from synth_words import WORDS
from transformers import Idefics2ForConditionalGeneration

ap = argparse.ArgumentParser()
ap.add_argument('--model', required=True)
ap.add_argument('--arch', default='tower', choices=['tower', 'random', 'cnn'])
ap.add_argument('--patch', type=int, default=0, help='patch size of a re-initialised tower (default: the checkpoint\'s)')
ap.add_argument('--canvas', type=int, default=224); ap.add_argument('--px', default='14,40', help='font sizes, min,max')
ap.add_argument('--steps', type=int, default=1000); ap.add_argument('--lr', type=float, default=1e-3)
ap.add_argument('--batch', type=int, default=32); ap.add_argument('--threads', type=int, default=1)
a = ap.parse_args()
torch.manual_seed(0); random.seed(0); torch.set_num_threads(a.threads)
fonts = {s: [ImageFont.truetype(f'assets/fonts/{f}', s) for f in ('DejaVuSans.ttf', 'DejaVuSansMono.ttf')]
         for s in range(6, 80)}
lo, hi = map(int, a.px.split(','))

def render(rng):
    k = rng.randrange(len(WORDS)); font = rng.choice(fonts[rng.randint(lo, hi)])
    bg = tuple(rng.randint(220, 255) for _ in range(3)); fg = tuple(rng.randint(0, 160) for _ in range(3))
    im = Image.new('RGB', (a.canvas, a.canvas), bg); d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = d.textbbox((0, 0), WORDS[k], font=font)
    x = rng.randint(0, max(0, a.canvas - (x1 - x0) - 1)) - x0; y = rng.randint(0, max(0, a.canvas - (y1 - y0) - 1)) - y0
    d.text((x, y), WORDS[k], fill=fg, font=font)
    t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(a.canvas, a.canvas, 3).permute(2, 0, 1)
    return (t.float() / 127.5 - 1.0), k

def batch(rng, n):
    items = [render(rng) for _ in range(n)]
    return torch.stack([i[0] for i in items]), torch.tensor([i[1] for i in items])

tower = Idefics2ForConditionalGeneration.from_pretrained(a.model).model.vision_model
width = tower.config.hidden_size
if a.arch == 'random':
    cfg = tower.config
    if a.patch: cfg.patch_size = a.patch; cfg.image_size = a.canvas
    tower = type(tower)(cfg)
if a.arch == 'cnn':
    tower = torch.nn.Sequential(*[m for ci, co in [(3, 32), (32, 64), (64, 128), (128, width)]
                                  for m in (torch.nn.Conv2d(ci, co, 3, 2, 1), torch.nn.ReLU())])
head = torch.nn.Linear(2 * width, len(WORDS))
opt = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=a.lr, weight_decay=0.0)
print(f'arch {a.arch} patch {a.patch or "ckpt"} canvas {a.canvas} px {a.px} lr {a.lr}; chance {1 / len(WORDS):.3f}',
      flush=True)

def forward(pv):
    if a.arch == 'cnn':
        h = tower(pv).flatten(2).transpose(1, 2)
    else:
        h = tower(pixel_values=pv).last_hidden_state
    return head(torch.cat([h.mean(1), h.max(1).values], -1))

test_x, test_y = batch(random.Random(12345), 400)
t0 = time.time(); rng = random.Random(1)
for step in range(1, a.steps + 1):
    x, y = batch(rng, a.batch)
    loss = torch.nn.functional.cross_entropy(forward(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0:
        with torch.no_grad():
            acc = (forward(test_x).argmax(1) == test_y).float().mean().item()
        print(f'step {step} loss {loss.item():.3f} test acc {acc:.3f} ({time.time() - t0:.0f}s)', flush=True)
