//! Prompt -> input_ids for Idefics3 and SmolVLM: each `<image>` becomes its tile grid's token block, as
//! transformers 5.24 writes it (src/transformers/models/idefics3/processing_idefics3.py `replace_image_token`,
//! src/transformers/models/smolvlm/processing_smolvlm.py `get_image_prompt_string`), then the whole string is
//! tokenized. Unlike Idefics2 there is no `<fake><fake>` collapsing and no space insertion.
//!
//! An image cut into `R x C` tiles (`s` = `image_seq_len`):
//! `<fake_token_around_image><row_r_col_c>` + `<image>`×s for every tile, a `\n` after each row, then
//! `\n<fake_token_around_image><global-img>` + `<image>`×s + `<fake_token_around_image>`. A single frame (R = C = 0):
//! `<fake_token_around_image><global-img>` + `<image>`×s + `<fake_token_around_image>`. The newlines are text, so the
//! tokenizer may merge a row's `\n` with the global image's `\n` (SmolLM's BPE has a "\n\n" token).
//! SmolVLM2 videos (frames never split) are in [`crate::video`].

use std::path::Path;

use serde_json::Value;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::image::TileGrid;
use crate::processor_config::read_json_if_exists;
use crate::prompt::PromptError;
use crate::tokenizer::{Piece, TextTokenizer, FAKE_IMAGE_TOKEN, IMAGE_TOKEN};
use crate::video::{frame_label, video_intro, VideoClip, VIDEO_OUTRO, VIDEO_TOKEN};

/// Opens the global (whole-image) frame of every image.
pub const GLOBAL_IMAGE_TOKEN: &str = "<global-img>";
/// `image_seq_len` of `Idefics3Processor` / `SmolVLMProcessor` when processor_config.json has none.
pub const DEFAULT_IDEFICS3_IMAGE_SEQ_LEN: usize = 169;
/// The tokenizers of these families have `<row_r_col_c>` tokens for r, c in 1..=6.
pub const MAX_GRID_TOKENS: usize = 6;

/// `SmolVLMProcessor.apply_chat_template` renders every chat that has a video part with this template
/// (processing_smolvlm.py `DEFAULT_CHAT_TEMPLATE`), whatever the checkpoint ships.
pub const SMOLVLM_VIDEO_CHAT_TEMPLATE: &str = "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'] is string %}{{': ' + message['content']}}{% else %}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

/// The marker of tile (row `r`, column `c`), 1-based.
pub fn row_col_token(r: usize, c: usize) -> String {
    format!("<row_{r}_col_{c}>")
}

/// The text one `<image>` becomes for an image with tile grid `grid`.
pub fn image_prompt_string(grid: TileGrid, image_seq_len: usize) -> String {
    let tokens = IMAGE_TOKEN.repeat(image_seq_len);
    let global = format!("{FAKE_IMAGE_TOKEN}{GLOBAL_IMAGE_TOKEN}{tokens}{FAKE_IMAGE_TOKEN}");
    if grid.rows == 0 && grid.cols == 0 {
        return global;
    }
    let mut out = String::new();
    for r in 1..=grid.rows {
        for c in 1..=grid.cols {
            out.push_str(FAKE_IMAGE_TOKEN);
            out.push_str(&row_col_token(r, c));
            out.push_str(&tokens);
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&global);
    out
}

/// Replace the `<image>` markers of a raw prompt, in order, by the blocks of `grids` (one per marker).
pub fn expand_image_prompts(
    prompt: &str,
    grids: &[TileGrid],
    image_seq_len: usize,
) -> Result<String, PromptError> {
    let slots = prompt.matches(IMAGE_TOKEN).count();
    if slots != grids.len() {
        return Err(PromptError::ImageCountMismatch {
            slots,
            images: grids.len(),
        });
    }
    let mut out = String::with_capacity(prompt.len() + grids.len() * image_seq_len * 8);
    let mut parts = prompt.split(IMAGE_TOKEN);
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (part, grid) in parts.zip(grids) {
        out.push_str(&image_prompt_string(*grid, image_seq_len));
        out.push_str(part);
    }
    Ok(out)
}

/// Text-side settings of an Idefics3 / SmolVLM checkpoint (processor_config.json).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idefics3ProcessorConfig {
    /// `<image>` tokens per frame (169 Idefics3-8B, 64 SmolVLM-256M/500M, 81 SmolVLM 2.2B).
    pub image_seq_len: usize,
    /// `processor_class` if given ("Idefics3Processor" / "SmolVLMProcessor").
    pub processor_class: Option<String>,
}

impl Default for Idefics3ProcessorConfig {
    fn default() -> Self {
        Self {
            image_seq_len: DEFAULT_IDEFICS3_IMAGE_SEQ_LEN,
            processor_class: None,
        }
    }
}

impl Idefics3ProcessorConfig {
    /// Read processor_config.json of a checkpoint directory (optional: class defaults without it).
    pub fn from_dir(dir: &Path) -> Result<Self, PromptError> {
        let path = dir.join("processor_config.json");
        let mut config = Self::default();
        let Some(value) = read_json_if_exists(&path)? else {
            return Ok(config);
        };
        let err = |message: String| PromptError::Config {
            file: path.display().to_string(),
            message,
        };
        if let Some(v) = value.get("image_seq_len") {
            let n = v
                .as_u64()
                .filter(|&n| n > 0)
                .ok_or_else(|| err(format!("image_seq_len must be a positive integer, got {v}")))?;
            config.image_seq_len = usize::try_from(n).map_err(|e| err(e.to_string()))?;
        }
        config.processor_class = value
            .get("processor_class")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(config)
    }
}

/// A tokenized Idefics3 / SmolVLM prompt and the grids its image blocks were built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedIdefics3Prompt {
    /// Token ids (BOS only if the tokenizer's post-processor adds one and the template did not write it).
    pub input_ids: Vec<u32>,
    /// The grid of each image, in prompt order.
    pub grids: Vec<TileGrid>,
    /// The prompt text before expansion (for chats: the rendered template).
    pub text: String,
}

impl EncodedIdefics3Prompt {
    /// Frames `pixel_values` must hold for this prompt (tiles + global per split image, else 1).
    pub fn expected_frames(&self) -> usize {
        self.grids.iter().map(TileGrid::frames).sum()
    }

    /// Refuse pixel_values whose frame count does not match the text.
    pub fn check_frames(&self, frames: usize) -> Result<(), PromptError> {
        let expected = self.expected_frames();
        if frames != expected {
            return Err(PromptError::ImageRowsMismatch {
                expected,
                got: frames,
                images: self.grids.len(),
                splitting: self.grids.iter().any(|g| g.rows > 0),
            });
        }
        Ok(())
    }
}

/// Ids of the tokens the expansion writes.
#[derive(Debug, Clone)]
struct MarkerIds {
    fake: u32,
    image: u32,
    global: Option<u32>,
    /// `row_col[(r - 1) * 6 + (c - 1)]`
    row_col: Vec<Option<u32>>,
    video: Option<u32>,
}

/// Text side of the Idefics3 / SmolVLM processor: tokenizer + grid expansion + chat template.
#[derive(Debug, Clone)]
pub struct Idefics3PromptProcessor {
    tokenizer: TextTokenizer,
    config: Idefics3ProcessorConfig,
    chat_template: Option<ChatTemplate>,
    ids: MarkerIds,
}

impl Idefics3PromptProcessor {
    /// Load tokenizer, processor configuration and chat template from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self, PromptError> {
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let config = Idefics3ProcessorConfig::from_dir(dir)?;
        let chat_template = match ChatTemplate::from_dir(dir, &tokenizer) {
            Ok(t) => Some(t),
            Err(PromptError::NoChatTemplate(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(Self::new(tokenizer, config, chat_template))
    }

    /// Assemble from parts.
    pub fn new(
        tokenizer: TextTokenizer,
        config: Idefics3ProcessorConfig,
        chat_template: Option<ChatTemplate>,
    ) -> Self {
        let special = tokenizer.special_ids();
        let row_col = (1..=MAX_GRID_TOKENS)
            .flat_map(|r| (1..=MAX_GRID_TOKENS).map(move |c| (r, c)))
            .map(|(r, c)| tokenizer.token_to_id(&row_col_token(r, c)))
            .collect();
        let ids = MarkerIds {
            fake: special.fake_image,
            image: special.image,
            global: tokenizer.token_to_id(GLOBAL_IMAGE_TOKEN),
            row_col,
            video: tokenizer.token_to_id(VIDEO_TOKEN),
        };
        Self {
            tokenizer,
            config,
            chat_template,
            ids,
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The processor configuration.
    pub fn config(&self) -> &Idefics3ProcessorConfig {
        &self.config
    }

    /// The chat template, if the checkpoint has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Tokenize a raw prompt in which each `<image>` marks one image, `grids[i]` being the grid the image
    /// processor produced for image `i` (transformers' `processor(text, images)`).
    pub fn encode_prompt(
        &self,
        prompt: &str,
        grids: &[TileGrid],
    ) -> Result<EncodedIdefics3Prompt, PromptError> {
        let expanded = expand_image_prompts(prompt, grids, self.config.image_seq_len)?;
        let input_ids = self.tokenizer.encode(&expanded, true)?;
        Ok(EncodedIdefics3Prompt {
            input_ids,
            grids: grids.to_vec(),
            text: prompt.to_string(),
        })
    }

    /// Render a chat with the checkpoint's template and tokenize it; only image parts make image slots (control
    /// strings typed in message text stay text).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        grids: &[TileGrid],
    ) -> Result<EncodedIdefics3Prompt, PromptError> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| PromptError::NoChatTemplate("this checkpoint".to_string()))?;
        let rendered = template.render_pieces(messages, add_generation_prompt)?;
        let slots = rendered.image_slots();
        if slots != grids.len() {
            return Err(PromptError::ImageCountMismatch {
                slots,
                images: grids.len(),
            });
        }
        let pieces = self.expand_pieces(&rendered.pieces, grids, &[]);
        let template_wrote_bos = self
            .tokenizer
            .config()
            .bos_token()
            .is_some_and(|bos| !bos.is_empty() && rendered.text.starts_with(bos));
        let input_ids = self.tokenizer.encode_pieces(&pieces, !template_wrote_bos)?;
        Ok(EncodedIdefics3Prompt {
            input_ids,
            grids: grids.to_vec(),
            text: rendered.text,
        })
    }

    /// A SmolVLM2 chat whose video parts stand for `clips` (in order), rendered with
    /// [`SMOLVLM_VIDEO_CHAT_TEMPLATE`] as `SmolVLMProcessor.apply_chat_template` does for chats with videos. Image
    /// parts are refused: transformers' processor returns one `pixel_values`, so images and videos cannot share
    /// a call.
    pub fn encode_video_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        clips: &[VideoClip],
    ) -> Result<EncodedIdefics3Prompt, PromptError> {
        let video_id = self.ids.video.ok_or_else(|| {
            PromptError::Tokenizer(format!("the tokenizer has no {VIDEO_TOKEN} token"))
        })?;
        let template = ChatTemplate::from_source(
            SMOLVLM_VIDEO_CHAT_TEMPLATE,
            "processing_smolvlm.py DEFAULT_CHAT_TEMPLATE",
            &self.tokenizer,
        )?;
        let rendered = template.render_pieces(messages, add_generation_prompt)?;
        let images = rendered.image_slots();
        if images > 0 {
            return Err(PromptError::Messages(format!(
                "a chat with videos cannot also have image parts ({images} found)"
            )));
        }
        let slots = rendered.count_token(video_id);
        if slots != clips.len() {
            return Err(PromptError::Messages(format!(
                "the chat has {slots} video part(s) but {} video(s) were given",
                clips.len()
            )));
        }
        let pieces = self.expand_pieces(&rendered.pieces, &[], clips);
        let template_wrote_bos = self
            .tokenizer
            .config()
            .bos_token()
            .is_some_and(|bos| !bos.is_empty() && rendered.text.starts_with(bos));
        let input_ids = self.tokenizer.encode_pieces(&pieces, !template_wrote_bos)?;
        let frames = clips.iter().map(|c| c.timestamps.len()).sum();
        Ok(EncodedIdefics3Prompt {
            input_ids,
            grids: vec![TileGrid::default(); frames],
            text: rendered.text,
        })
    }

    /// The piece-level twin of [`expand_image_prompts`] (and of the video expansion): `Token(image)` /
    /// `Token(video)` pieces are slots, filled in order from `grids` / `clips`. Adjacent text is merged so that it
    /// is tokenized as transformers tokenizes the expanded string (between added tokens).
    /// The rendered pieces of a prompt with each `<image>` token replaced by the block of its grid (in order),
    /// before tokenization: what [`Self::encode_chat`] tokenizes. Training cuts these pieces at the answer
    /// boundaries to label them.
    pub fn expand_image_pieces(&self, pieces: &[Piece], grids: &[TileGrid]) -> Vec<Piece> {
        self.expand_pieces(pieces, grids, &[])
    }

    fn expand_pieces(
        &self,
        pieces: &[Piece],
        grids: &[TileGrid],
        clips: &[VideoClip],
    ) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::with_capacity(pieces.len());
        let push_text = |out: &mut Vec<Piece>, t: &str| match out.last_mut() {
            Some(Piece::Text(prev)) => prev.push_str(t),
            _ => out.push(Piece::Text(t.to_string())),
        };
        let ids = &self.ids;
        let seq = self.config.image_seq_len;
        let marker = |out: &mut Vec<Piece>, id: Option<u32>, text: &str| match id {
            Some(id) => out.push(Piece::Token(id)),
            // A tokenizer without the marker token: transformers tokenizes the marker string as text.
            None => push_text(out, text),
        };
        let single_frame = |out: &mut Vec<Piece>| {
            out.push(Piece::Token(ids.fake));
            marker(out, ids.global, GLOBAL_IMAGE_TOKEN);
            out.extend(std::iter::repeat_n(Piece::Token(ids.image), seq));
            out.push(Piece::Token(ids.fake));
        };
        let mut grids = grids.iter();
        let mut clips = clips.iter();
        for piece in pieces {
            match piece {
                Piece::Token(id) if Some(*id) == ids.video => {
                    let Some(clip) = clips.next() else {
                        out.push(piece.clone());
                        continue;
                    };
                    push_text(&mut out, &video_intro(clip));
                    for &t in &clip.timestamps {
                        push_text(&mut out, &frame_label(t));
                        single_frame(&mut out);
                    }
                    push_text(&mut out, VIDEO_OUTRO);
                }
                Piece::Token(id) if *id == ids.image => {
                    let grid = grids.next().copied().unwrap_or_default();
                    for r in 1..=grid.rows {
                        for c in 1..=grid.cols {
                            out.push(Piece::Token(ids.fake));
                            let id = (r <= MAX_GRID_TOKENS && c <= MAX_GRID_TOKENS)
                                .then(|| ids.row_col[(r - 1) * MAX_GRID_TOKENS + (c - 1)])
                                .flatten();
                            marker(&mut out, id, &row_col_token(r, c));
                            out.extend(std::iter::repeat_n(Piece::Token(ids.image), seq));
                        }
                        push_text(&mut out, "\n");
                    }
                    if grid.rows > 0 || grid.cols > 0 {
                        push_text(&mut out, "\n");
                    }
                    single_frame(&mut out);
                }
                Piece::Text(t) if t.is_empty() => {}
                Piece::Text(t) => push_text(&mut out, t),
                other => out.push(other.clone()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_frame_block() {
        let s = image_prompt_string(TileGrid::default(), 2);
        assert_eq!(
            s,
            "<fake_token_around_image><global-img><image><image><fake_token_around_image>"
        );
    }

    #[test]
    fn split_block_has_rows_newlines_and_global_last() {
        let s = image_prompt_string(TileGrid { rows: 2, cols: 2 }, 1);
        let f = FAKE_IMAGE_TOKEN;
        let expected = format!(
            "{f}<row_1_col_1><image>{f}<row_1_col_2><image>\n{f}<row_2_col_1><image>{f}<row_2_col_2><image>\n\n{f}<global-img><image>{f}"
        );
        assert_eq!(s, expected);
    }

    #[test]
    fn expansion_counts_images() {
        let g = [TileGrid::default()];
        let e = expand_image_prompts("a<image>b<image>", &g, 1).unwrap_err();
        assert!(matches!(
            e,
            PromptError::ImageCountMismatch {
                slots: 2,
                images: 1
            }
        ));
        let s = expand_image_prompts("a<image>b", &g, 1).unwrap();
        assert!(s.starts_with("a<fake_token_around_image><global-img>") && s.ends_with(">b"));
    }
}
