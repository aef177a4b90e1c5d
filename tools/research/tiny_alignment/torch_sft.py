# Exploration only: SFT on synth chat data, answer-only loss; accuracy of the greedy first answer token.
import sys, io, random, time, torch, pyarrow.parquet as pq, argparse, json, collections
from PIL import Image
from transformers import AutoProcessor, Idefics2ForConditionalGeneration
ap = argparse.ArgumentParser()
ap.add_argument('--model', required=True); ap.add_argument('--lr', type=float, default=1e-3)
ap.add_argument('--steps', type=int, default=600); ap.add_argument('--bs', type=int, default=8)
ap.add_argument('--fams', default='shapes'); ap.add_argument('--freeze', default='')
ap.add_argument('--data', default='runs/tiny/data'); ap.add_argument('--eval_every', type=int, default=100)
ap.add_argument('--zero_latents', action='store_true')
ap.add_argument('--lm_lr', type=float, help='learning rate of the text model and lm_head (default: --lr)')
ap.add_argument('--easy', type=float, default=0.0, help='share of training samples that are solid-colour images asked their colour (image-only answers)')
ap.add_argument('--zero_mlp', action='store_true', help='start the perceiver MLP down projection at zero')
a = ap.parse_args()
torch.manual_seed(0); random.seed(0); torch.set_num_threads(2)
proc = AutoProcessor.from_pretrained(a.model); proc.image_processor.do_image_splitting = False
model = Idefics2ForConditionalGeneration.from_pretrained(a.model); tok = proc.tokenizer
if a.zero_mlp:
    with torch.no_grad():
        for layer in model.model.connector.perceiver_resampler.layers: layer.mlp.down_proj.weight.zero_()
if a.zero_latents:
    with torch.no_grad(): model.model.connector.perceiver_resampler.latents.zero_()
IMG = '<fake_token_around_image>' + '<image>' * 16 + '<fake_token_around_image>'
EOU = tok.convert_tokens_to_ids('<end_of_utterance>')
def load(split):
    out = []
    for fam in a.fams.split(','):
        for r in pq.read_table(f'{a.data}/{split}/chat_{fam}.parquet').to_pylist():
            im = Image.open(io.BytesIO(r['images'][0]['bytes'])).convert('RGB')
            pv = proc.image_processor([[im]], return_tensors='pt')['pixel_values'][0, 0]
            ids = [tok.bos_token_id]; lab = [-100]
            for k, t in enumerate(r['texts']):
                u = tok(('User:' + (IMG if k == 0 else '') + t['user'] + '<end_of_utterance>\nAssistant:'), add_special_tokens=False).input_ids
                ans = tok(' ' + t['assistant'], add_special_tokens=False).input_ids + [EOU]
                q = ids + u
                out_eval = (pv, list(q), ans[:-1], fam, t['user'].split('\n')[0])
                if split == 'heldout': out.append(out_eval)
                ids = q + ans + tok('\n', add_special_tokens=False).input_ids; lab = lab + [-100] * len(u) + ans + [-100] * (len(ids) - len(lab) - len(u) - len(ans))
            if split == 'train': out.append((pv, ids, lab))
    return out
train = load('train'); test = load('heldout')
COLOURS = {'red': (220, 40, 40), 'green': (40, 170, 60), 'blue': (40, 80, 220), 'yellow': (240, 210, 40), 'orange': (245, 140, 30), 'purple': (150, 60, 190)}
def easy_examples(n, seed):
    rng = random.Random(seed); out = []
    for _ in range(n):
        name = rng.choice(list(COLOURS)); im = Image.new('RGB', (rng.randint(64, 224), rng.randint(64, 224)), COLOURS[name])
        pv = proc.image_processor([[im]], return_tensors='pt')['pixel_values'][0, 0]
        q = [tok.bos_token_id] + tok('User:' + IMG + 'What colour is the image?\nAnswer with a single word or number.<end_of_utterance>\nAssistant:', add_special_tokens=False).input_ids
        ans = tok(' ' + name, add_special_tokens=False).input_ids + [EOU]
        out.append((pv, q + ans, [-100] * len(q) + ans, (pv, q, ans[:-1], 'easy', 'What colour is the image?')))
    return out
easy_train = [e[:3] for e in easy_examples(400, 1)] if a.easy > 0 else []
if a.easy > 0: test += [e[3] for e in easy_examples(48, 2)]
FAMS = a.fams.split(',') + (['easy'] if a.easy > 0 else [])
print(len(train), 'train conversations', len(test), 'heldout questions', flush=True)
def pix(imgs):
    H = max(i.shape[1] for i in imgs); W = max(i.shape[2] for i in imgs)
    pv = torch.zeros(len(imgs), 1, 3, H, W); pm = torch.zeros(len(imgs), 1, H, W, dtype=torch.bool)
    for k, im in enumerate(imgs): pv[k, 0, :, :im.shape[1], :im.shape[2]] = im; pm[k, 0, :im.shape[1], :im.shape[2]] = True
    return pv, pm
def tbatch(items):
    L = max(len(i[1]) for i in items)
    ids = torch.zeros(len(items), L, dtype=torch.long); lab = torch.full((len(items), L), -100); am = torch.zeros(len(items), L, dtype=torch.long)
    for k, (_, s, l) in enumerate(items): ids[k, :len(s)] = torch.tensor(s); am[k, :len(s)] = 1; lab[k, :len(l)] = torch.tensor(l)
    pv, pm = pix([i[0] for i in items])
    return dict(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_attention_mask=pm, labels=lab)
def evaluate(shuffle=False):
    model.eval(); acc = collections.defaultdict(lambda: [0, 0])
    with torch.no_grad():
        for i in range(0, len(test), 16):
            items = test[i:i+16]; L = max(len(t[1]) for t in items)
            ids = torch.zeros(len(items), L, dtype=torch.long); am = torch.zeros(len(items), L, dtype=torch.long)
            for k, t in enumerate(items): ids[k, L-len(t[1]):] = torch.tensor(t[1]); am[k, L-len(t[1]):] = 1  # left pad
            imgs = [t[0] for t in items]
            if shuffle: imgs = imgs[5:] + imgs[:5]
            pv, pm = pix(imgs)
            lg = model(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_attention_mask=pm).logits[:, -1]
            for k, t in enumerate(items):
                ok = lg[k].argmax().item() == t[2][0]
                key = t[3] + ':' + ' '.join(w for w in t[4].split()[:3])
                acc[key][0] += ok; acc[key][1] += 1; acc[t[3]][0] += ok; acc[t[3]][1] += 1
    model.train(); return acc
def sensitivity():
    # How much the image matters: mean |log-prob difference| at the answer position between right and swapped
    # images, and the connector output's spread across images relative to its size.
    model.eval()
    with torch.no_grad():
        items = test[:32]; L = max(len(t[1]) for t in items)
        ids = torch.zeros(len(items), L, dtype=torch.long); am = torch.zeros(len(items), L, dtype=torch.long)
        for k, t in enumerate(items): ids[k, L-len(t[1]):] = torch.tensor(t[1]); am[k, L-len(t[1]):] = 1
        imgs = [t[0] for t in items]; out = []
        for shuffled in (imgs, imgs[5:] + imgs[:5]):
            pv, pm = pix(shuffled)
            out.append(model(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_attention_mask=pm).logits[:, -1].log_softmax(-1))
        pv, pm = pix(imgs)
        f = model.model.get_image_features(pixel_values=pv, pixel_attention_mask=pm)
        f = f if torch.is_tensor(f) else (f.pooler_output if getattr(f, 'pooler_output', None) is not None else f[0])
        f = f[0] if isinstance(f, (list, tuple)) else f
        f = f.reshape(len(items), -1)
        spread = (f - f.mean(0)).norm(dim=1).mean() / f.norm(dim=1).mean()
    model.train()
    return (out[0] - out[1]).abs().max(-1).values.mean().item(), spread.item()
params = []
for n, p in model.named_parameters():
    on = not (a.freeze and any(f in n for f in a.freeze.split(',')))
    p.requires_grad_(on)
    if on: params.append(p)
lm = [p for n, p in model.named_parameters() if p.requires_grad and ('text_model' in n or 'lm_head' in n)]
rest = [p for n, p in model.named_parameters() if p.requires_grad and not ('text_model' in n or 'lm_head' in n)]
opt = torch.optim.AdamW([{'params': lm, 'base_lr': a.lm_lr or a.lr}, {'params': rest, 'base_lr': a.lr}], lr=a.lr, weight_decay=0.1)
t0 = time.time()
for step in range(a.steps + 1):
    if step % a.eval_every == 0:
        acc = evaluate(); sh = evaluate(True)
        dlogp, spread = sensitivity()
        print(f'step {step} ({time.time()-t0:.0f}s) first-token acc', ' '.join(f'{f}={acc[f][0]/acc[f][1]:.2f}(shuf {sh[f][0]/sh[f][1]:.2f})' for f in FAMS),
              f'max|dlogp| right-vs-swapped {dlogp:.4f} connector spread {spread:.4f}', flush=True)
    if step == a.steps: break
    for g in opt.param_groups: g['lr'] = g['base_lr'] * min(1.0, (step + 1) / 20)
    batch = [random.choice(easy_train) if random.random() < a.easy else random.choice(train) for _ in range(a.bs)]
    loss = model(**tbatch(batch)).loss
    loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); opt.zero_grad()
acc = evaluate()
for k in sorted(acc):
    if ':' in k: print('  ', k, acc[k])
