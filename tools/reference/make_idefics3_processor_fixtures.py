#!/usr/bin/env python3
"""Reference fixtures for the Idefics3 / SmolVLM processor (idefics-processor's `idefics3` modules).

Run with the project venv plus `num2words` (SmolVLMProcessor imports it; keep it out of /work/.venv):
    python3.11 -m venv /tmp/venv-n2w && echo "$(/work/.venv/bin/python -c 'import site;print(site.getsitepackages()[0])')" \
        > "$(/tmp/venv-n2w/bin/python -c 'import site;print(site.getsitepackages()[0])')/parent.pth" \
        && /tmp/venv-n2w/bin/pip install num2words
    /tmp/venv-n2w/bin/python tools/reference/make_idefics3_processor_fixtures.py

Writes tests/fixtures/idefics3/processor/:
  tokenizer/               a tiny byte-level BPE tokenizer (GPT2Tokenizer class, as the SmolVLM checkpoints) with the
                           Idefics3 / SmolVLM special tokens (<global-img>, <row_r_col_c>, <fake_token_around_image>,
                           <image>, <end_of_utterance>, <video>)
  ckpt_<name>/             processor-only checkpoint directories: transformers 5.x `save_pretrained` layout
                           (processor_config.json with the nested image_processor, chat_template.jinja) or the Hub
                           layout (preprocessor_config.json + processor_config.json + chat_template.json), plus a
                           config.json holding only `model_type`
  tokenizer_gpt2_rebuild/  that tokenizer.json with an NFKC normalizer, a Digits pre-tokenizer and a BOS post-processor
                           (transformers' GPT2Tokenizer drops the first two), and ids transformers gives
  frames.safetensors       per case: the uint8 frames [B, M, 3, H, W] the float pixel_values decode to, and the
                           pixel_attention_mask as uint8 (small cases only); Pillow's frames of the animated fixtures
  manifest.json            per case: inputs, checkpoint, splitting, rendered prompt text, input_ids, attention_mask,
                           rows / cols per image, shapes, and a digest (CRC-32 + byte sum) of the float32
                           pixel_values bytes and of the int64 mask bytes (every case, including the large ones);
                           the video prompt cases (raw and chat); frame-sampling cases; num2words words
  VERSIONS.json            library versions

Images: committed files of tests/fixtures/images/files (passed as paths: transformers' load_image decodes them) and
synthetic hash images (`synthetic_rgb`, the same generator as make_image_fixtures.py, passed as PIL RGB images).
"""

import json
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL
import tokenizers
import transformers
from PIL import Image
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Tokenizer, Idefics3Processor
from transformers.image_utils import load_image
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
from transformers.models.smolvlm.processing_smolvlm import SmolVLMProcessor
from transformers.processing_utils import ProcessorMixin
from transformers.video_utils import VideoMetadata

_check_class = ProcessorMixin.check_argument_for_proper_class


def _check_class_allow_none(self, name, arg):
    # SmolVLMProcessor requires a video processor, which needs torchvision (kept out of the venv: it would switch
    # the image processors to the torchvision backend). The image path never touches it.
    if arg is None:
        return None
    return _check_class(self, name, arg)


ProcessorMixin.check_argument_for_proper_class = _check_class_allow_none

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_image_fixtures import synthetic_rgb  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "idefics3" / "processor"
FILES = ROOT / "tests" / "fixtures" / "images" / "files"
# Frames are stored as uint8 only while a case's frames stay under this many bytes (else digests only).
FRAME_STORE_LIMIT = 160_000

TEXT = """
What do we see in this image? In this image, we can see a city by the sea. And how about this image?
There is a dog on the grass and a cat on the sofa. Describe the picture in one sentence.

Answer the question using a single word or phrase.
How many people are there in the photo? There are three people.

Read the text in the image.
The sign says stop. Compare the two images.
User: Assistant: Frame from video series frames
"""

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = (["<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
         + ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<video>"])

# processing_smolvlm.py DEFAULT_CHAT_TEMPLATE (SmolVLM2 checkpoints ship this one, with the video branch).
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'] is string %}"
    "{{': ' + message['content']}}{% else %}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}"
    "{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# Idefics3-8B / SmolVLM-Instruct: the Idefics2 template with a BOS written first.
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

IMAGE_DEFAULTS = dict(
    do_convert_rgb=True, do_resize=True, resample=1, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pad=True, do_image_splitting=True,
)

# name -> (family, layout, image processor settings, image_seq_len, template)
CHECKPOINTS = {
    # SmolVLM-256M/500M geometry scaled down: longest edge 4 tiles, tile 32.
    "smolvlm_small": ("smolvlm", "saved", dict(IMAGE_DEFAULTS, size={"longest_edge": 128},
                                                max_image_size={"longest_edge": 32}), 4, SMOLVLM_TEMPLATE),
    # Two tiles per side; Hub file layout (preprocessor_config.json + chat_template.json).
    "smolvlm_hub": ("smolvlm", "hub", dict(IMAGE_DEFAULTS, size={"longest_edge": 64},
                                            max_image_size={"longest_edge": 32}), 3, SMOLVLM_TEMPLATE),
    # Idefics3 family (Idefics3Processor), odd tile 24, longest edge 72.
    "idefics3_small": ("idefics3", "saved", dict(IMAGE_DEFAULTS, size={"longest_edge": 72},
                                                  max_image_size={"longest_edge": 24}), 5, IDEFICS3_TEMPLATE),
    # idefics3_small with a tokenizer whose post-processor adds a BOS (as Idefics3-8B's Llama-3 tokenizer does):
    # tokenizer.json replaced by tokenizer_gpt2_rebuild's after saving.
    "idefics3_bos": ("idefics3", "saved", dict(IMAGE_DEFAULTS, size={"longest_edge": 72},
                                                max_image_size={"longest_edge": 24}), 5, IDEFICS3_TEMPLATE),
    # No step-2 resize, BICUBIC, chat template only in tokenizer_config.json (the lowest-precedence place).
    "idefics3_noresize": ("idefics3", "tokenizer_template", dict(IMAGE_DEFAULTS, do_resize=False, resample=3,
                                                                  max_image_size={"longest_edge": 16}),
                          2, IDEFICS3_TEMPLATE),
    # The real SmolVLM-256M / SmolVLM2-256M values (2048 / 512, 64 tokens per tile).
    "smolvlm_256m": ("smolvlm", "hub", dict(IMAGE_DEFAULTS, size={"longest_edge": 2048},
                                             max_image_size={"longest_edge": 512}), 64, SMOLVLM_TEMPLATE),
    # The real Idefics3-8B values (1456 / 364, 169 tokens per tile).
    "idefics3_8b": ("idefics3", "saved", dict(IMAGE_DEFAULTS, size={"longest_edge": 1456},
                                               max_image_size={"longest_edge": 364}), 169, IDEFICS3_TEMPLATE),
}


def digest(arr):
    data = np.ascontiguousarray(arr).tobytes()
    return f"{zlib.crc32(data):08x}:{sum(data)}"


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = [line + "\n" for line in TEXT.splitlines()] + ["\n\n", "\n\n\n", " \n\n"] * 20
    tok.train_from_iterator(lines, trainer=trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["model"]["merges"]]
    assert "ĊĊ" in vocab, "the tokenizer must merge '\\n\\n' (SmolLM's does)"
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|im_start|>",
                              eos_token="<end_of_utterance>", pad_token="<|im_end|>", add_prefix_space=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ADDED})
    return tokenizer


def write_checkpoint(name, tokenizer):
    family, layout, ip_cfg, seq_len, template = CHECKPOINTS[name]
    d = OUT / f"ckpt_{name}"
    d.mkdir(parents=True, exist_ok=True)
    if family == "smolvlm":
        ip = SmolVLMImageProcessorPil(**ip_cfg)
        proc = SmolVLMProcessor(image_processor=ip, tokenizer=tokenizer, video_processor=None,
                                image_seq_len=seq_len, chat_template=template)
    else:
        ip = Idefics3ImageProcessorPil(**ip_cfg)
        proc = Idefics3Processor(image_processor=ip, tokenizer=tokenizer, image_seq_len=seq_len,
                                 chat_template=template)
    if layout == "saved" and family == "smolvlm":
        # save_pretrained cannot write a SmolVLMProcessor without its video processor: save the identical
        # Idefics3 layout and rename the classes, which is what SmolVLMProcessor.save_pretrained writes.
        Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**ip_cfg), tokenizer=tokenizer,
                          image_seq_len=seq_len, chat_template=template).save_pretrained(d)
        cfg = json.loads((d / "processor_config.json").read_text())
        cfg["processor_class"] = "SmolVLMProcessor"
        cfg["image_processor"]["image_processor_type"] = "SmolVLMImageProcessor"
        (d / "processor_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
        tok_cfg["processor_class"] = "SmolVLMProcessor"
        (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    elif layout == "saved":
        proc.save_pretrained(d)
    elif layout == "tokenizer_template":
        proc.save_pretrained(d)
        (d / "chat_template.jinja").unlink()
        tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
        tok_cfg["chat_template"] = template
        (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    else:
        tokenizer.save_pretrained(d)
        pre = dict(ip_cfg, image_processor_type=type(ip).__name__.removesuffix("Pil"),
                   processor_class=type(proc).__name__)
        (d / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
        (d / "processor_config.json").write_text(json.dumps(
            {"image_seq_len": seq_len, "processor_class": type(proc).__name__}, indent=2) + "\n")
        (d / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2) + "\n")
    (d / "config.json").write_text(json.dumps({"model_type": family}, indent=2) + "\n")
    return proc


def load_proc(name):
    """Reload from disk, as a user would (AutoProcessor picks the PIL image processor: no torchvision here)."""
    family = CHECKPOINTS[name][0]
    cls = SmolVLMProcessor if family == "smolvlm" else Idefics3Processor
    d = OUT / f"ckpt_{name}"
    if family == "smolvlm":
        tok = GPT2Tokenizer.from_pretrained(d)
        ip = SmolVLMImageProcessorPil.from_pretrained(d)
        cfg = json.loads((d / "processor_config.json").read_text())
        tmpl_file = d / "chat_template.jinja"
        template = tmpl_file.read_text() if tmpl_file.exists() else json.loads(
            (d / "chat_template.json").read_text())["chat_template"]
        proc = SmolVLMProcessor(image_processor=ip, tokenizer=tok, video_processor=None,
                                image_seq_len=cfg["image_seq_len"], chat_template=template)
        # apply_chat_template reads the video processor's sampling defaults (unused for images).
        proc.video_processor = SimpleNamespace(num_frames=64, fps=1)
        return proc
    return cls.from_pretrained(d)


def image_input(spec):
    if spec["kind"] == "file":
        return str(FILES / spec["name"])
    return Image.fromarray(synthetic_rgb(spec["h"], spec["w"], spec["seed"]))


def syn(h, w, seed):
    return {"kind": "synthetic", "h": h, "w": w, "seed": seed}


def file_(name):
    return {"kind": "file", "name": name}


def invert_to_u8(pv, mask):
    """The uint8 samples behind transformers' floats (mean = std = 0.5, rescale 1/255): exact, checked below.
    Padding (mask 0) is 0.0 in pixel_values and stored as 0."""
    lut = ((np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
    idx = np.clip(np.searchsorted(lut, pv.ravel()), 0, 255)
    u8 = idx.astype(np.uint8).reshape(pv.shape)
    valid = np.broadcast_to(mask[:, :, None, :, :] == 1, pv.shape)
    u8[~valid] = 0
    assert np.array_equal(np.where(valid, lut[u8], np.float32(0)), pv), "pixel_values are not on the 256-value grid"
    return u8


def run_case(case, tensors):
    proc = load_proc(case["checkpoint"])
    images = [[image_input(s) for s in sample] for sample in case["images"]]
    kwargs = {}
    if "do_image_splitting" in case:
        kwargs["do_image_splitting"] = case["do_image_splitting"]
    if "messages" in case:
        # A template only in tokenizer_config.json is not the processor's in 5.24 (processing_utils.py
        # `_resolve_chat_template` raises): render it with the tokenizer, as users then do.
        render = proc.apply_chat_template if proc.chat_template else proc.tokenizer.apply_chat_template
        texts = [render(m, add_generation_prompt=True, tokenize=False) for m in case["messages"]]
    else:
        texts = case["prompts"]
    padding = len(texts) > 1
    if padding:
        proc.tokenizer.padding_side = "left"
    has_images = any(len(s) for s in images)
    if "messages" in case:
        # What processor.apply_chat_template(tokenize=True) does (processing_utils.py): no second BOS when the
        # rendered text starts with it.
        bos = proc.tokenizer.bos_token
        kwargs["add_special_tokens"] = not (bos is not None and texts[0].startswith(bos))
    out = proc(text=texts, images=images if has_images else None, padding=padding, return_tensors="np", **kwargs)
    # rows / cols per image, as the image processor reports them (the prompt expansion follows them).
    kwargs.pop("add_special_tokens", None)
    if has_images:
        rc = proc.image_processor(images, return_row_col_info=True, return_tensors="np", **kwargs)
        rows, cols = rc["rows"], rc["cols"]
    else:
        rows = cols = [[] for _ in texts]
    case = dict(case)
    case["text"] = texts
    case["input_ids"] = out["input_ids"].tolist()
    case["attention_mask"] = out["attention_mask"].tolist()
    case["rows"], case["cols"] = rows, cols
    if has_images:
        pv, mask = out["pixel_values"], out["pixel_attention_mask"]
        assert pv.dtype == np.float32 and mask.dtype == np.int64
        case["pixel_values_shape"] = list(pv.shape)
        case["pixel_values_digest"] = digest(pv)
        case["pixel_attention_mask_digest"] = digest(mask)
        u8 = invert_to_u8(pv, mask)
        case["frames_digest"] = digest(u8)
        if u8.nbytes <= FRAME_STORE_LIMIT:
            tensors[f"{case['name']}/frames"] = u8
            tensors[f"{case['name']}/mask"] = mask.astype(np.uint8)
            case["stored"] = True
    return case


def image_cases():
    photo = file_("png_photo_700x1000.png")  # 1000 wide, 700 high
    c = []
    c.append(dict(name="smol_photo_split", checkpoint="smolvlm_small", images=[[photo]],
                  prompts=["<image>What do we see in this image?"]))
    c.append(dict(name="smol_photo_nosplit", checkpoint="smolvlm_small", images=[[photo]],
                  do_image_splitting=False, prompts=["Describe the picture in one sentence.<image>"]))
    c.append(dict(name="smol_portrait", checkpoint="smolvlm_small", images=[[syn(130, 70, 1)]],
                  prompts=["User:<image>How many people are there in the photo?<end_of_utterance>\nAssistant:"]))
    c.append(dict(name="smol_square_16x9", checkpoint="smolvlm_small", images=[[syn(90, 160, 2), syn(64, 64, 3)]],
                  prompts=["<image>\n\n<image>Compare the two images."]))
    c.append(dict(name="smol_rgba", checkpoint="smolvlm_small", images=[[file_("png_rgba.png")]],
                  prompts=["<image>"]))
    c.append(dict(name="smol_gray", checkpoint="smolvlm_small", images=[[file_("png_l.png")]],
                  prompts=["<image>Read the text in the image."]))
    c.append(dict(name="smol_palette_trns", checkpoint="smolvlm_small",
                  images=[[file_("png_palette_trns.png"), file_("png_rgb_trns.png")]],
                  prompts=["<image><image>"]))
    c.append(dict(name="smol_tiny_17x9", checkpoint="smolvlm_small", images=[[syn(9, 17, 4)]],
                  prompts=["<image>What do we see?"]))
    c.append(dict(name="smol_panorama", checkpoint="smolvlm_small", images=[[syn(120, 1500, 5)]],
                  prompts=["<image>What do we see?"]))
    c.append(dict(name="smol_tall_plain", checkpoint="smolvlm_small", images=[[file_("png_plain_200x8000.png")]],
                  prompts=["<image>"]))
    c.append(dict(name="smol_exif", checkpoint="smolvlm_small", images=[[file_("png_exif_orientation_6.png")]],
                  prompts=["<image>"]))
    c.append(dict(name="hub_batch", checkpoint="smolvlm_hub",
                  images=[[syn(40, 100, 6)], [syn(77, 33, 7), file_("png_rgb.png")]],
                  prompts=["<image>What is this?", "Two images: <image> and <image>. Compare the two images."]))
    c.append(dict(name="hub_chat", checkpoint="smolvlm_hub", images=[[syn(50, 60, 8)]],
                  messages=[[{"role": "user", "content": [{"type": "image"},
                                                          {"type": "text", "text": "What do we see in this image?"}]}]]))
    c.append(dict(name="hub_chat_text_first", checkpoint="smolvlm_hub", images=[[syn(30, 90, 9), syn(61, 20, 10)]],
                  messages=[[{"role": "user", "content": [{"type": "text", "text": "Compare the two images."},
                                                          {"type": "image"}, {"type": "image"}]},
                             {"role": "assistant", "content": [{"type": "text", "text": "The sign says stop."}]},
                             {"role": "user", "content": [{"type": "text", "text": "And how about this image?"}]}]]))
    c.append(dict(name="hub_nosplit_batch", checkpoint="smolvlm_hub", do_image_splitting=False,
                  images=[[syn(40, 100, 11), syn(50, 50, 12)], [syn(20, 80, 13)]],
                  prompts=["<image><image>Compare the two images.", "<image>"]))
    c.append(dict(name="i3_photo_split", checkpoint="idefics3_small", images=[[photo]],
                  prompts=["<image>What do we see in this image?"]))
    c.append(dict(name="i3_multi", checkpoint="idefics3_small", images=[[syn(33, 100, 14), syn(100, 47, 15)]],
                  prompts=["User:<image>\n<image>Compare the two images.<end_of_utterance>\nAssistant:"]))
    c.append(dict(name="i3_chat_nosplit", checkpoint="idefics3_small", do_image_splitting=False,
                  images=[[syn(25, 25, 16)]],
                  messages=[[{"role": "user", "content": [{"type": "image"},
                                                          {"type": "text", "text": "Describe the picture."}]}]]))
    c.append(dict(name="i3_bos_chat", checkpoint="idefics3_bos", images=[[syn(40, 30, 20)]],
                  messages=[[{"role": "user", "content": [{"type": "image"},
                                                          {"type": "text", "text": "What is the ﬁrst sign?"}]}]]))
    c.append(dict(name="i3_bos_raw", checkpoint="idefics3_bos", images=[[syn(40, 30, 20)]],
                  prompts=["User:<image>What is the ﬁrst sign? 123<end_of_utterance>\nAssistant:"]))
    c.append(dict(name="i3_noresize_chat", checkpoint="idefics3_noresize", images=[[syn(37, 20, 19)]],
                  messages=[[{"role": "user", "content": [{"type": "text", "text": "Read the text in the image."},
                                                          {"type": "image"}]}]]))
    c.append(dict(name="i3_noresize_tiny_files", checkpoint="idefics3_noresize",
                  images=[[file_("png_1x1.png"), file_("png_3x3.png"), file_("png_la.png")]],
                  prompts=["<image><image>\n<image>"]))
    c.append(dict(name="smol_tiny_files", checkpoint="smolvlm_small",
                  images=[[file_("png_1x1.png"), file_("png_2x2.png"), file_("gif_transparent.gif")]],
                  prompts=["<image> <image> <image>"]))
    c.append(dict(name="i3_text_only", checkpoint="idefics3_small", images=[[]],
                  prompts=["There is a dog on the grass."]))
    # Real geometries: digests only (13 or more frames of 512x512 / 364x364).
    c.append(dict(name="real_256m_tiny", checkpoint="smolvlm_256m", images=[[syn(9, 17, 17)]],
                  prompts=["<image>What do we see?"]))
    c.append(dict(name="real_256m_photo", checkpoint="smolvlm_256m", images=[[photo]],
                  prompts=["<image>What do we see?"]))
    c.append(dict(name="real_idefics3_8b", checkpoint="idefics3_8b", images=[[syn(300, 200, 18)]],
                  prompts=["<image>What do we see?"]))
    return c


def video_cases(proc):
    """SmolVLM's video prompt (processing_smolvlm.py replace_video_token) for frames given with timestamps."""
    out = []
    specs = [
        dict(name="video_3_frames", fps=1.0, frames_indices=[0, 1, 2], total=3, duration=3.0,
             text="User: <video>What happens in the video?<end_of_utterance>\nAssistant:"),
        dict(name="video_long", fps=24.0, frames_indices=[0, 700, 1450, 2210], total=2300, duration=2300 / 24,
             text="<video>"),
        dict(name="video_no_duration", fps=2.0, frames_indices=[0, 3, 125], total=None, duration=None,
             text="Frame by frame: <video> and more"),
        dict(name="video_hour", fps=30.0, frames_indices=[0, 54000, 107999], total=108000, duration=3600.0,
             text="<video>"),
    ]
    for s in specs:
        md = VideoMetadata(total_num_frames=s["total"], fps=s["fps"], duration=s["duration"],
                           frames_indices=s["frames_indices"])
        n = len(s["frames_indices"])
        inputs = {"pixel_values": np.zeros((1, n, 3, 1, 1), dtype=np.float32), "video_metadata": [md]}
        replacement = proc.replace_video_token(inputs, video_idx=0)
        expanded = s["text"].replace("<video>", replacement)
        ids = proc.tokenizer(expanded)["input_ids"]
        out.append(dict(s, replacement=replacement, input_ids=ids, checkpoint="smolvlm_small",
                        timestamps=md.timestamps))
    # Chats with video parts: SmolVLMProcessor.apply_chat_template switches to its DEFAULT_CHAT_TEMPLATE.
    chats = [
        dict(name="video_chat", frames_indices=[0, 24, 48, 72], fps=24.0, total=96, duration=4.0,
             messages=[{"role": "user", "content": [{"type": "video"},
                                                    {"type": "text", "text": "What happens in the video?"}]}]),
        dict(name="video_chat_text_first", frames_indices=[0, 75], fps=25.0, total=100, duration=4.0,
             messages=[{"role": "user", "content": [{"type": "text", "text": "Describe the video."},
                                                    {"type": "video"}]},
                       {"role": "assistant", "content": [{"type": "text", "text": "A dog on the grass."}]},
                       {"role": "user", "content": [{"type": "text", "text": "And the cat?"}]}]),
    ]
    for s in chats:
        md = VideoMetadata(total_num_frames=s["total"], fps=s["fps"], duration=s["duration"],
                           frames_indices=s["frames_indices"])
        n = len(s["frames_indices"])
        text = proc.apply_chat_template(s["messages"], add_generation_prompt=True, tokenize=False)
        inputs = {"pixel_values": np.zeros((1, n, 3, 1, 1), dtype=np.float32), "video_metadata": [md]}
        expanded = text.replace("<video>", proc.replace_video_token(inputs, video_idx=0))
        out.append(dict(s, text=text, input_ids=proc.tokenizer(expanded)["input_ids"], checkpoint="smolvlm_small",
                        timestamps=md.timestamps))
    return out


def sampling_cases():
    """SmolVLMVideoProcessor.sample_frames (needs no torchvision: called unbound)."""
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor
    cases = []
    for total, fps, max_frames, target_fps in [
        (300, 30.0, 64, 1.0), (3000, 30.0, 64, 1.0), (100, 25.0, 8, 2.0), (10, 5.0, 64, 1.0),
        (7, 24.0, 64, 1.0), (5000, 24.0, 32, 1.0), (2400, 24.0, 64, 1.0), (1, 30.0, 64, 1.0),
        (95, 29.97, 16, 4.0), (4000, 23.976, 50, 0.5),
    ]:
        md = VideoMetadata(total_num_frames=total, fps=fps, duration=total / fps)
        fake = SimpleNamespace(num_frames=max_frames, fps=target_fps)
        idx = SmolVLMVideoProcessor.sample_frames(fake, md, num_frames=max_frames, fps=target_fps)
        cases.append(dict(total_num_frames=total, fps=fps, max_frames=max_frames, target_fps=target_fps,
                          indices=[int(i) for i in idx]))
    return cases


def animation_frames(tensors):
    """Pillow's frames of the animated fixtures (ImageSequence, each frame's canvas converted to RGB); the pixels
    go to frames.safetensors as `anim/<file>/<i>` (HWC uint8)."""
    from PIL import ImageSequence
    out = {}
    for name in ["gif_animated.gif", "webp_animated.webp", "gif_single.gif", "webp_lossy.webp"]:
        with Image.open(FILES / name) as im:
            frames = [np.ascontiguousarray(np.array(f.convert("RGB"))) for f in ImageSequence.Iterator(im)]
        for i, f in enumerate(frames):
            tensors[f"anim/{name}/{i}"] = f
        out[name] = len(frames)
    return out


def gpt2_rebuild_case():
    """transformers 5.24's GPT2Tokenizer rebuilds the pipeline from the vocabulary (tokenization_gpt2.py): no
    normalizer, a plain ByteLevel pre-tokenizer, whatever tokenizer.json says; the post-processor is kept. A
    tokenizer.json with an NFKC normalizer, SmolLM's Digits pre-tokenizer and a BOS post-processor shows it."""
    from transformers import AutoTokenizer
    d = OUT / "tokenizer_gpt2_rebuild"
    d.mkdir(parents=True, exist_ok=True)
    src = OUT / "ckpt_smolvlm_hub"
    data = json.loads((src / "tokenizer.json").read_text())
    data["normalizer"] = {"type": "NFKC"}
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, data["pre_tokenizer"]]}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}}}
    (d / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    (d / "tokenizer_config.json").write_text((src / "tokenizer_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(d)
    assert type(tok).__name__ == "GPT2Tokenizer"
    texts = ["The ﬁrst 12345 frames", "Frame from 00:01:<image>", " two  spaces\n\nand\tTab ²", "café ①"]
    return [dict(text=t, input_ids=tok(t)["input_ids"]) for t in texts]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(OUT / "tokenizer")
    for name in CHECKPOINTS:
        write_checkpoint(name, tokenizer)
    gpt2_rebuild = gpt2_rebuild_case()
    (OUT / "ckpt_idefics3_bos" / "tokenizer.json").write_text(
        (OUT / "tokenizer_gpt2_rebuild" / "tokenizer.json").read_text())
    tensors, cases = {}, []
    for case in image_cases():
        cases.append(run_case(case, tensors))
        print(case["name"], cases[-1].get("pixel_values_shape"), file=sys.stderr)
    from num2words import num2words
    manifest = {
        "cases": cases,
        "videos": video_cases(load_proc("smolvlm_small")),
        "sampling": sampling_cases(),
        "animations": animation_frames(tensors),
        "gpt2_rebuild": gpt2_rebuild,
        "num2words": {str(n): num2words(n) for n in list(range(0, 130)) + [200, 999, 1000, 1001, 1234, 2000,
                                                                           10000, 12345, 100000, 999999]},
    }
    save_file(tensors, OUT / "frames.safetensors")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    from importlib.metadata import version
    versions = {"script": "tools/reference/make_idefics3_processor_fixtures.py", "transformers": transformers.__version__, "pillow": PIL.__version__, "numpy": np.__version__,
                "tokenizers": tokenizers.__version__, "num2words": version("num2words"),
                "python": sys.version.split()[0]}
    (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=2) + "\n")


if __name__ == "__main__":
    main()
