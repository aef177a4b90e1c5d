//! One entry for every supported checkpoint family: read `config.json`'s `model_type` and build the matching
//! processor (Idefics2, or Idefics3 / SmolVLM), so that callers process a prompt and its images without knowing
//! the family.
//!
//! | `model_type` | processor | image processor | text expansion |
//! |---|---|---|---|
//! | `idefics2` | `Idefics2Processor` | [`Idefics2ImageProcessor`] (BILINEAR, 4 crops + full) | [`PromptProcessor`] |
//! | `idefics3` | `Idefics3Processor` | [`Idefics3ImageProcessor`] (LANCZOS, tiles + global) | [`Idefics3PromptProcessor`] |
//! | `smolvlm` | `SmolVLMProcessor` | [`Idefics3ImageProcessor`] (same code) | [`Idefics3PromptProcessor`] + videos |
//!
//! Without a `config.json`, the family comes from `processor_class` (processor_config.json) or
//! `image_processor_type` (preprocessor_config.json).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::idefics3_prompt::Idefics3PromptProcessor;
use crate::image::{
    Idefics2ImageProcessor, Idefics3ImageProcessor, ImageBatch, ImageError, RgbImage, TileGrid,
};
use crate::processor_config::read_json_if_exists;
use crate::prompt::{PromptError, PromptProcessor};
use crate::tokenizer::TextTokenizer;
use crate::video::{expand_video_prompts, VideoClip, VideoProcessorSettings};

/// The checkpoint families, by `config.json` `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// `idefics2`: Mistral + perceiver (HuggingFaceM4/idefics2-8b).
    Idefics2,
    /// `idefics3`: Llama + pixel shuffle (HuggingFaceM4/Idefics3-8B-Llama3, HuggingFaceTB/SmolVLM-Instruct).
    Idefics3,
    /// `smolvlm`: the SmolVLM2 checkpoints (and SmolVLM-256M/500M as re-saved by transformers 5.x).
    SmolVlm,
}

impl ModelFamily {
    /// The family of a `model_type` string.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "idefics2" => Some(Self::Idefics2),
            "idefics3" => Some(Self::Idefics3),
            "smolvlm" => Some(Self::SmolVlm),
            _ => None,
        }
    }

    /// The family of a processor or image-processor class name (`Idefics3Processor`, `SmolVLMImageProcessorPil`).
    pub fn from_class_name(class: &str) -> Option<Self> {
        [
            ("Idefics2", Self::Idefics2),
            ("Idefics3", Self::Idefics3),
            ("SmolVLM", Self::SmolVlm),
        ]
        .into_iter()
        .find_map(|(prefix, f)| class.starts_with(prefix).then_some(f))
    }

    /// `config.json`'s `model_type` for this family.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Idefics2 => "idefics2",
            Self::Idefics3 => "idefics3",
            Self::SmolVlm => "smolvlm",
        }
    }

    /// The family of a checkpoint directory: `config.json` `model_type`, else the processor / image-processor
    /// class of processor_config.json / preprocessor_config.json.
    pub fn from_dir(dir: &Path) -> Result<Self, ProcessorError> {
        let unknown = |message: String| ProcessorError::Family {
            dir: dir.to_path_buf(),
            message,
        };
        if let Some(config) = read_json_if_exists(&dir.join("config.json"))? {
            let model_type = config.get("model_type").and_then(Value::as_str);
            return match model_type {
                Some(t) => Self::from_model_type(t).ok_or_else(|| {
                    unknown(format!(
                        "config.json model_type {t:?} is not supported (expected idefics2, idefics3 or smolvlm)"
                    ))
                }),
                None => Err(unknown("config.json has no model_type".into())),
            };
        }
        let processor = read_json_if_exists(&dir.join("processor_config.json"))?;
        let preprocessor = read_json_if_exists(&dir.join("preprocessor_config.json"))?;
        let classes = [
            processor.as_ref().and_then(|p| p.get("processor_class")),
            processor
                .as_ref()
                .and_then(|p| p.get("image_processor"))
                .and_then(|p| p.get("image_processor_type")),
            preprocessor.as_ref().and_then(|p| p.get("processor_class")),
            preprocessor
                .as_ref()
                .and_then(|p| p.get("image_processor_type")),
        ];
        let found = classes
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(Self::from_class_name);
        found.ok_or_else(|| {
            unknown(
                "no config.json model_type and no Idefics2 / Idefics3 / SmolVLM processor class"
                    .into(),
            )
        })
    }
}

/// Errors of the family-level processor.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// Text side (tokenizer, template, configs, slot counts).
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// Image side (decode limits, configs, sizes).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The checkpoint's family could not be determined or is not supported.
    #[error("{dir}: {message}")]
    Family {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A text-side error in one row of a batch.
    #[error("prompt {row}: {source}")]
    Row {
        /// Row index in the batch.
        row: usize,
        /// The error.
        #[source]
        source: Box<PromptError>,
    },
    /// A request the family cannot serve (e.g. a video for Idefics2).
    #[error("{0}")]
    Unsupported(String),
}

/// Model inputs for one prompt: what transformers' processor returns for a batch of one.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedInputs {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// `pixel_values [1, M, 3, H, W]` and `pixel_attention_mask [1, M, H, W]` (M = 0 without images).
    pub images: ImageBatch,
    /// The prompt text before image expansion (chats: the rendered template).
    pub text: String,
    /// Idefics3 / SmolVLM: the grid of each image (empty for Idefics2).
    pub grids: Vec<TileGrid>,
}

/// The text of one batch row: a raw prompt with `<image>` markers, or chat messages with image parts.
#[derive(Debug, Clone, Copy)]
pub enum PromptText<'a> {
    /// `<image>` marks each image.
    Raw(&'a str),
    /// Rendered with the checkpoint's chat template.
    Chat(&'a [ChatMessage]),
}

/// One batch row: its text and its images, in slot order.
#[derive(Debug, Clone, Copy)]
pub struct PromptRow<'a> {
    /// The prompt.
    pub text: PromptText<'a>,
    /// The images of the row's image slots.
    pub images: &'a [RgbImage],
}

/// Model inputs for a batch (token ids not padded: padding side and id are the caller's).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedBatch {
    /// Token ids per row.
    pub input_ids: Vec<Vec<u32>>,
    /// `pixel_values [B, M, 3, H, W]` / `pixel_attention_mask [B, M, H, W]`; `None` when no row has images.
    pub images: Option<ImageBatch>,
    /// Each row's text before image expansion (chats: the rendered template).
    pub texts: Vec<String>,
    /// Idefics3 / SmolVLM: the grid of each image of each row (empty rows for Idefics2).
    pub grids: Vec<Vec<TileGrid>>,
    /// The splitting flag used for text and images alike.
    pub do_image_splitting: bool,
}

fn row_err(row: usize, e: PromptError) -> ProcessorError {
    ProcessorError::Row {
        row,
        source: Box::new(e),
    }
}

/// The processor of a checkpoint, whatever its family.
#[derive(Debug, Clone)]
pub enum FamilyProcessor {
    /// Idefics2.
    Idefics2 {
        /// Image side.
        image: Idefics2ImageProcessor,
        /// Text side.
        prompt: PromptProcessor,
    },
    /// Idefics3 and SmolVLM (same processing; SmolVLM adds videos).
    Idefics3 {
        /// Which of the two.
        family: ModelFamily,
        /// Image side.
        image: Idefics3ImageProcessor,
        /// Text side.
        prompt: Idefics3PromptProcessor,
    },
}

impl FamilyProcessor {
    /// Build the processor of a checkpoint directory, choosing the family with [`ModelFamily::from_dir`].
    pub fn from_dir(dir: &Path) -> Result<Self, ProcessorError> {
        Self::for_family(ModelFamily::from_dir(dir)?, dir)
    }

    /// Build the processor of a checkpoint directory for a known family.
    pub fn for_family(family: ModelFamily, dir: &Path) -> Result<Self, ProcessorError> {
        Ok(match family {
            ModelFamily::Idefics2 => Self::Idefics2 {
                image: Idefics2ImageProcessor::from_model_dir(dir)?,
                prompt: PromptProcessor::from_dir(dir)?,
            },
            ModelFamily::Idefics3 | ModelFamily::SmolVlm => Self::Idefics3 {
                family,
                image: Idefics3ImageProcessor::from_model_dir(dir)?,
                prompt: Idefics3PromptProcessor::from_dir(dir)?,
            },
        })
    }

    /// Idefics3 / SmolVLM: set the two options that leave parity with transformers (off by default): at most
    /// `max_tiles` tiles per image, and `upscale = false` to keep images smaller than `size.longest_edge` at their
    /// size (see [`crate::image::Idefics3ImageProcessorConfig`]). Idefics2 has no tiling: asking it for a
    /// non-default is an error.
    pub fn with_tiling_options(
        self,
        max_tiles: Option<usize>,
        upscale: bool,
    ) -> Result<Self, ProcessorError> {
        match self {
            Self::Idefics3 {
                family,
                image,
                prompt,
            } => {
                let config = crate::image::Idefics3ImageProcessorConfig {
                    max_tiles,
                    upscale,
                    ..image.config().clone()
                };
                Ok(Self::Idefics3 {
                    family,
                    image: Idefics3ImageProcessor::new(config)?,
                    prompt,
                })
            }
            Self::Idefics2 { .. } if max_tiles.is_none() && upscale => Ok(self),
            Self::Idefics2 { .. } => Err(ProcessorError::Unsupported(
                "max_tiles / no-upscale apply to Idefics3 / SmolVLM tiling; Idefics2 splits into 4 crops + the image"
                    .into(),
            )),
        }
    }

    /// The family.
    pub fn family(&self) -> ModelFamily {
        match self {
            Self::Idefics2 { .. } => ModelFamily::Idefics2,
            Self::Idefics3 { family, .. } => *family,
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        match self {
            Self::Idefics2 { prompt, .. } => prompt.tokenizer(),
            Self::Idefics3 { prompt, .. } => prompt.tokenizer(),
        }
    }

    /// The chat template, if the checkpoint has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        match self {
            Self::Idefics2 { prompt, .. } => prompt.chat_template(),
            Self::Idefics3 { prompt, .. } => prompt.chat_template(),
        }
    }

    /// The splitting flag a request gets: `override_splitting`, else the checkpoint's setting.
    pub fn resolve_splitting(&self, override_splitting: Option<bool>) -> bool {
        match self {
            Self::Idefics2 { prompt, .. } => prompt.resolve_splitting(override_splitting),
            Self::Idefics3 { image, .. } => {
                override_splitting.unwrap_or(image.config().do_image_splitting)
            }
        }
    }

    /// The tile grid a `width x height` image gets (Idefics3 / SmolVLM), computed from its size alone.
    fn grid_for_size(
        image: &Idefics3ImageProcessor,
        width: usize,
        height: usize,
        split: bool,
    ) -> TileGrid {
        if !split {
            return TileGrid::default();
        }
        let tile = image.config().max_image_size;
        let (h, w) = if image.config().do_resize {
            image.resize_target(height.max(1), width.max(1), true)
        } else {
            (height, width)
        };
        let (vh, vw) = crate::image::idefics3::vision_encoder_size(h, w, tile);
        crate::image::idefics3::grid_for(vh, vw, tile)
    }

    /// `<image>` tokens a `width x height` image costs in a prompt, without decoding it (admission checks).
    pub fn image_token_cost(&self, width: usize, height: usize, split: Option<bool>) -> usize {
        let split = self.resolve_splitting(split);
        let frames = match self {
            Self::Idefics2 { .. } if split => 5,
            Self::Idefics2 { .. } => 1,
            Self::Idefics3 { image, .. } => {
                Self::grid_for_size(image, width, height, split).frames()
            }
        };
        frames * self.image_seq_len()
    }

    /// The token ids of a chat whose image parts stand for images of these `(width, height)` sizes, without
    /// processing any pixels (what admission and usage counting need).
    pub fn chat_token_ids(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        image_sizes: &[(usize, usize)],
        split: Option<bool>,
    ) -> Result<Vec<u32>, ProcessorError> {
        let split = self.resolve_splitting(split);
        Ok(match self {
            Self::Idefics2 { prompt, .. } => {
                prompt
                    .encode_chat(
                        messages,
                        add_generation_prompt,
                        image_sizes.len(),
                        Some(split),
                    )?
                    .input_ids
            }
            Self::Idefics3 { image, prompt, .. } => {
                let grids: Vec<TileGrid> = image_sizes
                    .iter()
                    .map(|&(w, h)| Self::grid_for_size(image, w, h, split))
                    .collect();
                prompt
                    .encode_chat(messages, add_generation_prompt, &grids)?
                    .input_ids
            }
        })
    }

    /// The settings that shape a run's inputs, for run descriptions (eval reports).
    pub fn settings_json(&self, override_splitting: Option<bool>) -> Value {
        let mut out = serde_json::json!({
            "family": self.family().model_type(),
            "do_image_splitting": self.resolve_splitting(override_splitting),
            "image_seq_len": self.image_seq_len(),
        });
        let extra = match self {
            Self::Idefics2 { image, .. } => {
                let c = image.config();
                serde_json::json!({
                    "shortest_edge": c.size.shortest_edge,
                    "longest_edge": c.size.longest_edge,
                    "resample": format!("{:?}", c.resample),
                })
            }
            Self::Idefics3 { image, .. } => {
                let c = image.config();
                serde_json::json!({
                    "longest_edge": c.size.longest_edge,
                    "max_image_size": c.max_image_size,
                    "resample": format!("{:?}", c.resample),
                    "max_tiles": c.max_tiles,
                    "upscale": c.upscale,
                })
            }
        };
        if let (Some(out), Value::Object(extra)) = (out.as_object_mut(), extra) {
            out.extend(extra);
        }
        out
    }

    /// `<image>` tokens per (sub-)image / tile.
    pub fn image_seq_len(&self) -> usize {
        match self {
            Self::Idefics2 { prompt, .. } => prompt.config().image_seq_len,
            Self::Idefics3 { prompt, .. } => prompt.config().image_seq_len,
        }
    }

    /// A batch as transformers' `processor(text=[...], images=[[...], ...])` computes it: per row the token ids
    /// (not padded), and one `pixel_values` for the whole batch (padded to the most frames of any row; `None`
    /// when no row has images). `do_image_splitting` overrides the checkpoint's setting when `Some`.
    pub fn process_batch(
        &self,
        rows: &[PromptRow<'_>],
        add_generation_prompt: bool,
        do_image_splitting: Option<bool>,
    ) -> Result<ProcessedBatch, ProcessorError> {
        let samples: Vec<Vec<RgbImage>> = rows.iter().map(|r| r.images.to_vec()).collect();
        let any_image = samples.iter().any(|s| !s.is_empty());
        match self {
            Self::Idefics2 { image, prompt } => {
                let splitting = prompt.resolve_splitting(do_image_splitting);
                let mut encoded = Vec::with_capacity(rows.len());
                for (i, row) in rows.iter().enumerate() {
                    let n = row.images.len();
                    let e = match row.text {
                        PromptText::Raw(t) => prompt.encode_prompt(t, n, Some(splitting)),
                        PromptText::Chat(m) => {
                            prompt.encode_chat(m, add_generation_prompt, n, Some(splitting))
                        }
                    }
                    .map_err(|e| row_err(i, e))?;
                    encoded.push(e);
                }
                let images = if any_image {
                    let batch = image.preprocess(&samples, Some(splitting))?;
                    for (i, (e, &got)) in encoded.iter().zip(&batch.frames_per_sample).enumerate() {
                        e.check_image_rows(got).map_err(|e| row_err(i, e))?;
                    }
                    Some(batch)
                } else {
                    None
                };
                let (input_ids, texts) = encoded.into_iter().map(|e| (e.input_ids, e.text)).unzip();
                Ok(ProcessedBatch {
                    input_ids,
                    images,
                    texts,
                    grids: vec![Vec::new(); rows.len()],
                    do_image_splitting: splitting,
                })
            }
            Self::Idefics3 { image, prompt, .. } => {
                let splitting = do_image_splitting.unwrap_or(image.config().do_image_splitting);
                let (images, grids) = if any_image {
                    let batch = image.preprocess(&samples, Some(splitting))?;
                    (Some(batch.images), batch.grids)
                } else {
                    (None, vec![Vec::new(); rows.len()])
                };
                let mut input_ids = Vec::with_capacity(rows.len());
                let mut texts = Vec::with_capacity(rows.len());
                for (i, (row, g)) in rows.iter().zip(&grids).enumerate() {
                    let e = match row.text {
                        PromptText::Raw(t) => prompt.encode_prompt(t, g),
                        PromptText::Chat(m) => prompt.encode_chat(m, add_generation_prompt, g),
                    }
                    .map_err(|e| row_err(i, e))?;
                    let frames = images.as_ref().map_or(0, |b| b.frames_per_sample[i]);
                    e.check_frames(frames).map_err(|e| row_err(i, e))?;
                    input_ids.push(e.input_ids);
                    texts.push(e.text);
                }
                Ok(ProcessedBatch {
                    input_ids,
                    images,
                    texts,
                    grids,
                    do_image_splitting: splitting,
                })
            }
        }
    }

    /// A raw prompt whose `<image>` markers stand for `images` (in order), as `processor(text=prompt,
    /// images=images)`. `do_image_splitting` overrides the checkpoint's setting when `Some`.
    pub fn process_prompt(
        &self,
        prompt: &str,
        images: &[RgbImage],
        do_image_splitting: Option<bool>,
    ) -> Result<ProcessedInputs, ProcessorError> {
        let row = PromptRow {
            text: PromptText::Raw(prompt),
            images,
        };
        self.single(row, false, do_image_splitting)
    }

    /// A chat rendered with the checkpoint's template; `images` fill the image parts in order.
    pub fn process_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        images: &[RgbImage],
        do_image_splitting: Option<bool>,
    ) -> Result<ProcessedInputs, ProcessorError> {
        let row = PromptRow {
            text: PromptText::Chat(messages),
            images,
        };
        self.single(row, add_generation_prompt, do_image_splitting)
    }

    fn single(
        &self,
        row: PromptRow<'_>,
        add_generation_prompt: bool,
        do_image_splitting: Option<bool>,
    ) -> Result<ProcessedInputs, ProcessorError> {
        let mut b = self.process_batch(&[row], add_generation_prompt, do_image_splitting)?;
        let images = b.images.take().unwrap_or(ImageBatch {
            pixel_values: Vec::new(),
            pixel_values_shape: [1, 0, 3, 0, 0],
            pixel_attention_mask: Vec::new(),
            frames_per_sample: vec![0],
            frame_sizes: vec![Vec::new()],
        });
        Ok(ProcessedInputs {
            input_ids: b.input_ids.pop().unwrap_or_default(),
            images,
            text: b.texts.pop().unwrap_or_default(),
            grids: b.grids.pop().unwrap_or_default(),
        })
    }

    /// SmolVLM2 videos in a chat: video parts of `messages` stand for `videos` (in order); the chat is rendered
    /// with SmolVLM's video template, as `SmolVLMProcessor.apply_chat_template` does. Frames as in
    /// [`Self::process_video_prompt`].
    pub fn process_video_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        videos: &[(Vec<RgbImage>, VideoClip)],
        settings: &VideoProcessorSettings,
    ) -> Result<ProcessedInputs, ProcessorError> {
        let (image, p) = self.video_parts(videos)?;
        let clips: Vec<VideoClip> = videos.iter().map(|(_, c)| c.clone()).collect();
        let encoded = p.encode_video_chat(messages, add_generation_prompt, &clips)?;
        let images = video_frames(image, videos, settings)?;
        encoded.check_frames(images.pixel_values_shape[1])?;
        Ok(ProcessedInputs {
            input_ids: encoded.input_ids,
            images,
            text: encoded.text,
            grids: encoded.grids,
        })
    }

    fn video_parts(
        &self,
        videos: &[(Vec<RgbImage>, VideoClip)],
    ) -> Result<(&Idefics3ImageProcessor, &Idefics3PromptProcessor), ProcessorError> {
        let Self::Idefics3 { image, prompt, .. } = self else {
            return Err(ProcessorError::Unsupported(
                "videos need a SmolVLM / Idefics3 checkpoint; Idefics2 takes images only".into(),
            ));
        };
        for (frames, clip) in videos {
            if frames.len() != clip.timestamps.len() {
                return Err(ProcessorError::Unsupported(format!(
                    "a video has {} frames but {} timestamps",
                    frames.len(),
                    clip.timestamps.len()
                )));
            }
        }
        Ok((image, prompt))
    }

    /// SmolVLM2 videos: a prompt whose `<video>` markers stand for `videos` (frames already chosen, e.g. with
    /// [`crate::video::sample_frame_indices`], and their timestamps). Every frame is one unsplit image, resized
    /// as `settings` say ([`VideoProcessorSettings::from_dir`]).
    pub fn process_video_prompt(
        &self,
        prompt: &str,
        videos: &[(Vec<RgbImage>, VideoClip)],
        settings: &VideoProcessorSettings,
    ) -> Result<ProcessedInputs, ProcessorError> {
        let (image, p) = self.video_parts(videos)?;
        let clips: Vec<VideoClip> = videos.iter().map(|(_, c)| c.clone()).collect();
        let expanded = expand_video_prompts(prompt, &clips, p.config().image_seq_len)?;
        let input_ids = p.tokenizer().encode(&expanded, true)?;
        let images = video_frames(image, videos, settings)?;
        let n = images.pixel_values_shape[1];
        Ok(ProcessedInputs {
            input_ids,
            images,
            text: prompt.to_string(),
            grids: vec![TileGrid::default(); n],
        })
    }
}

/// Every frame of every video as one unsplit image, all in one sample.
fn video_frames(
    image: &Idefics3ImageProcessor,
    videos: &[(Vec<RgbImage>, VideoClip)],
    settings: &VideoProcessorSettings,
) -> Result<ImageBatch, ImageError> {
    let mut frames = Vec::new();
    for (video, _) in videos {
        for f in video {
            frames.push(image.video_frame(f, settings.longest_edge, settings.max_image_size)?);
        }
    }
    image.pack(&[frames])
}
