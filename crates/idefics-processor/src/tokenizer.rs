//! The checkpoint's text tokenizer (tokenizer.json + tokenizer_config.json), run as transformers 5.x runs it.
//!
//! Three things differ from "load tokenizer.json and call encode":
//! * transformers 5.x rebuilds a `LlamaTokenizer`'s pipeline from the vocabulary instead of trusting the file's
//!   normalizer / pre-tokenizer (transformers src/transformers/models/llama/tokenization_llama.py): no normalizer,
//!   `Metaspace("▁", prepend_scheme = "first" when legacy=false, split=false)`. idefics2-8b ships a legacy
//!   Mistral tokenizer.json (`Prepend("▁")` normalizer), so without the rebuild "<image>What" would give "▁What"
//!   where transformers gives "What". We do the same rebuild.
//! * `GPT2Tokenizer` (SmolVLM) is rebuilt the same way: no normalizer, a plain `ByteLevel` pre-tokenizer
//!   (src/transformers/models/gpt2/tokenization_gpt2.py), whatever tokenizer.json holds.
//! * Chat text from users is encoded with special-token parsing off ([`TextTokenizer::encode_pieces`]), so that a
//!   literal "<image>" typed by a user stays text.

use std::path::Path;

use serde::Deserialize;
use tokenizers::pre_tokenizers::metaspace::PrependScheme;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::prompt::PromptError;

/// The Idefics2 special tokens the processor writes (processing_idefics2.py adds them when missing).
pub const FAKE_IMAGE_TOKEN: &str = "<fake_token_around_image>";
/// One `<image>` token stands for one perceiver latent of one (sub-)image.
pub const IMAGE_TOKEN: &str = "<image>";
/// End of a chat turn; generation stops on it.
pub const END_OF_UTTERANCE_TOKEN: &str = "<end_of_utterance>";

/// A special token in tokenizer_config.json: either a plain string or an `AddedToken` dict.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Added { content: String },
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            TokenSpec::Plain(s) => s,
            TokenSpec::Added { content } => content,
        }
    }
}

/// The fields of tokenizer_config.json that change token ids.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenizerConfig {
    /// e.g. "LlamaTokenizer" / "LlamaTokenizerFast" (the pipeline rebuild applies to these).
    #[serde(default)]
    pub tokenizer_class: Option<String>,
    /// Prepend BOS (`None` = keep tokenizer.json's post-processor).
    #[serde(default)]
    pub add_bos_token: Option<bool>,
    /// Append EOS (`None` = keep tokenizer.json's post-processor).
    #[serde(default)]
    pub add_eos_token: Option<bool>,
    /// SentencePiece legacy mode (transformers 5.x `LlamaTokenizer` default: false).
    #[serde(default)]
    pub legacy: Option<bool>,
    /// Prefix the first word with "▁" (transformers `LlamaTokenizer` default: true).
    #[serde(default)]
    pub add_prefix_space: Option<bool>,
    #[serde(default)]
    bos_token: Option<TokenSpec>,
    #[serde(default)]
    eos_token: Option<TokenSpec>,
    #[serde(default)]
    pad_token: Option<TokenSpec>,
    #[serde(default)]
    unk_token: Option<TokenSpec>,
    /// A chat template stored in the tokenizer config (lowest precedence, see chat_template.rs).
    #[serde(default)]
    pub chat_template: Option<serde_json::Value>,
}

impl TokenizerConfig {
    /// BOS token string, if configured.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_ref().map(TokenSpec::content)
    }
    /// EOS token string, if configured.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_ref().map(TokenSpec::content)
    }
    /// Padding token string, if configured.
    pub fn pad_token(&self) -> Option<&str> {
        self.pad_token.as_ref().map(TokenSpec::content)
    }
    /// Unknown token string, if configured.
    pub fn unk_token(&self) -> Option<&str> {
        self.unk_token.as_ref().map(TokenSpec::content)
    }
}

/// Ids of the tokens the prompt processor and generation need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokenIds {
    /// `<fake_token_around_image>`
    pub fake_image: u32,
    /// `<image>`
    pub image: u32,
    /// `<end_of_utterance>`
    pub end_of_utterance: u32,
    /// `<s>` (if the vocabulary has one)
    pub bos: Option<u32>,
    /// `</s>` (if the vocabulary has one)
    pub eos: Option<u32>,
    /// The padding token (tokenizer_config `pad_token`, idefics2: `<unk>` = 0)
    pub pad: Option<u32>,
}

/// One piece of an already-split prompt: a token id written by trusted code, or text to tokenize as plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A token id (special tokens from the template, image expansion).
    Token(u32),
    /// Text; added/special token strings inside it are NOT recognised.
    Text(String),
}

/// The checkpoint's tokenizer, configured as transformers 5.24 runs it.
#[derive(Clone)]
pub struct TextTokenizer {
    /// Full pipeline, special-token parsing on: what `tokenizer(text)` does in transformers.
    inner: Tokenizer,
    /// Special-token parsing off, for text at the start of a prompt.
    plain_first: Tokenizer,
    /// Special-token parsing off and no "▁" prefix, for text that follows a token: with Metaspace
    /// `prepend_scheme="first"` only the split at offset 0 of the whole prompt gets the prefix.
    plain_rest: Tokenizer,
    /// Ids the post-processor puts before / after a single sequence (BOS / EOS).
    prefix_ids: Vec<u32>,
    suffix_ids: Vec<u32>,
    special: SpecialTokenIds,
    config: TokenizerConfig,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .finish()
    }
}

fn tok_err(file: &Path, e: impl std::fmt::Display) -> PromptError {
    PromptError::Tokenizer(format!("{}: {e}", file.display()))
}

impl TextTokenizer {
    /// Load `tokenizer.json` and (if present) `tokenizer_config.json` from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self, PromptError> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| tok_err(&config_path, e))?;
            serde_json::from_str(&text).map_err(|e| tok_err(&config_path, e))?
        } else {
            TokenizerConfig::default()
        };
        Self::from_file(&dir.join("tokenizer.json"), config)
    }

    /// Load a tokenizer.json with an explicit tokenizer config.
    pub fn from_file(tokenizer_json: &Path, config: TokenizerConfig) -> Result<Self, PromptError> {
        let mut inner =
            Tokenizer::from_file(tokenizer_json).map_err(|e| tok_err(tokenizer_json, e))?;
        if is_llama_class(config.tokenizer_class.as_deref()) {
            rebuild_llama_pipeline(&mut inner, &config).map_err(|e| tok_err(tokenizer_json, e))?;
        } else if is_gpt2_class(config.tokenizer_class.as_deref()) {
            rebuild_gpt2_pipeline(&mut inner, &config).map_err(|e| tok_err(tokenizer_json, e))?;
        }
        // processing_idefics2.py adds the image tokens and <end_of_utterance> when the tokenizer lacks them.
        let missing: Vec<AddedToken> = [FAKE_IMAGE_TOKEN, IMAGE_TOKEN, END_OF_UTTERANCE_TOKEN]
            .iter()
            .filter(|t| inner.token_to_id(t).is_none())
            .map(|t| AddedToken::from(*t, true))
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                n = missing.len(),
                "tokenizer lacks Idefics2 special tokens; adding them like transformers"
            );
            inner
                .add_special_tokens(missing)
                .map_err(|e| tok_err(tokenizer_json, e))?;
        }
        let id = |t: &str| inner.token_to_id(t);
        let required =
            |t: &str| id(t).ok_or_else(|| tok_err(tokenizer_json, format!("token {t} has no id")));
        let special = SpecialTokenIds {
            fake_image: required(FAKE_IMAGE_TOKEN)?,
            image: required(IMAGE_TOKEN)?,
            end_of_utterance: required(END_OF_UTTERANCE_TOKEN)?,
            bos: id(config.bos_token().unwrap_or("<s>")),
            eos: id(config.eos_token().unwrap_or("</s>")),
            pad: config.pad_token().and_then(id),
        };

        let mut plain_first = inner.clone();
        plain_first.set_encode_special_tokens(true);
        let mut plain_rest = plain_first.clone();
        if let Some(PreTokenizerWrapper::Metaspace(m)) = plain_rest.get_pre_tokenizer() {
            if m.get_prepend_scheme() == PrependScheme::First {
                let mut m = m.clone();
                m.set_prepend_scheme(PrependScheme::Never);
                plain_rest.with_pre_tokenizer(Some(m));
            }
        }

        // Find what the post-processor adds around a sequence by encoding a probe with and without it.
        let probe = "a";
        let bare = inner
            .encode(probe, false)
            .map_err(|e| tok_err(tokenizer_json, e))?;
        let full = inner
            .encode(probe, true)
            .map_err(|e| tok_err(tokenizer_json, e))?;
        let (bare, full) = (bare.get_ids(), full.get_ids());
        let start = (0..=full.len().saturating_sub(bare.len()))
            .find(|&s| full.get(s..s + bare.len()) == Some(bare))
            .ok_or_else(|| tok_err(tokenizer_json, "post-processor changes the sequence itself"))?;
        let prefix_ids = full[..start].to_vec();
        let suffix_ids = full[start + bare.len()..].to_vec();

        Ok(Self {
            inner,
            plain_first,
            plain_rest,
            prefix_ids,
            suffix_ids,
            special,
            config,
        })
    }

    /// Encode a prompt exactly as transformers' `tokenizer(text, add_special_tokens=...)`: added tokens written in
    /// `text` (e.g. "<image>") ARE recognised. Use for trusted, already-expanded prompts.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, PromptError> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| PromptError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encode a sequence of pieces: token ids are taken as they are, text is tokenized with special-token parsing
    /// off. For text without added-token strings this gives the same ids as [`Self::encode`] on the concatenation
    /// (added tokens split the input before the pre-tokenizer anyway).
    pub fn encode_pieces(
        &self,
        pieces: &[Piece],
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, PromptError> {
        let mut ids = Vec::new();
        if add_special_tokens {
            ids.extend_from_slice(&self.prefix_ids);
        }
        let mut at_start = true;
        for piece in pieces {
            match piece {
                Piece::Token(id) => ids.push(*id),
                Piece::Text(text) if text.is_empty() => continue,
                Piece::Text(text) => {
                    let tok = if at_start {
                        &self.plain_first
                    } else {
                        &self.plain_rest
                    };
                    let enc = tok
                        .encode(text.as_str(), false)
                        .map_err(|e| PromptError::Tokenizer(e.to_string()))?;
                    ids.extend_from_slice(enc.get_ids());
                }
            }
            at_start = false;
        }
        if add_special_tokens {
            ids.extend_from_slice(&self.suffix_ids);
        }
        Ok(ids)
    }

    /// Decode ids to text (as `tokenizer.decode(ids, skip_special_tokens=...)`).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, PromptError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| PromptError::Tokenizer(e.to_string()))
    }

    /// The ids of the Idefics2 special tokens.
    pub fn special_ids(&self) -> SpecialTokenIds {
        self.special
    }

    /// Id of a token string, if it is in the vocabulary (including added tokens).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Contents of all added tokens (special or not), longest first: the strings a chat template may write as
    /// control tokens and that user text must not be able to produce.
    pub fn added_token_strings(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .get_added_tokens_decoder()
            .into_values()
            .map(|t| t.content)
            .filter(|s| !s.is_empty())
            .collect();
        v.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        v.dedup();
        v
    }

    /// The parsed tokenizer_config.json.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// The underlying `tokenizers` tokenizer (full pipeline, as transformers runs it).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

fn is_llama_class(class: Option<&str>) -> bool {
    matches!(class, Some("LlamaTokenizer" | "LlamaTokenizerFast"))
}

fn is_gpt2_class(class: Option<&str>) -> bool {
    matches!(class, Some("GPT2Tokenizer" | "GPT2TokenizerFast"))
}

/// Mirror transformers 5.x `GPT2Tokenizer.__init__` (src/transformers/models/gpt2/tokenization_gpt2.py; the SmolVLM
/// checkpoints' class): the pipeline is rebuilt from the vocabulary, so tokenizer.json's normalizer is dropped and
/// its pre-tokenizer (SmolLM's `Digits` + `ByteLevel`) becomes a plain `ByteLevel(add_prefix_space)`; the
/// post-processor is kept.
fn rebuild_gpt2_pipeline(tok: &mut Tokenizer, config: &TokenizerConfig) -> Result<(), String> {
    let add_prefix_space = config.add_prefix_space.unwrap_or(false);
    let byte_level = |prefix: bool| {
        serde_json::json!({
            "type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": true, "use_regex": true
        })
    };
    let pre: PreTokenizerWrapper =
        serde_json::from_value(byte_level(add_prefix_space)).map_err(|e| e.to_string())?;
    let decoder: tokenizers::DecoderWrapper =
        serde_json::from_value(byte_level(true)).map_err(|e| e.to_string())?;
    tok.with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .map_err(|e| e.to_string())?;
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(decoder));
    Ok(())
}

/// Mirror transformers 5.x `LlamaTokenizer.__init__` + `update_post_processor` on a loaded tokenizer.json.
fn rebuild_llama_pipeline(tok: &mut Tokenizer, config: &TokenizerConfig) -> Result<(), String> {
    let add_prefix_space = config.add_prefix_space.unwrap_or(true);
    let legacy = config.legacy.unwrap_or(false);
    let scheme = match (add_prefix_space, legacy) {
        (true, false) => "first",
        (true, true) => "always",
        (false, _) => "never",
    };
    let pre: PreTokenizerWrapper = serde_json::from_value(serde_json::json!({
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false
    }))
    .map_err(|e| e.to_string())?;
    let mut decoders = vec![
        serde_json::json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        serde_json::json!({"type": "ByteFallback"}),
        serde_json::json!({"type": "Fuse"}),
    ];
    if add_prefix_space {
        decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let decoder: tokenizers::DecoderWrapper =
        serde_json::from_value(serde_json::json!({"type": "Sequence", "decoders": decoders}))
            .map_err(|e| e.to_string())?;
    tok.with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .map_err(|e| e.to_string())?;
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(decoder));

    // update_post_processor runs when add_bos_token / add_eos_token are given explicitly (or no post-processor).
    if config.add_bos_token.is_some()
        || config.add_eos_token.is_some()
        || tok.get_post_processor().is_none()
    {
        let add_bos = config.add_bos_token.unwrap_or(false);
        let add_eos = config.add_eos_token.unwrap_or(false);
        let bos = config.bos_token().unwrap_or("<s>").to_string();
        let eos = config.eos_token().unwrap_or("</s>").to_string();
        let mut special = Vec::new();
        let mut single = Vec::new();
        let mut pair = Vec::new();
        if add_bos {
            let id = tok
                .token_to_id(&bos)
                .ok_or_else(|| format!("bos_token {bos} not in vocabulary"))?;
            special.push(serde_json::json!({"id": bos, "ids": [id], "tokens": [bos]}));
            single.push(serde_json::json!({"SpecialToken": {"id": bos, "type_id": 0}}));
        }
        single.push(serde_json::json!({"Sequence": {"id": "A", "type_id": 0}}));
        if add_eos {
            let id = tok
                .token_to_id(&eos)
                .ok_or_else(|| format!("eos_token {eos} not in vocabulary"))?;
            special.push(serde_json::json!({"id": eos, "ids": [id], "tokens": [eos]}));
            single.push(serde_json::json!({"SpecialToken": {"id": eos, "type_id": 0}}));
        }
        pair.extend(single.iter().cloned());
        if add_bos {
            pair.push(serde_json::json!({"SpecialToken": {"id": bos, "type_id": 1}}));
        }
        pair.push(serde_json::json!({"Sequence": {"id": "B", "type_id": 1}}));
        if add_eos {
            pair.push(serde_json::json!({"SpecialToken": {"id": eos, "type_id": 1}}));
        }
        let special_map: serde_json::Map<String, serde_json::Value> = special
            .into_iter()
            .filter_map(|v| Some((v.get("id")?.as_str()?.to_string(), v)))
            .collect();
        let post: tokenizers::PostProcessorWrapper = serde_json::from_value(serde_json::json!({
            "type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_map
        }))
        .map_err(|e| e.to_string())?;
        tok.with_post_processor(Some(post));
    }
    Ok(())
}
