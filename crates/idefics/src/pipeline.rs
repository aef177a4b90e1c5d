//! The user-facing pipeline: checkpoint directory -> (chat, images) -> model inputs -> generated text.
//!
//! This is the one place where the processor, the model and the generation loop meet; the CLI (`idefics ask`,
//! `idefics chat`, `idefics forward --prompt`) and the server call it and never re-implement a step.

use crate::error::{Error, Result};
use crate::generate::{
    GeneratedSequence, GenerationConfig, GenerationRequest, Generator, RowResult,
};
use crate::model::{LoadOptions, ModelInputs, VlmModel};
use candle_core::{Device, Tensor};
use idefics_processor::{
    ChatMessage, FamilyProcessor, ImageBatch, ModelFamily, ProcessorError, PromptRow, PromptText,
    RgbImage, VideoClip, VideoProcessorSettings,
};
use std::path::Path;

/// One conversation (or raw prompt) with its images, in the order their slots appear.
#[derive(Debug, Clone)]
pub struct PromptInput {
    pub prompt: Prompt,
    pub images: Vec<RgbImage>,
}

/// What the user wrote: chat messages rendered with the checkpoint's template, or a raw prompt with `<image>`
/// placeholders (what `processor(text=..., images=...)` takes).
#[derive(Debug, Clone)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Raw(String),
}

/// Model inputs for a batch, plus what generation and accounting need.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    pub inputs: ModelInputs,
    /// Real prompt tokens of each row (no padding).
    pub prompt_ids: Vec<Vec<u32>>,
    /// `<image>` tokens in each row (image-token cost, for usage reports and context checks).
    pub image_tokens: Vec<usize>,
    /// The splitting flag used for both the text and the images.
    pub do_image_splitting: bool,
    /// The processed images (shape and values equal transformers' `pixel_values` / `pixel_attention_mask`).
    pub images: Option<ImageBatch>,
}

/// Checkpoint + processor + generation defaults, for any supported family (Idefics2, Idefics3, SmolVLM).
pub struct Pipeline {
    pub model: VlmModel,
    /// Tokenizer, chat template, prompt expansion and image processing of the checkpoint's family.
    pub processor: FamilyProcessor,
    pub generation_config: GenerationConfig,
}

impl Pipeline {
    /// Loads the model, tokenizer, chat template, image processor and generation config of `dir`; the family
    /// comes from `config.json`'s `model_type`.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        // The small files first: a broken tokenizer fails before gigabytes of weights are read.
        let (processor, generation_config) = Self::processors(dir)?;
        let model = VlmModel::load(dir, opts)?;
        Self::assemble(model, processor, generation_config)
    }

    /// A pipeline around a model already in memory (e.g. the one being trained), with the tokenizer, chat
    /// template, processor and generation configs of `dir` (a checkpoint folder, or any folder holding
    /// `config.json`, `tokenizer.json`, `tokenizer_config.json`, `processor_config.json` and optionally
    /// `generation_config.json`). Nothing is written and no weights are read. The models are `Clone` and a
    /// clone shares the weight tensors, so a trainer can pass `model.clone()`.
    pub fn from_parts(model: impl Into<VlmModel>, dir: &Path) -> Result<Self> {
        let (processor, generation_config) = Self::processors(dir)?;
        Self::assemble(model.into(), processor, generation_config)
    }

    fn processors(dir: &Path) -> Result<(FamilyProcessor, GenerationConfig)> {
        let processor = FamilyProcessor::from_dir(dir)?;
        let generation_config =
            GenerationConfig::from_dir(dir).map_err(|e| Error::Config(e.to_string()))?;
        Ok((processor, generation_config))
    }

    fn assemble(
        model: VlmModel,
        processor: FamilyProcessor,
        generation_config: GenerationConfig,
    ) -> Result<Self> {
        let mut pipeline = Self {
            model,
            processor,
            generation_config,
        };
        pipeline.check_consistency()?;
        pipeline.ban_image_tokens();
        Ok(pipeline)
    }

    /// The processor must be of the model's family, and the tokenizer's special tokens the ones the model was
    /// built for.
    fn check_consistency(&self) -> Result<()> {
        let (processor, model) = (self.processor.family(), self.model.family());
        if processor != model {
            return Err(Error::Config(format!(
                "the processor files are for {} but the model is {}",
                processor.model_type(),
                model.model_type()
            )));
        }
        let ids = self.processor.tokenizer().special_ids();
        let expected = self.model.image_token_id();
        if ids.image != expected {
            return Err(Error::Config(format!(
                "the tokenizer's <image> id is {} but config.json says image_token_id = {expected}",
                ids.image
            )));
        }
        Ok(())
    }

    /// Most tokens a row may hold (prompt + answer).
    pub fn context_length(&self) -> usize {
        self.model.max_position_embeddings()
    }

    /// Tokenizes and processes a batch; rows are left-padded. Errors (image count mismatch, bad image, prompt
    /// longer than the context) come before the model runs.
    pub fn prepare(
        &self,
        batch: &[PromptInput],
        do_image_splitting: Option<bool>,
    ) -> Result<PreparedBatch> {
        let rows: Vec<PromptRow<'_>> = batch
            .iter()
            .map(|input| PromptRow {
                text: match &input.prompt {
                    Prompt::Chat(messages) => PromptText::Chat(messages),
                    Prompt::Raw(text) => PromptText::Raw(text),
                },
                images: &input.images,
            })
            .collect();
        self.prepare_rows(&rows, do_image_splitting)
    }

    /// [`Pipeline::prepare`] over borrowed rows (a caller that keeps its messages and images, such as the
    /// server, which may run a request again, hands them over without a copy).
    pub fn prepare_rows(
        &self,
        rows: &[PromptRow<'_>],
        do_image_splitting: Option<bool>,
    ) -> Result<PreparedBatch> {
        if rows.is_empty() {
            return Err(Error::Input("empty batch".into()));
        }
        let processed = self
            .processor
            .process_batch(rows, true, do_image_splitting)
            .map_err(|e| match e {
                ProcessorError::Image(e) => Error::Image(e),
                other => Error::Input(other.to_string()),
            })?;
        for (row, ids) in processed.input_ids.iter().enumerate() {
            if ids.len() > self.context_length() {
                return Err(Error::Input(format!(
                    "prompt {row} has {} tokens ({} of them image tokens) but the model's context is {}",
                    ids.len(),
                    self.count_image_tokens(ids),
                    self.context_length()
                )));
            }
        }
        self.assemble_batch(
            processed.input_ids,
            processed.images,
            processed.do_image_splitting,
        )
    }

    /// SmolVLM2 (`model_type` smolvlm): one chat whose single video part stands for `frames`, shown at the times
    /// of `clip`; rendered and expanded as `SmolVLMProcessor.apply_chat_template` with a video does (frames never
    /// split, `Frame from MM:SS:` before each; [`FamilyProcessor::process_video_chat`]). Other families are
    /// refused: their checkpoints were not trained on videos.
    pub fn prepare_video_chat(
        &self,
        messages: &[ChatMessage],
        frames: Vec<RgbImage>,
        clip: VideoClip,
        settings: &VideoProcessorSettings,
    ) -> Result<PreparedBatch> {
        let family = self.processor.family();
        if family != ModelFamily::SmolVlm {
            return Err(Error::Input(format!(
                "video frames need a SmolVLM2 checkpoint (config.json model_type \"smolvlm\"); this one is \"{}\"",
                family.model_type()
            )));
        }
        if frames.is_empty() {
            return Err(Error::Input("a video needs at least one frame".into()));
        }
        let processed = self
            .processor
            .process_video_chat(messages, true, &[(frames, clip)], settings)
            .map_err(|e| match e {
                ProcessorError::Image(e) => Error::Image(e),
                other => Error::Input(other.to_string()),
            })?;
        if processed.input_ids.len() > self.context_length() {
            return Err(Error::Input(format!(
                "the prompt has {} tokens ({} of them image tokens) but the model's context is {}",
                processed.input_ids.len(),
                self.count_image_tokens(&processed.input_ids),
                self.context_length()
            )));
        }
        self.assemble_batch(vec![processed.input_ids], Some(processed.images), false)
    }

    /// Left-pads the rows and turns the processed images into tensors.
    fn assemble_batch(
        &self,
        prompt_ids: Vec<Vec<u32>>,
        images: Option<ImageBatch>,
        splitting: bool,
    ) -> Result<PreparedBatch> {
        let image_tokens: Vec<usize> = prompt_ids
            .iter()
            .map(|ids| self.count_image_tokens(ids))
            .collect();
        let device = self.model.device();
        let pad = self
            .generation_config
            .pad_token_id
            .or(self.processor.tokenizer().special_ids().pad)
            .unwrap_or(0);
        let (input_ids, attention_mask) =
            crate::generate::left_padded_batch(&prompt_ids, pad, device)?;
        let (pixel_values, pixel_attention_mask, images) = match images {
            Some(images) => {
                let (values, mask) = image_tensors(&images, device)?;
                (Some(values), Some(mask), Some(images))
            }
            None => (None, None, None),
        };
        Ok(PreparedBatch {
            inputs: ModelInputs {
                input_ids: Some(input_ids),
                attention_mask: Some(attention_mask),
                position_ids: None,
                pixel_values,
                pixel_attention_mask,
                inputs_embeds: None,
            },
            prompt_ids,
            image_tokens,
            do_image_splitting: splitting,
            images,
        })
    }

    fn count_image_tokens(&self, ids: &[u32]) -> usize {
        let image = self.processor.tokenizer().special_ids().image;
        ids.iter().filter(|&&t| t == image).count()
    }

    /// Generates for a prepared batch; `<end_of_utterance>` always ends an answer (it never leaks into text).
    pub fn generate(
        &self,
        batch: &PreparedBatch,
        requests: &[GenerationRequest],
        on_delta: impl FnMut(usize, &str) -> bool,
    ) -> Result<Vec<GeneratedSequence>> {
        self.generate_rows(batch, requests, on_delta)?
            .into_iter()
            .collect()
    }

    /// [`Pipeline::generate`] with per-row errors (see [`Generator::generate_rows`]): one row's sampling or
    /// decoding failure ends that row only.
    pub fn generate_rows(
        &self,
        batch: &PreparedBatch,
        requests: &[GenerationRequest],
        on_delta: impl FnMut(usize, &str) -> bool,
    ) -> Result<Vec<RowResult>> {
        for (row, (prompt, request)) in batch.prompt_ids.iter().zip(requests).enumerate() {
            if prompt.len() + request.max_new_tokens > self.context_length() {
                return Err(Error::Input(format!(
                    "prompt {row} ({} tokens) + max_new_tokens ({}) exceeds the model's context of {}",
                    prompt.len(),
                    request.max_new_tokens,
                    self.context_length()
                )));
            }
        }
        let special = self.processor.tokenizer().special_ids();
        let generator = Generator {
            model: &self.model,
            generation_config: &self.generation_config,
            extra_eos_token_ids: vec![special.end_of_utterance],
            tokenizer: Some(self.processor.tokenizer().inner()),
        };
        generator.generate_rows(&batch.inputs, &batch.prompt_ids, requests, on_delta)
    }

    /// The image and fake-image tokens are never generated (idefics2-8b's `bad_words_ids`). We ban them even when
    /// a checkpoint's generation_config forgets to: they carry no text and would desynchronise image slots.
    fn ban_image_tokens(&mut self) {
        let special = self.processor.tokenizer().special_ids();
        for id in [special.fake_image, special.image] {
            if !self
                .generation_config
                .bad_words_ids
                .iter()
                .any(|w| w == &[id])
            {
                self.generation_config.bad_words_ids.push(vec![id]);
            }
        }
    }
}

/// `pixel_values` `[B, M, 3, H, W]` f32 and `pixel_attention_mask` `[B, M, H, W]` u8 tensors of a processed batch.
pub fn image_tensors(batch: &ImageBatch, device: &Device) -> Result<(Tensor, Tensor)> {
    let values = Tensor::from_slice(
        &batch.pixel_values,
        batch.pixel_values_shape.to_vec(),
        device,
    )?;
    let mask = Tensor::from_slice(
        &batch.pixel_attention_mask,
        batch.mask_shape().to_vec(),
        device,
    )?;
    Ok((values, mask))
}
