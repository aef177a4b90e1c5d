//! The real engine: the Idefics2 pipeline (processor + model + generation loop) that `idefics ask` uses, behind
//! [`ChatEngine`].

use crate::engine::{
    BatchItem, ChatEngine, ChatPrompt, EngineError, EngineFinish, Flow, Generation, Part,
    PromptTokens, Role,
};
use idefics::generate::{FinishReason, GenerationRequest, SamplingParams};
use idefics::pipeline::{Pipeline, Prompt, PromptInput};
use idefics::processor::{ChatMessage, ContentPart, RgbImage};

/// A request in the processor's types: messages, images in slot order, and the splitting flag it asks for.
type ConvertedPrompt = (Vec<ChatMessage>, Vec<RgbImage>, Option<bool>);

/// Serves one loaded checkpoint.
pub struct PipelineEngine {
    pipeline: Pipeline,
    model_id: String,
    max_batch_size: usize,
}

impl PipelineEngine {
    pub fn new(pipeline: Pipeline, model_id: String, max_batch_size: usize) -> Self {
        Self {
            pipeline,
            model_id,
            max_batch_size: max_batch_size.max(1),
        }
    }

    /// The chat messages and images of a request, in the processor's types.
    fn convert(prompt: &ChatPrompt) -> Result<ConvertedPrompt, EngineError> {
        let mut messages = Vec::with_capacity(prompt.messages.len());
        let mut images = Vec::new();
        let mut split = None;
        for message in &prompt.messages {
            let mut parts = Vec::with_capacity(message.content.len());
            for part in &message.content {
                match part {
                    Part::Text(text) => parts.push(ContentPart::Text { text: text.clone() }),
                    Part::Image(input) => {
                        // One splitting flag per request: the processor expands every image alike.
                        if let Some(s) = input.split {
                            if split.is_some_and(|prev| prev != s) {
                                return Err(EngineError::BadInput(format!(
                                    "image {}: all images of a request must use the same `detail`",
                                    input.index + 1
                                )));
                            }
                            split = Some(s);
                        }
                        let (w, h) = input.image.dimensions();
                        let image =
                            RgbImage::new(w as usize, h as usize, input.image.as_raw().clone())
                                .map_err(|e| {
                                    EngineError::BadInput(format!("image {}: {e}", input.index + 1))
                                })?;
                        images.push(image);
                        parts.push(ContentPart::Image {});
                    }
                }
            }
            let role = match message.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            messages.push(ChatMessage::parts(role, parts));
        }
        Ok((messages, images, split))
    }

    fn request(item: &BatchItem) -> GenerationRequest {
        let p = &item.params;
        GenerationRequest {
            max_new_tokens: p.max_tokens,
            sampling: SamplingParams {
                temperature: Some(p.temperature),
                top_p: (p.top_p < 1.0).then_some(p.top_p),
                seed: p.seed.unwrap_or(0),
                ..SamplingParams::default()
            },
            // Stop strings are matched by the server (BatchItem::emit), across token boundaries.
            stop_strings: Vec::new(),
        }
    }

    /// Generates for items that share one splitting flag.
    fn generate_group(
        &self,
        items: &mut [&mut BatchItem],
        split: Option<bool>,
    ) -> Result<Vec<Generation>, EngineError> {
        let mut inputs = Vec::with_capacity(items.len());
        for item in items.iter() {
            let (messages, images, _) = Self::convert(&item.prompt)?;
            inputs.push(PromptInput {
                prompt: Prompt::Chat(messages),
                images,
            });
        }
        let prepared = self
            .pipeline
            .prepare(&inputs, split)
            .map_err(engine_error)?;
        let requests: Vec<GenerationRequest> = items.iter().map(|i| Self::request(i)).collect();
        let out = self
            .pipeline
            .generate(&prepared, &requests, |row, delta| {
                match items.get_mut(row) {
                    Some(item) => item.emit(delta) == Flow::Continue && !item.is_cancelled(),
                    None => false,
                }
            })
            .map_err(engine_error)?;
        Ok(out
            .into_iter()
            .map(|row| Generation {
                completion_tokens: row.token_ids.len(),
                finish: match row.finish_reason {
                    FinishReason::Stop => EngineFinish::EndOfTurn,
                    FinishReason::Length => EngineFinish::MaxTokens,
                    FinishReason::Cancelled => EngineFinish::StoppedByCaller,
                },
            })
            .collect())
    }
}

/// Input problems are the client's (400); anything else is ours (500).
fn engine_error(e: idefics::Error) -> EngineError {
    match e {
        idefics::Error::Input(_) | idefics::Error::Prompt(_) | idefics::Error::Image(_) => {
            EngineError::BadInput(e.to_string())
        }
        other => EngineError::Internal(other.to_string()),
    }
}

impl ChatEngine for PipelineEngine {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn context_length(&self) -> usize {
        self.pipeline.context_length()
    }

    fn image_token_cost(&self, width: u32, height: u32, split: Option<bool>) -> usize {
        self.pipeline
            .processor
            .image_token_cost(width as usize, height as usize, split)
    }

    fn count_prompt_tokens(&self, prompt: &ChatPrompt) -> Result<PromptTokens, EngineError> {
        let (messages, images, split) = Self::convert(prompt)?;
        let sizes: Vec<(usize, usize)> = images.iter().map(|i| (i.width(), i.height())).collect();
        let encoded = self
            .pipeline
            .processor
            .chat_token_ids(&messages, true, &sizes, split)
            .map_err(|e| EngineError::BadInput(e.to_string()))?;
        let image_id = self.pipeline.processor.tokenizer().special_ids().image;
        let image_tokens = encoded.iter().filter(|&&t| t == image_id).count();
        Ok(PromptTokens {
            total: encoded.len(),
            image_tokens,
        })
    }

    fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }

    fn generate(&self, batch: &mut [BatchItem]) -> Vec<Result<Generation, EngineError>> {
        let mut results: Vec<Option<Result<Generation, EngineError>>> =
            (0..batch.len()).map(|_| None).collect();
        // Group by splitting flag; a request that cannot be converted fails alone.
        let mut groups: Vec<(Option<bool>, Vec<usize>)> = Vec::new();
        for (i, item) in batch.iter().enumerate() {
            if item.is_cancelled() {
                results[i] = Some(Ok(Generation {
                    completion_tokens: 0,
                    finish: EngineFinish::StoppedByCaller,
                }));
                continue;
            }
            match Self::convert(&item.prompt) {
                Ok((_, _, split)) => match groups.iter_mut().find(|(s, _)| *s == split) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((split, vec![i])),
                },
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        for (split, members) in groups {
            let outcome = {
                let mut items: Vec<&mut BatchItem> = batch
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| members.contains(i))
                    .map(|(_, item)| item)
                    .collect();
                self.generate_group(&mut items, split)
            };
            match outcome {
                Ok(generations) => {
                    for (i, g) in members.iter().zip(generations) {
                        results[*i] = Some(Ok(g));
                    }
                }
                // A request the processor refuses (found while preparing the shared batch, before any text was
                // sent) must not fail the others: run them one by one.
                Err(EngineError::BadInput(_)) if members.len() > 1 => {
                    for &i in &members {
                        let mut single: Vec<&mut BatchItem> = vec![&mut batch[i]];
                        results[i] = Some(
                            self.generate_group(&mut single, split)
                                .map(|mut g| g.remove(0)),
                        );
                    }
                }
                Err(e) => {
                    for &i in &members {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(EngineError::Internal("item was not generated".into())))
            })
            .collect()
    }
}
