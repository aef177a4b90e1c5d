# caption / answer loss with the right image vs another sample's image
import sys, io, torch, pyarrow.parquet as pq
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, Idefics2ForConditionalGeneration
model_dir, data = sys.argv[1], sys.argv[2]
ckpt = sys.argv[3] if len(sys.argv) > 3 else None
proc = AutoProcessor.from_pretrained(model_dir); proc.image_processor.do_image_splitting = False
model = Idefics2ForConditionalGeneration.from_pretrained(model_dir).eval()
if ckpt:
    sd = model.state_dict()
    t = load_file(ckpt + '/trainable.safetensors')
    for k, v in t.items():
        if k in sd: sd[k].copy_(v)
    a = load_file(ckpt + '/adapter_model.safetensors')
    import json; cfg = json.load(open(ckpt + '/adapter_config.json')); sc = cfg['lora_alpha'] / cfg['r']
    for k in a:
        if k.endswith('lora_A.weight'):
            base = k[len('base_model.model.'):-len('.lora_A.weight')] + '.weight'
            B = a[k.replace('lora_A', 'lora_B')]
            sd[base] += sc * B @ a[k]
    print('applied', len(t), 'trainable tensors and', len(a) // 2, 'lora pairs')
tok = proc.tokenizer
tbl = pq.read_table(data).to_pylist()[:48]
img_tok = '<fake_token_around_image>' + '<image>' * 16 + '<fake_token_around_image>'
def img_of(r):
    v = r.get('image') or r.get('images')
    if isinstance(v, list): v = v[0]
    return Image.open(io.BytesIO(v['bytes'])).convert('RGB')
def text_of(r):
    if 'text' in r: return r['text']
    return r['texts']
tot = {'right': 0.0, 'shuffled': 0.0}; n = 0
with torch.no_grad():
    for i, r in enumerate(tbl):
        cap = text_of(r)
        if not isinstance(cap, str): break
        ids = [tok.bos_token_id] + tok(img_tok, add_special_tokens=False).input_ids
        n_prefix = len(ids)
        ids = ids + tok(cap, add_special_tokens=False).input_ids + [tok.eos_token_id]
        ids = torch.tensor([ids])
        labels = ids.clone(); labels[:, :n_prefix] = -100
        for name, im in (('right', img_of(r)), ('shuffled', img_of(tbl[(i + 7) % len(tbl)]))):
            b = proc.image_processor([[im]], return_tensors='pt')
            out = model(input_ids=ids, pixel_values=b['pixel_values'], pixel_attention_mask=b['pixel_attention_mask'], labels=labels)
            tot[name] += out.loss.item()
        n += 1
print({k: round(v / n, 4) for k, v in tot.items()}, 'over', n, 'captions')
