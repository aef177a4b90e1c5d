//! The user-facing pipeline: checkpoint directory -> (chat, images) -> model inputs -> generated text.
//!
//! This is the one place where the processor, the model and the generation loop meet; the CLI (`idefics ask`,
//! `idefics chat`, `idefics forward --prompt`) and the server call it and never re-implement a step.

use crate::error::{Error, Result};
use crate::generate::{GeneratedSequence, GenerationConfig, GenerationRequest, Generator};
use crate::model::{Idefics2ForConditionalGeneration, LoadOptions, ModelInputs};
use candle_core::{Device, Tensor};
use idefics_processor::{
    ChatMessage, EncodedPrompt, Idefics2ImageProcessor, ImageBatch, PromptProcessor, RgbImage,
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

/// Checkpoint + processors + generation defaults.
pub struct Idefics2Pipeline {
    pub model: Idefics2ForConditionalGeneration,
    pub prompts: PromptProcessor,
    pub images: Idefics2ImageProcessor,
    pub generation_config: GenerationConfig,
}

impl Idefics2Pipeline {
    /// Loads the model, tokenizer, chat template, image processor and generation config of `dir`.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        // The small files first: a broken tokenizer fails before gigabytes of weights are read.
        let (prompts, images, generation_config) = Self::processors(dir)?;
        let model = Idefics2ForConditionalGeneration::load(dir, opts)?;
        Self::assemble(model, prompts, images, generation_config)
    }

    /// A pipeline around a model already in memory (e.g. the one being trained), with the tokenizer, chat
    /// template, processor and generation configs of `dir` (a checkpoint folder, or any folder holding
    /// `tokenizer.json`, `tokenizer_config.json`, `processor_config.json` and optionally
    /// `generation_config.json`). Nothing is written and no weights are read. `Idefics2ForConditionalGeneration`
    /// is `Clone` and its clone shares the weight tensors, so a trainer can pass `model.clone()`.
    pub fn from_parts(model: Idefics2ForConditionalGeneration, dir: &Path) -> Result<Self> {
        let (prompts, images, generation_config) = Self::processors(dir)?;
        Self::assemble(model, prompts, images, generation_config)
    }

    fn processors(
        dir: &Path,
    ) -> Result<(PromptProcessor, Idefics2ImageProcessor, GenerationConfig)> {
        let prompts = PromptProcessor::from_dir(dir)?;
        let images = Idefics2ImageProcessor::from_model_dir(dir)?;
        let generation_config =
            GenerationConfig::from_dir(dir).map_err(|e| Error::Config(e.to_string()))?;
        Ok((prompts, images, generation_config))
    }

    fn assemble(
        model: Idefics2ForConditionalGeneration,
        prompts: PromptProcessor,
        images: Idefics2ImageProcessor,
        generation_config: GenerationConfig,
    ) -> Result<Self> {
        let mut pipeline = Self {
            model,
            prompts,
            images,
            generation_config,
        };
        pipeline.check_consistency()?;
        pipeline.ban_image_tokens();
        Ok(pipeline)
    }

    /// The tokenizer's special tokens must be the ones the model was built for.
    fn check_consistency(&self) -> Result<()> {
        let ids = self.prompts.tokenizer().special_ids();
        let expected = self.model.config().image_token_id;
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
        self.model.config().text_config.max_position_embeddings
    }

    /// Tokenizes and processes a batch; rows are left-padded. Errors (image count mismatch, bad image, prompt
    /// longer than the context) come before the model runs.
    pub fn prepare(
        &self,
        batch: &[PromptInput],
        do_image_splitting: Option<bool>,
    ) -> Result<PreparedBatch> {
        if batch.is_empty() {
            return Err(Error::Input("empty batch".into()));
        }
        let mut encoded: Vec<EncodedPrompt> = Vec::with_capacity(batch.len());
        for (row, input) in batch.iter().enumerate() {
            let e = match &input.prompt {
                Prompt::Chat(messages) => {
                    self.prompts
                        .encode_chat(messages, true, input.images.len(), do_image_splitting)
                }
                Prompt::Raw(text) => {
                    self.prompts
                        .encode_prompt(text, input.images.len(), do_image_splitting)
                }
            }
            .map_err(|e| Error::Input(format!("prompt {row}: {e}")))?;
            if e.input_ids.len() > self.context_length() {
                return Err(Error::Input(format!(
                    "prompt {row} has {} tokens ({} of them image tokens) but the model's context is {}",
                    e.input_ids.len(),
                    self.count_image_tokens(&e.input_ids),
                    self.context_length()
                )));
            }
            encoded.push(e);
        }
        let splitting = encoded[0].do_image_splitting;
        let image_tokens: Vec<usize> = encoded
            .iter()
            .map(|e| self.count_image_tokens(&e.input_ids))
            .collect();
        let prompt_ids: Vec<Vec<u32>> = encoded.into_iter().map(|e| e.input_ids).collect();

        let device = self.model.device();
        let pad = self
            .generation_config
            .pad_token_id
            .or(self.prompts.tokenizer().special_ids().pad)
            .unwrap_or(0);
        let (input_ids, attention_mask) =
            crate::generate::left_padded_batch(&prompt_ids, pad, device)?;
        let any_image = batch.iter().any(|b| !b.images.is_empty());
        let (pixel_values, pixel_attention_mask, images) = if any_image {
            let samples: Vec<Vec<RgbImage>> = batch.iter().map(|b| b.images.clone()).collect();
            let processed = self.images.preprocess(&samples, Some(splitting))?;
            let (values, mask) = image_tensors(&processed, device)?;
            (Some(values), Some(mask), Some(processed))
        } else {
            (None, None, None)
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
        let image = self.prompts.tokenizer().special_ids().image;
        ids.iter().filter(|&&t| t == image).count()
    }

    /// Generates for a prepared batch; `<end_of_utterance>` always ends an answer (it never leaks into text).
    pub fn generate(
        &self,
        batch: &PreparedBatch,
        requests: &[GenerationRequest],
        on_delta: impl FnMut(usize, &str) -> bool,
    ) -> Result<Vec<GeneratedSequence>> {
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
        let special = self.prompts.tokenizer().special_ids();
        let generator = Generator {
            model: &self.model,
            generation_config: &self.generation_config,
            extra_eos_token_ids: vec![special.end_of_utterance],
            tokenizer: Some(self.prompts.tokenizer().inner()),
        };
        generator.generate(&batch.inputs, &batch.prompt_ids, requests, on_delta)
    }

    /// The image and fake-image tokens are never generated (idefics2-8b's `bad_words_ids`). We ban them even when
    /// a checkpoint's generation_config forgets to: they carry no text and would desynchronise image slots.
    fn ban_image_tokens(&mut self) {
        let special = self.prompts.tokenizer().special_ids();
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
