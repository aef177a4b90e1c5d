"""Reference input_ids / rendered chat templates for the Rust prompt processor (tests/fixtures/prompts/).

Runs transformers' Idefics2Processor loaded from tests/fixtures/tokenizer (see make_tokenizer.py) on
  * raw prompts with 0 / 1 / several `<image>`, adjacent images, text before/after, unicode, splitting on / off
    -> prompts.json: {"prompt", "n_images", "do_image_splitting", "input_ids"};
  * plain tokenizer calls -> tokenizer.json: {"text", "add_special_tokens", "ids"} for both tokenizer layouts
    (tests/fixtures/tokenizer and tests/fixtures/tokenizer/legacy_json);
  * chat conversations -> chat.json: {"messages", "add_generation_prompt", "rendered", "input_ids",
    "do_image_splitting"}.
The splitting flag is set on the image processor attribute, because transformers 5.24 expands the text from that
attribute and not from a per-call `do_image_splitting` (processing_idefics2.py); both then agree.
Dummy images are small solid colours: the text does not depend on the image size.

Run: /work/.venv/bin/python tools/reference/make_prompt_fixtures.py
"""

import json
import pathlib

import PIL
import tokenizers
import transformers
from PIL import Image
from transformers import AutoTokenizer, Idefics2Processor

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOK_DIR = ROOT / "tests" / "fixtures" / "tokenizer"
OUT = ROOT / "tests" / "fixtures" / "prompts"

PROMPTS = [
    "What do we see in this image?",
    "<image>",
    "<image>What do we see in this image?",
    "User:<image>What do we see in this image?<end_of_utterance>\nAssistant:",
    "User: Describe <image> please.<end_of_utterance>\nAssistant:",
    "<image><image>Compare the two pictures.",
    "First <image> then <image>\nand the last one:<image>",
    "The answer is<image> yes",
    "<image> leading space and trailing <image>",
    "<image>\tTab after the image",
    "<image><end_of_utterance>",
    "Ünïcödé text: café, naïve, 東京, emoji 🙂 <image>Ça va?",
    "  two leading spaces and a double  space",
    "newlines\n\nin the middle\n",
    "<image>.",
    "<image>,<image>?",
    "<fake_token_around_image><image>",
    "<image><fake_token_around_image>text",
]

TOKENIZER_TEXTS = [
    "Hello world",
    " leading space",
    "What do we see in this image?",
    "Ünïcödé 東京 🙂",
    "<image>What",
    "User:<image>What<end_of_utterance>\nAssistant:",
    "tabs\tand\nnewlines\n\n",
    "",
    "The children are playing in the park.",
    "<s>literal bos</s>",
]

CHATS = [
    {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What do we see in this image?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "In this image, we can see the city of New York."}]},
            {"role": "user", "content": [{"type": "text", "text": "And how about this image?"}, {"type": "image"}]},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "No image here, just text."}]}],
        "add_generation_prompt": True,
    },
    {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Without generation prompt."}]}],
        "add_generation_prompt": False,
    },
    {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
            {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Two pictures."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Ünïcödé?"}]},
        ],
        "add_generation_prompt": True,
    },
]


def dummy_images(n: int) -> list:
    return [Image.new("RGB", (40 + 8 * i, 30 + 4 * i), (20 * i, 80, 160)) for i in range(n)]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    processor = Idefics2Processor.from_pretrained(TOK_DIR)
    versions = {
        "script": "tools/reference/make_prompt_fixtures.py",
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "PIL": PIL.__version__,
        "image_seq_len": processor.image_seq_len,
    }

    cases = []
    for split in (True, False):
        processor.image_processor.do_image_splitting = split
        for prompt in PROMPTS:
            n = prompt.count("<image>")
            out = processor(text=prompt, images=dummy_images(n) if n else None)
            if n:
                # one row per image without splitting, five with it: images and text agree
                assert out["pixel_values"].shape[1] == n * (5 if split else 1), out["pixel_values"].shape
            cases.append(
                {"prompt": prompt, "n_images": n, "do_image_splitting": split, "input_ids": out["input_ids"][0]}
            )
    write(OUT / "prompts.json", {"versions": versions, "cases": cases})

    tok_cases = []
    for layout, path in (("fixture", TOK_DIR), ("legacy_json", TOK_DIR / "legacy_json")):
        tok = AutoTokenizer.from_pretrained(path)
        for text in TOKENIZER_TEXTS:
            for add in (True, False):
                ids = tok(text, add_special_tokens=add)["input_ids"]
                tok_cases.append({"layout": layout, "text": text, "add_special_tokens": add, "ids": ids})
    write(OUT / "tokenizer.json", {"versions": versions, "cases": tok_cases})

    chat_cases = []
    for split in (True, False):
        processor.image_processor.do_image_splitting = split
        for chat in CHATS:
            rendered = processor.apply_chat_template(chat["messages"], add_generation_prompt=chat["add_generation_prompt"])
            n = rendered.count("<image>")
            out = processor(text=rendered, images=dummy_images(n) if n else None)
            chat_cases.append({**chat, "do_image_splitting": split, "rendered": rendered, "input_ids": out["input_ids"][0]})
    write(OUT / "chat.json", {"versions": versions, "cases": chat_cases})


def write(path: pathlib.Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")
    print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
