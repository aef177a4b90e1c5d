//! Samples -> training examples -> padded batches.
//!
//! API: [`CollateConfig`] (read from the TOML recipe), [`Collator::from_model_dir`], then
//! [`Collator::encode_chat`] (The Cauldron, instruction tuning), [`Collator::encode_pair`] /
//! [`Collator::encode_document`] (pre-training pieces, [`Segment`]s, that [`super::packing`] assembles into rows) and
//! [`Collator::collate`] -> [`TrainBatch`]. A sample that cannot be used gives a [`Skip`] (counted by the caller,
//! never replaced by a blank image or truncated).
//!
//! Labels (`-100` = ignored, as transformers' `ForCausalLMLoss`):
//! * chat: only the assistant answers are labelled, each with the `<end_of_utterance>` that closes it. This is
//!   what TRL's SFT does (`assistant_only_loss`: the template's `{% generation %}` span covers the answer and its
//!   end-of-turn token; the older `DataCollatorForCompletionOnlyLM` labels everything after "Assistant:" up to the
//!   next "User:", so it also includes the end-of-turn token). We stop right after `<end_of_utterance>`: the "\n"
//!   the template writes after it is formatting, never generated (generation stops at `<end_of_utterance>`).
//!   BOS, user turns, the "Assistant:" prompt, image and fake tokens and padding are `-100`.
//! * pairs: the caption and the EOS that ends it; documents: every text token and the final EOS. Image and fake
//!   tokens and BOS are `-100` (transformers' recipe: `labels[labels == image_token_id] = -100`, as in the Hugging Face Idefics2 fine-tuning tutorial).
//!
//! Chats are rendered with the checkpoint's chat template once for the whole conversation; each assistant answer
//! is located by rendering the conversation prefixes (`[..user_k]` with the generation prompt and `[..assistant_k]`
//! without) - "the template per turn" - and the rendered pieces are cut at those offsets, so that the answer
//! tokens are tokenized on their own (the cut is always before a space, a natural token boundary for Metaspace
//! tokenizers). All images of a sample go at the start of its first user turn (The Cauldron convention, as in the
//! transformers Idefics2 fine-tuning examples). Image splitting is drawn per chat sample with probability
//! `split_fraction` (paper §3.4: 50% suffices); pre-training pairs and documents are never split (the paper uses
//! splitting only in instruction tuning).
//!
//! Families: the collator writes the inputs of the checkpoint's family ([`FamilyProcessor`], from `config.json`
//! `model_type`). Idefics2 splits into 4 crops + the image and collapses adjacent fake tokens; Idefics3 / SmolVLM
//! tile each image as their image processor does and expand it into its grid's block (`<row_r_col_c>` markers,
//! `<global-img>`), which, like the image and fake tokens, is never labelled (processing_idefics3.py).

use std::path::Path;

use candle_core::Tensor;
use idefics_data::{ChatSample, ImageSource, Turn};
use idefics_processor::prompt::expand_pieces;
use idefics_processor::{
    decode_image, resize, ChatMessage, ContentPart, DecodeLimits, FamilyProcessor,
    Idefics2ImageProcessor, ModelFamily, Piece, PromptProcessor, ResampleFilter, RgbImage,
    SpecialTokenIds, TextTokenizer, TileGrid,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};

mod batch;
mod pretrain;

use super::loss::IGNORE_INDEX;
use super::rng::TrainRng;
use super::TrainError;
use idefics::model::ModelInputs;

/// How samples become examples (the `[data.collate]` table of a recipe; every key optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollateConfig {
    /// Most tokens in one row (image tokens included). Longer samples are skipped, never truncated.
    pub max_seq_len: usize,
    /// Share of chat samples whose images are split into 4 crops + the whole image (paper: 0.5).
    pub split_fraction: f64,
    /// Random up-scaling of image resolution before processing (paper §4.2, anti-overfitting); off when absent.
    pub upscale: Option<UpscaleConfig>,
    /// Most images in one row (chat samples with more are skipped; packing starts a new row).
    pub max_num_images: usize,
}

impl Default for CollateConfig {
    fn default() -> Self {
        Self {
            max_seq_len: 2048,
            split_fraction: 0.5,
            upscale: None,
            max_num_images: 5,
        }
    }
}

/// Each image is, with `probability`, enlarged by a factor drawn uniformly in `[1, max_factor]` (the processor's
/// `longest_edge` still caps the result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpscaleConfig {
    pub probability: f64,
    pub max_factor: f64,
}

impl Default for UpscaleConfig {
    fn default() -> Self {
        Self {
            probability: 0.5,
            max_factor: 2.0,
        }
    }
}

impl CollateConfig {
    /// Refuses values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Invalid(format!("collate config: {m}")));
        if self.max_seq_len < 2 {
            return bad(format!(
                "max_seq_len must be at least 2, got {}",
                self.max_seq_len
            ));
        }
        if !(0.0..=1.0).contains(&self.split_fraction) {
            return bad(format!(
                "split_fraction must be in [0, 1], got {}",
                self.split_fraction
            ));
        }
        if self.max_num_images == 0 {
            return bad("max_num_images must be at least 1".into());
        }
        if let Some(u) = &self.upscale {
            if !(0.0..=1.0).contains(&u.probability) {
                return bad(format!(
                    "upscale.probability must be in [0, 1], got {}",
                    u.probability
                ));
            }
            if !(u.max_factor.is_finite() && u.max_factor >= 1.0) {
                return bad(format!(
                    "upscale.max_factor must be a number >= 1, got {}",
                    u.max_factor
                ));
            }
        }
        Ok(())
    }
}

/// An encoded piece of a row: tokens with their labels and the frames of the images it holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Segment {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub frames: Vec<RgbImage>,
    pub n_images: usize,
}

impl Segment {
    /// Appends a token, labelled with itself or ignored.
    pub fn push(&mut self, id: u32, labelled: bool) {
        self.ids.push(id);
        self.labels.push(if labelled {
            i64::from(id)
        } else {
            IGNORE_INDEX
        });
    }

    /// Labelled tokens.
    pub fn n_labels(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Why a sample was not used (counted in [`super::data::SkipCounts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The reader could not parse the row (or its file).
    MalformedRow,
    /// An image no decoder accepts (or too small to process).
    UndecodableImage,
    /// More tokens than `max_seq_len` (cutting would cut image tokens or answers).
    TooLong,
    /// More images than `max_num_images`.
    TooManyImages,
    /// Nothing to learn: no labelled token.
    NoLabels,
}

/// A sample that was skipped, and why (the detail names the image / lengths).
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub reason: SkipReason,
    pub detail: String,
}

impl Skip {
    pub(crate) fn new(reason: SkipReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// One training row before padding.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainExample {
    pub input_ids: Vec<u32>,
    /// Same length as `input_ids`; `-100` where no loss is taken.
    pub labels: Vec<i64>,
    /// The processed frames of its images in slot order (crops + whole image when split; resized, uint8).
    /// [`Collator::collate`] rescales, normalises and pads them as the image processor does.
    pub frames: Vec<RgbImage>,
    /// Images (not frames) in the row.
    pub n_images: usize,
    /// Whether its images were split.
    pub split: bool,
}

impl TrainExample {
    /// Labels that count in the loss (the first position never does: the loss shifts by one).
    pub fn n_label_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// A padded batch ready for the model and the loss.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    /// `input_ids` `[B, L]` u32 right-padded, `attention_mask` `[B, L]` u32, pixel tensors when any row has images.
    pub inputs: ModelInputs,
    /// `[B, L]` i64, `-100` on padding and unlabelled positions.
    pub labels: Tensor,
    /// Labels that count in the loss (what `causal_lm_loss_sum` reports as `n_tokens`).
    pub n_label_tokens: usize,
    /// Real (non-padding) tokens in the batch.
    pub n_tokens: usize,
}

/// Tokenizer + chat template + image processor + settings: turns samples into [`TrainExample`]s. The processor
/// is the checkpoint family's ([`FamilyProcessor`]): Idefics2 expands an image into `<fake><image>…<fake>` (5 of
/// them when split, adjacent fakes collapsed); Idefics3 / SmolVLM into its tile grid's block (row/col markers,
/// `<global-img>`), as transformers' processors do.
#[derive(Debug, Clone)]
pub struct Collator {
    processor: FamilyProcessor,
    config: CollateConfig,
    special: SpecialTokenIds,
    /// BOS when the tokenizer puts it before a prompt (Idefics2's Llama / Mistral tokenizers do; SmolVLM's does
    /// not, and its processor writes none).
    bos: Option<u32>,
    /// Tokens of an image block that never carry a label: `<image>`, `<fake_token_around_image>`, and for Idefics3 /
    /// SmolVLM `<global-img>` and the `<row_r_col_c>` markers.
    image_block_ids: Vec<u32>,
    pad_id: u32,
    eou: String,
}

fn invalid(e: impl std::fmt::Display) -> TrainError {
    TrainError::Invalid(e.to_string())
}

impl Collator {
    /// Loads the tokenizer, chat template and image processor of a model directory, for the family of its
    /// `config.json` `model_type`.
    pub fn from_model_dir(dir: &Path, config: CollateConfig) -> Result<Self, TrainError> {
        let processor = FamilyProcessor::from_dir(dir)
            .map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
        Self::with_processor(processor, config)
    }

    /// Assembles an Idefics2 collator from loaded parts.
    pub fn new(
        prompts: PromptProcessor,
        images: Idefics2ImageProcessor,
        config: CollateConfig,
    ) -> Result<Self, TrainError> {
        Self::with_processor(
            FamilyProcessor::Idefics2 {
                image: images,
                prompt: prompts,
            },
            config,
        )
    }

    /// Assembles a collator over the processor of any family.
    pub fn with_processor(
        processor: FamilyProcessor,
        config: CollateConfig,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let special = processor.tokenizer().special_ids();
        let pad_id = special.pad.unwrap_or(0);
        let eou = processor
            .tokenizer()
            .inner()
            .id_to_token(special.end_of_utterance)
            .unwrap_or_default();
        let prefix = processor
            .tokenizer()
            .encode_pieces(&[], true)
            .map_err(invalid)?;
        let bos = special.bos.filter(|&b| prefix.first() == Some(&b));
        let mut image_block_ids = vec![special.image, special.fake_image];
        if processor.family() != ModelFamily::Idefics2 {
            use idefics_processor::idefics3_prompt::{
                row_col_token, GLOBAL_IMAGE_TOKEN, MAX_GRID_TOKENS,
            };
            let tok = processor.tokenizer();
            image_block_ids.extend(tok.token_to_id(GLOBAL_IMAGE_TOKEN));
            for r in 1..=MAX_GRID_TOKENS {
                for c in 1..=MAX_GRID_TOKENS {
                    image_block_ids.extend(tok.token_to_id(&row_col_token(r, c)));
                }
            }
        }
        Ok(Self {
            processor,
            config,
            special,
            bos,
            image_block_ids,
            pad_id,
            eou,
        })
    }

    /// The settings.
    pub fn config(&self) -> &CollateConfig {
        &self.config
    }

    /// The tokenizer (to decode labels, count tokens).
    pub fn tokenizer(&self) -> &TextTokenizer {
        self.processor.tokenizer()
    }

    /// The checkpoint family the collator writes inputs for.
    pub fn family(&self) -> ModelFamily {
        self.processor.family()
    }

    fn image_seq_len(&self) -> usize {
        self.processor.image_seq_len()
    }

    fn resample(&self) -> ResampleFilter {
        match &self.processor {
            FamilyProcessor::Idefics2 { image, .. } => image.config().resample,
            FamilyProcessor::Idefics3 { image, .. } => image.config().resample,
        }
    }

    /// Text tokens as they come in a prompt: at its start (Metaspace "▁" prefix) or after a token.
    fn encode_text(&self, text: &str, at_start: bool) -> Result<Vec<u32>, TrainError> {
        let tok = self.processor.tokenizer();
        if at_start {
            return tok
                .encode_pieces(&[Piece::Text(text.to_string())], false)
                .map_err(invalid);
        }
        // encode_pieces tokenizes text after a token without the start-of-prompt prefix; a throwaway leading token
        // selects that mode and is dropped.
        let ids = tok
            .encode_pieces(
                &[
                    Piece::Token(self.special.end_of_utterance),
                    Piece::Text(text.to_string()),
                ],
                false,
            )
            .map_err(invalid)?;
        Ok(ids.get(1..).unwrap_or_default().to_vec())
    }

    /// Tokens of a piece sequence (image slots expanded: Idefics2 with `split`, Idefics3 / SmolVLM with the grid
    /// of each image, `grids[k]` for the k-th image slot of `pieces`), `at_start` for the first text.
    fn encode_pieces(
        &self,
        pieces: &[Piece],
        split: bool,
        grids: &[TileGrid],
        mut at_start: bool,
    ) -> Result<Vec<u32>, TrainError> {
        let expanded = match &self.processor {
            FamilyProcessor::Idefics2 { .. } => expand_pieces(
                pieces,
                self.special.image,
                self.special.fake_image,
                self.image_seq_len(),
                split,
            ),
            FamilyProcessor::Idefics3 { prompt, .. } => {
                let slots = pieces
                    .iter()
                    .filter(|p| matches!(p, Piece::Token(id) if *id == self.special.image))
                    .count();
                if slots != grids.len() {
                    return Err(invalid(format!(
                        "{slots} image slots for {} processed images",
                        grids.len()
                    )));
                }
                prompt.expand_image_pieces(pieces, grids)
            }
        };
        let mut ids = Vec::new();
        for p in &expanded {
            match p {
                Piece::Token(id) => ids.push(*id),
                Piece::Text(t) if t.is_empty() => continue,
                Piece::Text(t) => ids.extend(self.encode_text(t, at_start)?),
            }
            at_start = false;
        }
        Ok(ids)
    }

    fn is_image_token(&self, id: u32) -> bool {
        self.image_block_ids.contains(&id)
    }

    /// Decodes, optionally up-scales and processes one image into its frames, and its tile grid (Idefics3 /
    /// SmolVLM; the default grid for Idefics2).
    fn image_frames(
        &self,
        source: &ImageSource,
        split: bool,
        rng: &mut TrainRng,
    ) -> Result<(Vec<RgbImage>, TileGrid), Skip> {
        let undecodable = |m: String| Skip::new(SkipReason::UndecodableImage, m);
        let bytes = source
            .load_bytes()
            .map_err(|e| undecodable(format!("image {}: {e}", source.origin())))?;
        let mut image = decode_image(&bytes, &DecodeLimits::default())
            .map_err(|e| undecodable(format!("image {}: {e}", source.origin())))?;
        if let Some(up) = &self.config.upscale {
            // Both draws happen for every image, so the stream of draws does not depend on the outcome.
            let (coin, amount) = (unit(rng), unit(rng));
            if coin < up.probability {
                let factor = 1.0 + amount * (up.max_factor - 1.0);
                let w = ((image.width() as f64 * factor).round() as usize).max(1);
                let h = ((image.height() as f64 * factor).round() as usize).max(1);
                image = resize(&image, w, h, self.resample())
                    .map_err(|e| undecodable(format!("image {}: {e}", source.origin())))?;
            }
        }
        let processed = match &self.processor {
            FamilyProcessor::Idefics2 { image: ip, .. } => ip
                .frames(&image, split)
                .map(|frames| (frames, TileGrid::default())),
            FamilyProcessor::Idefics3 { image: ip, .. } => ip.frames(&image, split),
        };
        processed.map_err(|e| undecodable(format!("image {}: {e}", source.origin())))
    }

    /// A Cauldron conversation -> one example (answers labelled). `rng` draws the splitting / up-scaling;
    /// `text_only` drops the images (and their slots).
    pub fn encode_chat(
        &self,
        sample: &ChatSample,
        text_only: bool,
        rng: &mut TrainRng,
    ) -> Result<TrainExample, Skip> {
        let images: &[ImageSource] = if text_only { &[] } else { &sample.images };
        let split_draw = unit(rng);
        let split = !images.is_empty() && split_draw < self.config.split_fraction;
        if sample.turns.is_empty() {
            return Err(Skip::new(SkipReason::NoLabels, "conversation has no turns"));
        }
        if images.len() > self.config.max_num_images {
            return Err(Skip::new(
                SkipReason::TooManyImages,
                format!(
                    "{} images, max_num_images is {}",
                    images.len(),
                    self.config.max_num_images
                ),
            ));
        }
        let mut frames = Vec::new();
        let mut grids = Vec::with_capacity(images.len());
        for img in images {
            let (f, grid) = self.image_frames(img, split, rng)?;
            frames.extend(f);
            grids.push(grid);
        }
        let (input_ids, labels) = self
            .chat_tokens(&sample.turns, images.len(), split, &grids)
            .map_err(|e| Skip::new(SkipReason::MalformedRow, e.to_string()))?;
        let example = TrainExample {
            input_ids,
            labels,
            frames,
            n_images: images.len(),
            split,
        };
        self.check_example(example)
    }

    /// Length and label checks shared by every kind.
    fn check_example(&self, example: TrainExample) -> Result<TrainExample, Skip> {
        if example.input_ids.len() > self.config.max_seq_len {
            let image_tokens = example
                .input_ids
                .iter()
                .filter(|&&t| t == self.special.image)
                .count();
            return Err(Skip::new(
                SkipReason::TooLong,
                format!(
                    "{} tokens ({image_tokens} image tokens) > max_seq_len {}",
                    example.input_ids.len(),
                    self.config.max_seq_len
                ),
            ));
        }
        if example.n_label_tokens() == 0 {
            return Err(Skip::new(SkipReason::NoLabels, "no labelled token"));
        }
        Ok(example)
    }

    /// The messages of a conversation: images at the start of the first user turn.
    fn chat_messages(turns: &[Turn], n_images: usize) -> Vec<ChatMessage> {
        let mut msgs = Vec::with_capacity(turns.len() * 2);
        for (k, turn) in turns.iter().enumerate() {
            let mut parts = Vec::new();
            if k == 0 {
                parts.extend((0..n_images).map(|_| ContentPart::Image {}));
            }
            parts.push(ContentPart::Text {
                text: turn.user.clone(),
            });
            msgs.push(ChatMessage::parts("user", parts));
            msgs.push(ChatMessage::parts(
                "assistant",
                vec![ContentPart::Text {
                    text: turn.assistant.clone(),
                }],
            ));
        }
        msgs
    }

    /// Token ids and labels of a conversation (see the module docs for the labelling rule). `grids` are the
    /// images' tile grids (Idefics3 / SmolVLM).
    fn chat_tokens(
        &self,
        turns: &[Turn],
        n_images: usize,
        split: bool,
        grids: &[TileGrid],
    ) -> Result<(Vec<u32>, Vec<i64>), TrainError> {
        let template = self
            .processor
            .chat_template()
            .ok_or_else(|| invalid("the model directory has no chat template"))?;
        let msgs = Self::chat_messages(turns, n_images);
        let full = template.render_pieces(&msgs, false).map_err(invalid)?;
        if full.image_slots() != n_images {
            return Err(invalid(format!(
                "the chat template wrote {} image slots for {n_images} images",
                full.image_slots()
            )));
        }
        // Byte spans of the answers in the rendered text.
        let mut spans = Vec::with_capacity(turns.len());
        for k in 0..turns.len() {
            let prompt = template.render(&msgs[..2 * k + 1], true).map_err(invalid)?;
            let with_answer = template
                .render(&msgs[..2 * k + 2], false)
                .map_err(invalid)?;
            if !with_answer.starts_with(&prompt) || !full.text.starts_with(&with_answer) {
                return Err(invalid(
                    "the chat template does not render conversations prefix by prefix; cannot locate the answers",
                ));
            }
            let answer = &with_answer[prompt.len()..];
            let end = match answer.rfind(&self.eou) {
                Some(at) if !self.eou.is_empty() => prompt.len() + at + self.eou.len(),
                _ => with_answer.len(),
            };
            spans.push((prompt.len(), end));
        }
        // Cut the rendered pieces at the span boundaries into runs of (pieces, labelled).
        let inner = self.processor.tokenizer().inner();
        let labelled_at = |pos: usize| spans.iter().any(|&(s, e)| pos >= s && pos < e);
        let mut runs: Vec<(Vec<Piece>, bool)> = Vec::new();
        let mut push = |piece: Piece, lab: bool| match runs.last_mut() {
            Some((ps, l)) if *l == lab => ps.push(piece),
            _ => runs.push((vec![piece], lab)),
        };
        let mut pos = 0usize;
        for piece in &full.pieces {
            match piece {
                Piece::Token(id) => {
                    let len = inner.id_to_token(*id).map(|s| s.len()).unwrap_or(0);
                    push(piece.clone(), labelled_at(pos));
                    pos += len;
                }
                Piece::Text(t) => {
                    let mut cuts: Vec<usize> = spans
                        .iter()
                        .flat_map(|&(s, e)| [s, e])
                        .filter(|&c| c > pos && c < pos + t.len())
                        .map(|c| c - pos)
                        .collect();
                    cuts.sort_unstable();
                    let mut from = 0;
                    for c in cuts.into_iter().chain([t.len()]) {
                        if let Some(part) = t.get(from..c).filter(|p| !p.is_empty()) {
                            push(Piece::Text(part.to_string()), labelled_at(pos + from));
                        }
                        from = c;
                    }
                    pos += t.len();
                }
            }
        }
        // transformers' processor adds BOS (when its tokenizer does) unless the template wrote it.
        let tok = self.processor.tokenizer();
        let template_wrote_bos = tok
            .config()
            .bos_token()
            .is_some_and(|b| !b.is_empty() && full.text.starts_with(b));
        let (mut ids, mut labels) = (Vec::new(), Vec::new());
        if !template_wrote_bos {
            if let Some(bos) = self.bos {
                ids.push(bos);
                labels.push(IGNORE_INDEX);
            }
        }
        let mut at_start = true;
        // Idefics3 / SmolVLM: each run expands the grids of its own image slots, in order.
        let mut next_grid = 0usize;
        for (pieces, lab) in &runs {
            let run_grids: &[TileGrid] = match self.family() {
                ModelFamily::Idefics2 => &[],
                ModelFamily::Idefics3 | ModelFamily::SmolVlm => {
                    let slots = pieces
                        .iter()
                        .filter(|p| matches!(p, Piece::Token(id) if *id == self.special.image))
                        .count();
                    let g = grids.get(next_grid..next_grid + slots).ok_or_else(|| {
                        invalid(format!(
                            "the chat has more image slots than its {} images",
                            grids.len()
                        ))
                    })?;
                    next_grid += slots;
                    g
                }
            };
            let run_ids = self.encode_pieces(pieces, split, run_grids, at_start)?;
            at_start = false;
            for id in run_ids {
                let keep = *lab && !self.is_image_token(id);
                labels.push(if keep { i64::from(id) } else { IGNORE_INDEX });
                ids.push(id);
            }
        }
        Ok((ids, labels))
    }

    /// BOS id (if the tokenizer puts one before a prompt), which starts every packed row.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The fake image token id when adjacent ones collapse as rows are assembled (Idefics2's processor turns
    /// `<fake><fake>` into one); `None` for Idefics3 / SmolVLM, whose processors keep both.
    pub fn collapsing_fake_image_id(&self) -> Option<u32> {
        (self.family() == ModelFamily::Idefics2).then_some(self.special.fake_image)
    }
}

/// Uniform in `[0, 1)` from the top 53 bits.
pub(crate) fn unit(rng: &mut TrainRng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}
