//! Training a small Llama-style tokenizer for a tiny Idefics2 from text.
//!
//! The result has the layout of Idefics2's own tokenizer (a `LlamaTokenizerFast` in transformers 5.x), so the
//! rest of the processor reads it like any checkpoint's:
//! * BPE with byte fallback: ids 0, 1, 2 are `<unk>`, `<s>`, `</s>`; ids 3..=258 are the byte tokens
//!   `<0x00>`..`<0xFF>` (any character the merges do not cover encodes as its UTF-8 bytes, so every text
//!   encodes and nothing maps to `<unk>`); then the learned tokens;
//! * Metaspace pre-tokenizer (`▁` for spaces, prepended to the first word), no normalizer;
//! * a `<s>` template post-processor (transformers' `add_bos_token=true`);
//! * `<fake_token_around_image>`, `<image>`, `<end_of_utterance>` appended as special added tokens at the end of
//!   the vocabulary, as idefics2-8b has them at 32000-32002.
//!
//! Training splits the text on `▁` (each word a BPE "word", as sentencepiece does); the saved tokenizer uses
//! `split: false` like Llama's. Merges never contain an inner `▁`, so the two encode identically.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{
    DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, Tokenizer, TokenizerBuilder,
    TokenizerImpl,
};

use crate::prompt::PromptError;

/// Ordinary special tokens at the start of the vocabulary (`<unk>` = 0 is also the pad token).
pub const BASE_SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];
/// Idefics2's special tokens, appended at the end of the vocabulary.
pub const IDEFICS2_SPECIALS: [&str; 3] =
    ["<fake_token_around_image>", "<image>", "<end_of_utterance>"];
/// Byte-fallback tokens.
const N_BYTES: usize = 256;

/// The chat template of Idefics2 (HuggingFaceM4/idefics2-8b's `chat_template`).
pub const IDEFICS2_CHAT_TEMPLATE: &str = "{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

/// Settings of [`train_tokenizer`].
#[derive(Debug, Clone)]
pub struct TokenizerTrainOptions {
    /// Total vocabulary size, special and byte tokens included.
    pub vocab_size: usize,
    /// Pairs seen fewer times are not merged.
    pub min_frequency: u64,
}

impl Default for TokenizerTrainOptions {
    fn default() -> Self {
        Self {
            vocab_size: 1024,
            min_frequency: 2,
        }
    }
}

/// The fewest tokens a vocabulary can have: the specials and the byte tokens.
pub fn min_vocab_size() -> usize {
    BASE_SPECIALS.len() + N_BYTES + IDEFICS2_SPECIALS.len()
}

fn err(msg: impl std::fmt::Display) -> PromptError {
    PromptError::Tokenizer(msg.to_string())
}

fn byte_token(b: usize) -> String {
    format!("<0x{b:02X}>")
}

/// Trains the tokenizer on `texts` and returns it as a `tokenizers` tokenizer (ready for [`save_tokenizer_dir`]).
pub fn train_tokenizer<I, S>(
    texts: I,
    opts: &TokenizerTrainOptions,
) -> Result<Tokenizer, PromptError>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let fixed = min_vocab_size();
    if opts.vocab_size <= fixed {
        return Err(err(format!(
            "vocab_size {} is too small: the special and byte tokens alone take {fixed}",
            opts.vocab_size
        )));
    }
    let learned = opts.vocab_size - fixed;
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(learned)
        .min_frequency(opts.min_frequency)
        // Rare characters beyond the budget fall back to bytes, so the size is exact.
        .limit_alphabet(learned)
        .show_progress(false)
        .build();
    let mut tok: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        Metaspace,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, true)))
        .build()
        .map_err(err)?;
    tok.train(&mut trainer, texts).map_err(err)?;
    let trained = serde_json::to_value(tok.get_model()).map_err(err)?;
    let mut learned_vocab: Vec<(String, u64)> = trained
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| err("trained BPE has no vocab"))?
        .iter()
        .filter_map(|(k, v)| v.as_u64().map(|id| (k.clone(), id)))
        .collect();
    learned_vocab.sort_by_key(|(_, id)| *id);
    let merges = trained
        .get("merges")
        .cloned()
        .unwrap_or(Value::Array(vec![]));
    if learned_vocab.is_empty() {
        return Err(err(
            "no text to train on (the data has no captions, turns or documents)",
        ));
    }

    // Final vocabulary: specials, bytes, learned tokens (in the trainer's order), Idefics2 specials.
    let mut vocab: BTreeMap<String, u64> = BTreeMap::new();
    // Ids are consecutive: a new token gets the current size.
    let push = |vocab: &mut BTreeMap<String, u64>, t: String| {
        let id = vocab.len() as u64;
        vocab.entry(t).or_insert(id);
    };
    for s in BASE_SPECIALS {
        push(&mut vocab, s.to_string());
    }
    for b in 0..N_BYTES {
        push(&mut vocab, byte_token(b));
    }
    for (t, _) in learned_vocab {
        push(&mut vocab, t);
    }
    let mut added = Vec::new();
    for (i, s) in BASE_SPECIALS.iter().enumerate() {
        added.push(added_token(i as u64, s));
    }
    for s in IDEFICS2_SPECIALS {
        added.push(added_token(vocab.len() as u64, s));
        push(&mut vocab, s.to_string());
    }
    let model_vocab: serde_json::Map<String, Value> = vocab
        .iter()
        .filter(|(t, _)| !IDEFICS2_SPECIALS.contains(&t.as_str()))
        .map(|(t, id)| (t.clone(), json!(id)))
        .collect();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": model_vocab, "merges": merges
        }
    });
    let text = serde_json::to_string(&spec).map_err(err)?;
    let tokenizer: Tokenizer = text.parse().map_err(err)?;
    tracing::info!(vocab = tokenizer.get_vocab_size(true), "trained tokenizer");
    Ok(tokenizer)
}

fn added_token(id: u64, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": true})
}

/// `tokenizer_config.json` of a Llama-style Idefics2 tokenizer (as transformers 5.24 writes it).
pub fn tokenizer_config_json() -> Value {
    json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "add_prefix_space": null,
        "backend": "tokenizers",
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": false,
        "eos_token": "</s>",
        "extra_special_tokens": ["<end_of_utterance>"],
        "legacy": false,
        "model_max_length": 1000000000000000019884624838656u128 as f64,
        "pad_token": "<unk>",
        "processor_class": "Idefics2Processor",
        "spaces_between_special_tokens": false,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": false
    })
}

/// Writes `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and `chat_template.jinja`.
pub fn save_tokenizer_dir(tokenizer: &Tokenizer, dir: &Path) -> Result<(), PromptError> {
    std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| err(format!("{}: {e}", path.display())))
    };
    let tj = tokenizer.to_string(true).map_err(err)?;
    write("tokenizer.json", tj)?;
    let pretty = |v: &Value| {
        serde_json::to_string_pretty(v)
            .map(|s| s + "\n")
            .map_err(err)
    };
    write("tokenizer_config.json", pretty(&tokenizer_config_json())?)?;
    let map = json!({
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>",
        "additional_special_tokens": IDEFICS2_SPECIALS,
    });
    write("special_tokens_map.json", pretty(&map)?)?;
    write("chat_template.jinja", IDEFICS2_CHAT_TEMPLATE.to_string())?;
    Ok(())
}

/// Ids of the tokens a model config needs, looked up in a trained tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyTokenIds {
    pub pad: u32,
    pub bos: u32,
    pub eos: u32,
    pub fake_image: u32,
    pub image: u32,
    pub end_of_utterance: u32,
    pub vocab_size: usize,
}

impl TinyTokenIds {
    /// Looks every token up; a tokenizer lacking one is an error naming it.
    pub fn of(tokenizer: &Tokenizer) -> Result<Self, PromptError> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| err(format!("the tokenizer has no {t} token")))
        };
        Ok(Self {
            pad: id("<unk>")?,
            bos: id("<s>")?,
            eos: id("</s>")?,
            fake_image: id("<fake_token_around_image>")?,
            image: id("<image>")?,
            end_of_utterance: id("<end_of_utterance>")?,
            vocab_size: tokenizer.get_vocab_size(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        let mut v = Vec::new();
        for i in 0..60 {
            v.push(format!("a red circle above a blue square number {i}"));
            v.push(format!(
                "the chart shows {} bars; the tallest is green",
                i % 7
            ));
        }
        v
    }

    #[test]
    fn trained_tokenizer_has_the_idefics2_layout_and_encodes_anything() {
        let opts = TokenizerTrainOptions {
            vocab_size: 300,
            min_frequency: 2,
        };
        let tok = train_tokenizer(corpus().into_iter(), &opts).unwrap();
        assert_eq!(tok.get_vocab_size(true), 300);
        let ids = TinyTokenIds::of(&tok).unwrap();
        assert_eq!((ids.pad, ids.bos, ids.eos), (0, 1, 2));
        assert_eq!(
            (ids.fake_image, ids.image, ids.end_of_utterance),
            (297, 298, 299)
        );
        assert_eq!(tok.token_to_id("<0x00>"), Some(3));
        assert_eq!(tok.token_to_id("<0xFF>"), Some(258));
        // Learned merges shorten common words; unseen characters fall back to bytes, never <unk>.
        let enc = tok.encode("a red circle", true).unwrap();
        assert_eq!(enc.get_ids()[0], 1, "BOS first");
        assert!(enc.get_ids().len() < 1 + "a red circle".len());
        let text = "Ünïcödé ☃ <image> ok";
        let enc = tok.encode(text, false).unwrap();
        assert!(!enc.get_ids().contains(&0));
        assert!(enc.get_ids().contains(&298), "<image> is one special token");
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    }

    #[test]
    fn saved_dir_loads_in_the_processor() {
        let opts = TokenizerTrainOptions {
            vocab_size: 320,
            min_frequency: 2,
        };
        let tok = train_tokenizer(corpus().into_iter(), &opts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_tokenizer_dir(&tok, dir.path()).unwrap();
        let t = crate::TextTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(t.vocab_size(), 320);
        assert_eq!(t.token_to_id("<end_of_utterance>"), Some(319));
        let tpl = crate::ChatTemplate::from_dir(dir.path(), &t);
        assert!(tpl.is_ok(), "chat template loads: {:?}", tpl.err());
    }

    #[test]
    fn too_small_vocab_is_refused() {
        let opts = TokenizerTrainOptions {
            vocab_size: 100,
            min_frequency: 2,
        };
        let e = train_tokenizer(corpus().into_iter(), &opts).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
    }
}
