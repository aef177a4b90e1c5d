"""Build the tiny Llama-style tokenizer + Idefics2Processor fixture in tests/fixtures/tokenizer/.

Layout (ids are fixed: the tiny model checkpoints use them):
  0 <unk>, 1 <s>, 2 </s>, 3..258 byte-fallback pieces <0x00>..<0xFF>, 259..319 BPE pieces trained below,
  320 <fake_token_around_image>, 321 <image>, 322 <end_of_utterance>  (vocab 323).
The tokenizer is transformers' LlamaTokenizer (5.x: BPE + Metaspace "first" + byte_fallback, legacy=False,
add_bos_token=True), exactly as idefics2-8b's tokenizer_config.json asks for. The processor adds the three
Idefics2 tokens itself (processing_idefics2.py), in that order. The image processor uses the idefics2-8b
preprocessor_config.json values (spec section 1.5); the chat template is idefics2-8b's (spec section 9.3).

Run: /work/.venv/bin/python tools/reference/make_tokenizer.py
"""

import json
import pathlib

import PIL
import tokenizers
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import Idefics2ImageProcessor, Idefics2Processor, LlamaTokenizer

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tokenizer"
BASE_VOCAB = 320
N_BYTES = 256
IMAGE_SEQ_LEN = 64

# idefics2-8b processor_config.json chat template (HuggingFaceM4/idefics2-8b, hub PR #36).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# A little English to learn merges from (written for this fixture).
TEXT = """
What do we see in this image? In this image, we can see the city of New York, and more specifically the Statue
of Liberty. The statue stands on an island in the harbor. And how about this image? There is a dog on the grass
and a cat on the sofa. The weather is sunny and the sky is blue. Describe the picture in one sentence.
Answer the question using a single word or phrase. How many people are there in the photo? There are three
people. What is the color of the car? The car is red. Where is the man standing? He is standing near the
window of the house. Read the text in the image. The sign says stop. Is there a tree? Yes, there is a tall
tree next to the road. What is written on the board? The board shows the menu of the day with the prices.
The children are playing in the park while their parents are watching them from the bench.
"""


def train_pieces(n_pieces: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Train a SentencePiece-like BPE ("▁" for spaces) and keep its first `n_pieces` pieces and their merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    # 3 slots for the specials the trainer puts first; the alphabet is limited so that merges fit in the budget.
    trainer = trainers.BpeTrainer(
        vocab_size=n_pieces + 3,
        special_tokens=["<unk>", "<s>", "</s>"],
        limit_alphabet=34,
        show_progress=False,
    )
    tok.train_from_iterator([line for line in TEXT.splitlines() if line.strip()], trainer=trainer)
    data = json.loads(tok.to_str())
    vocab = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    pieces = [p for p, _ in vocab if p not in ("<unk>", "<s>", "</s>")][:n_pieces]
    kept = set(pieces)
    merges = []
    for m in data["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ")
        if a in kept and b in kept and a + b in kept:
            merges.append((a, b))
    return pieces, merges


def write_legacy_layout(out: pathlib.Path) -> None:
    """Same vocabulary, but tokenizer.json in the layout of idefics2-8b's (Mistral's) file: a legacy SentencePiece
    normalizer (Prepend "▁" + Replace " " -> "▁", no pre-tokenizer) and tokenizer_config.json with legacy=false,
    add_bos_token=true. transformers 5.x ignores that normalizer for LlamaTokenizer and rebuilds the pipeline
    (tokenization_llama.py), so the Rust side must do the same to get the same ids."""
    out.mkdir(parents=True, exist_ok=True)
    data = json.loads((OUT / "tokenizer.json").read_text())
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    data["pre_tokenizer"] = None
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "LlamaTokenizer",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    n_pieces = BASE_VOCAB - 3 - N_BYTES
    pieces, merges = train_pieces(n_pieces)
    assert len(pieces) == n_pieces, len(pieces)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(N_BYTES):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for p in pieces:
        vocab[p] = len(vocab)
    assert len(vocab) == BASE_VOCAB

    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        legacy=False,
        add_bos_token=True,
        add_eos_token=False,
        pad_token="<unk>",
        clean_up_tokenization_spaces=False,
        spaces_between_special_tokens=False,
        model_max_length=1000000000000000019884624838656,
    )
    image_processor = Idefics2ImageProcessor(
        do_convert_rgb=True,
        do_image_splitting=True,
        do_normalize=True,
        do_pad=True,
        do_rescale=True,
        do_resize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=2,
        rescale_factor=1 / 255,
        size={"longest_edge": 980, "shortest_edge": 378},
    )
    processor = Idefics2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<fake_token_around_image>", "<image>", "<end_of_utterance>")}
    assert ids == {"<fake_token_around_image>": 320, "<image>": 321, "<end_of_utterance>": 322}, ids
    assert len(tok) == 323, len(tok)

    OUT.mkdir(parents=True, exist_ok=True)
    for f in OUT.iterdir():
        if f.is_file():
            f.unlink()
    processor.save_pretrained(OUT)

    # Reload as a user would and check the ids survive the round trip.
    again = Idefics2Processor.from_pretrained(OUT)
    sample = "User:<image>What do we see?<end_of_utterance>\nAssistant:"
    enc = again(text=sample)["input_ids"]
    assert enc[0][0] == 1 and 321 in enc[0] and 322 in enc[0], enc
    (OUT / "VERSIONS.json").write_text(
        json.dumps(
            {
                "script": "tools/reference/make_tokenizer.py",
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
                "PIL": PIL.__version__,
                "image_seq_len": IMAGE_SEQ_LEN,
                "vocab_size": len(tok),
            },
            indent=2,
        )
        + "\n"
    )
    write_legacy_layout(OUT / "legacy_json")
    print("pieces:", pieces)
    print("merges:", len(merges))
    print("example:", again.tokenizer.tokenize("What do we see in this image? Ünïcode ok"))
    print("saved:", sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
