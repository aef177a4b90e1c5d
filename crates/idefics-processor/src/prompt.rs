//! Prompt -> input_ids: expansion of each `<image>` into the image-token block, then tokenization
//! (transformers src/transformers/models/idefics2/processing_idefics2.py, 5.x behaviour).
//!
//! One image becomes `<fake> <image>×image_seq_len <fake>`, five times when image splitting is on (4 crops + the
//! whole image); adjacent `<fake><fake>` collapse to one (one non-overlapping pass, like Python's `str.replace`);
//! transformers 5.x then inserts a space after a closing `<fake>` when the next character is neither whitespace nor
//! `<`. The splitting flag used here is the one the images are processed with ([`PromptProcessor::resolve_splitting`]);
//! transformers 5.24 reads the processor attribute for the text even when a call overrides it for the images,
//! which desynchronises the two - we don't copy that.

use std::path::Path;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::processor_config::ProcessorConfig;
use crate::tokenizer::{Piece, TextTokenizer, FAKE_IMAGE_TOKEN, IMAGE_TOKEN};

/// Errors of the text side of the processor (prompt, chat template, tokenizer, configs).
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// tokenizer.json / tokenizer_config.json could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A configuration file is missing or malformed.
    #[error("{file}: {message}")]
    Config {
        /// The file that failed.
        file: String,
        /// What was wrong.
        message: String,
    },
    /// The checkpoint has no chat template in any of the places transformers looks.
    #[error("no chat template found in {0} (looked in processor_config.json, chat_template.json, chat_template.jinja, tokenizer_config.json)")]
    NoChatTemplate(String),
    /// The chat template failed to compile or render (including `raise_exception` calls).
    #[error("chat template: {0}")]
    Template(String),
    /// The number of image slots in the prompt differs from the number of images given.
    #[error("the prompt has {slots} image slot(s) (`<image>` or image parts) but {images} image(s) were given")]
    ImageCountMismatch {
        /// `<image>` occurrences (raw prompt) or image parts (chat).
        slots: usize,
        /// Images provided by the caller.
        images: usize,
    },
    /// The image processor produced a number of (sub-)images that does not match the text expansion.
    #[error(
        "the text expects {expected} image rows ({images} image(s), splitting {splitting}) but pixel_values has {got}"
    )]
    ImageRowsMismatch {
        /// Rows the text needs.
        expected: usize,
        /// Rows the images produced.
        got: usize,
        /// Images in the prompt.
        images: usize,
        /// The splitting flag the text was expanded with.
        splitting: bool,
    },
    /// A chat message is malformed (e.g. an empty message list).
    #[error("chat messages: {0}")]
    Messages(String),
}

/// Number of sub-images one image becomes: 4 crops + the whole image with splitting, else 1.
pub fn sub_images_per_image(do_image_splitting: bool) -> usize {
    if do_image_splitting {
        5
    } else {
        1
    }
}

/// The text one `<image>` is replaced with (before collapsing adjacent fake tokens).
pub fn image_block(image_seq_len: usize, do_image_splitting: bool) -> String {
    let one = format!(
        "{FAKE_IMAGE_TOKEN}{}{FAKE_IMAGE_TOKEN}",
        IMAGE_TOKEN.repeat(image_seq_len)
    );
    one.repeat(sub_images_per_image(do_image_splitting))
}

/// Expand every `<image>` of a raw prompt as transformers 5.x does (string level). The result is what the
/// tokenizer is called on.
pub fn expand_image_tokens(prompt: &str, image_seq_len: usize, do_image_splitting: bool) -> String {
    let expanded = prompt.replace(IMAGE_TOKEN, &image_block(image_seq_len, do_image_splitting));
    let collapsed = expanded.replace(
        &format!("{FAKE_IMAGE_TOKEN}{FAKE_IMAGE_TOKEN}"),
        FAKE_IMAGE_TOKEN,
    );
    // 5.x: `re.sub(fake(?=[^\s<]), fake + " ")` - keep the word after an image word-boundary aligned.
    let mut out = String::with_capacity(collapsed.len() + 16);
    let mut rest = collapsed.as_str();
    while let Some(pos) = rest.find(FAKE_IMAGE_TOKEN) {
        let end = pos + FAKE_IMAGE_TOKEN.len();
        out.push_str(&rest[..end]);
        rest = &rest[end..];
        if rest
            .chars()
            .next()
            .is_some_and(|c| !c.is_whitespace() && c != '<')
        {
            out.push(' ');
        }
    }
    out.push_str(rest);
    out
}

/// A tokenized prompt and what the image side must produce to match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPrompt {
    /// Token ids, BOS included (as transformers' processor returns them).
    pub input_ids: Vec<u32>,
    /// Image slots in the prompt, in order.
    pub n_images: usize,
    /// The splitting flag the text was expanded with; process the images with the same flag.
    pub do_image_splitting: bool,
    /// The prompt text before expansion (for chats: the rendered template).
    pub text: String,
}

impl EncodedPrompt {
    /// Number of (sub-)image rows pixel_values must have for this prompt.
    pub fn expected_image_rows(&self) -> usize {
        self.n_images * sub_images_per_image(self.do_image_splitting)
    }

    /// Refuse pixel_values whose (sub-)image count does not match the text.
    pub fn check_image_rows(&self, rows: usize) -> Result<(), PromptError> {
        let expected = self.expected_image_rows();
        if rows != expected {
            return Err(PromptError::ImageRowsMismatch {
                expected,
                got: rows,
                images: self.n_images,
                splitting: self.do_image_splitting,
            });
        }
        Ok(())
    }
}

/// Text side of the Idefics2 processor: tokenizer + image-token expansion + chat template.
#[derive(Debug, Clone)]
pub struct PromptProcessor {
    tokenizer: TextTokenizer,
    config: ProcessorConfig,
    chat_template: Option<ChatTemplate>,
}

impl PromptProcessor {
    /// Load tokenizer, processor configuration and chat template from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self, PromptError> {
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let config = ProcessorConfig::from_dir(dir)?;
        let chat_template = match ChatTemplate::from_dir(dir, &tokenizer) {
            Ok(t) => Some(t),
            Err(PromptError::NoChatTemplate(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(Self {
            tokenizer,
            config,
            chat_template,
        })
    }

    /// Assemble from parts.
    pub fn new(
        tokenizer: TextTokenizer,
        config: ProcessorConfig,
        chat_template: Option<ChatTemplate>,
    ) -> Self {
        Self {
            tokenizer,
            config,
            chat_template,
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The processor configuration.
    pub fn config(&self) -> &ProcessorConfig {
        &self.config
    }

    /// The chat template, if the checkpoint has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The splitting flag for one call: the override if given, else the checkpoint's image-processor setting.
    /// Use the returned value for the images too.
    pub fn resolve_splitting(&self, override_splitting: Option<bool>) -> bool {
        override_splitting.unwrap_or(self.config.do_image_splitting)
    }

    /// Tokenize a raw prompt in which each `<image>` marks one image (transformers' `processor(text, images)`).
    /// `n_images` is the number of images the caller will pass; it must equal the number of `<image>`.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        n_images: usize,
        override_splitting: Option<bool>,
    ) -> Result<EncodedPrompt, PromptError> {
        let slots = prompt.matches(IMAGE_TOKEN).count();
        if slots != n_images {
            return Err(PromptError::ImageCountMismatch {
                slots,
                images: n_images,
            });
        }
        let splitting = self.resolve_splitting(override_splitting);
        let expanded = expand_image_tokens(prompt, self.config.image_seq_len, splitting);
        let input_ids = self.tokenizer.encode(&expanded, true)?;
        Ok(EncodedPrompt {
            input_ids,
            n_images,
            do_image_splitting: splitting,
            text: prompt.to_string(),
        })
    }

    /// Render a chat with the checkpoint's template and tokenize it. Only image parts of the messages become
    /// image slots; control-token strings typed in message text stay plain text.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        n_images: usize,
        override_splitting: Option<bool>,
    ) -> Result<EncodedPrompt, PromptError> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| PromptError::NoChatTemplate("this checkpoint".to_string()))?;
        let rendered = template.render_pieces(messages, add_generation_prompt)?;
        let slots = rendered.image_slots();
        if slots != n_images {
            return Err(PromptError::ImageCountMismatch {
                slots,
                images: n_images,
            });
        }
        let splitting = self.resolve_splitting(override_splitting);
        let ids = self.tokenizer.special_ids();
        let pieces = expand_pieces(
            &rendered.pieces,
            ids.image,
            ids.fake_image,
            self.config.image_seq_len,
            splitting,
        );
        // transformers' processor apply_chat_template(tokenize=True): no second BOS when the template writes one
        // (Idefics3 / SmolVLM templates start with it).
        let template_wrote_bos = self
            .tokenizer
            .config()
            .bos_token()
            .is_some_and(|bos| !bos.is_empty() && rendered.text.starts_with(bos));
        let input_ids = self.tokenizer.encode_pieces(&pieces, !template_wrote_bos)?;
        Ok(EncodedPrompt {
            input_ids,
            n_images,
            do_image_splitting: splitting,
            text: rendered.text,
        })
    }
}

/// The piece-level twin of [`expand_image_tokens`], for prompts whose image slots and control tokens are already
/// known (chat path): `Token(image)` pieces are image slots; text never is.
pub fn expand_pieces(
    pieces: &[Piece],
    image_id: u32,
    fake_id: u32,
    image_seq_len: usize,
    do_image_splitting: bool,
) -> Vec<Piece> {
    let mut expanded: Vec<Piece> = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match piece {
            Piece::Token(id) if *id == image_id => {
                for _ in 0..sub_images_per_image(do_image_splitting) {
                    expanded.push(Piece::Token(fake_id));
                    expanded.extend(std::iter::repeat_n(Piece::Token(image_id), image_seq_len));
                    expanded.push(Piece::Token(fake_id));
                }
            }
            Piece::Text(t) if t.is_empty() => {}
            // Merge adjacent text so that tokenization does not break inside a word.
            Piece::Text(t) => match expanded.last_mut() {
                Some(Piece::Text(prev)) => prev.push_str(t),
                _ => expanded.push(piece.clone()),
            },
            other => expanded.push(other.clone()),
        }
    }
    // Collapse `<fake><fake>` pairs in one left-to-right non-overlapping pass (Python str.replace semantics).
    let mut collapsed: Vec<Piece> = Vec::with_capacity(expanded.len());
    let mut i = 0;
    while i < expanded.len() {
        let is_fake = |p: Option<&Piece>| matches!(p, Some(Piece::Token(id)) if *id == fake_id);
        if is_fake(expanded.get(i)) && is_fake(expanded.get(i + 1)) {
            collapsed.push(Piece::Token(fake_id));
            i += 2;
        } else if let Some(p) = expanded.get(i) {
            collapsed.push(p.clone());
            i += 1;
        } else {
            break;
        }
    }
    // 5.x spacing rule after a fake token (text pieces never start with a control token here: a following token
    // would be its own piece, and every Idefics control token starts with '<').
    for i in 1..collapsed.len() {
        let after_fake = matches!(collapsed.get(i - 1), Some(Piece::Token(id)) if *id == fake_id);
        if let (true, Some(Piece::Text(t))) = (after_fake, collapsed.get_mut(i)) {
            if t.chars()
                .next()
                .is_some_and(|c| !c.is_whitespace() && c != '<')
            {
                t.insert(0, ' ');
            }
        }
    }
    collapsed
}
