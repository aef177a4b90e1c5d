//! A deterministic stand-in engine, so that the whole API can be tested without weights.
//!
//! It counts tokens the way the Idefics2 processor is laid out (a fixed template cost per turn, 64 tokens per
//! image, 320 with image splitting = 4 crops + the global image), answers with an echo of the last user turn
//! plus a description of the images it received, and streams that answer in 3-character "tokens" so that stop
//! strings straddle token boundaries. Batches advance in lock step, one token per item per step, like a real
//! batched decoder. Magic words in the last user message make it fail on purpose: `MOCK_ENGINE_ERROR` (an
//! engine error for that item) and `MOCK_PANIC` (a panic inside `generate`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idefics::processor::{ContentPart, MessageContent};

use crate::engine::{
    message_text, BatchItem, ChatEngine, ChatPrompt, EngineError, EngineFinish, Flow, Generation,
    PromptTokens,
};

/// Image tokens per image without splitting (Idefics2 perceiver latents).
pub const MOCK_IMAGE_TOKENS: usize = 64;
/// With splitting: 4 crops + 1 global image.
pub const MOCK_SPLIT_IMAGE_TOKENS: usize = 5 * MOCK_IMAGE_TOKENS;
/// Characters per mock token.
const CHARS_PER_TOKEN: usize = 3;
/// Template tokens per message ("User:" ... "<end_of_utterance>\n") and for the generation prompt ("Assistant:").
const TOKENS_PER_MESSAGE: usize = 3;
const GENERATION_PROMPT_TOKENS: usize = 2;

/// The mock engine; see the module docs.
#[derive(Debug)]
pub struct MockEngine {
    pub model_id: String,
    pub context_length: usize,
    pub max_batch_size: usize,
    /// Default for images without a `detail` override.
    pub split_images: bool,
    /// Sleep per decoding step (simulates model time; lets tests cancel mid-generation).
    pub step_delay: Duration,
    /// Attention heads of a pretend eager prefill: `prefill_bytes` = 4 × 2 × heads × tokens². 0 = no estimate.
    pub attention_heads: usize,
    /// Batching statistics, for tests.
    pub stats: MockStats,
}

/// What the mock has seen (read through [`MockEngine::max_batch_seen`] and [`MockEngine::batches`]).
#[derive(Debug, Default)]
pub struct MockStats {
    max_batch_seen: AtomicUsize,
    batches: AtomicUsize,
    counted: AtomicUsize,
}

impl Default for MockEngine {
    fn default() -> Self {
        Self {
            model_id: "idefics-mock".into(),
            context_length: 4096,
            max_batch_size: 8,
            split_images: false,
            step_delay: Duration::ZERO,
            attention_heads: 0,
            stats: MockStats::default(),
        }
    }
}

impl MockEngine {
    /// Largest batch `generate` has been called with so far.
    pub fn max_batch_seen(&self) -> usize {
        self.stats.max_batch_seen.load(Ordering::SeqCst)
    }

    /// Number of `count_prompt_tokens` calls so far (prompts that reached tokenisation).
    pub fn prompts_counted(&self) -> usize {
        self.stats.counted.load(Ordering::SeqCst)
    }

    /// Number of `generate` calls so far.
    pub fn batches(&self) -> usize {
        self.stats.batches.load(Ordering::SeqCst)
    }

    fn text_tokens(text: &str) -> usize {
        text.chars().count().div_ceil(CHARS_PER_TOKEN)
    }

    /// The full answer the mock gives to a prompt.
    pub fn answer(&self, prompt: &ChatPrompt) -> String {
        let last_user = prompt
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(message_text)
            .unwrap_or_default();
        let user_turns = prompt.messages.iter().filter(|m| m.role == "user").count();
        let mut answer = format!("You said: {last_user}");
        let sizes: Vec<String> = prompt
            .images
            .iter()
            .map(|image| {
                let p = image.as_bytes();
                format!(
                    "{}x{} #{:02x}{:02x}{:02x}",
                    image.width(),
                    image.height(),
                    p[0],
                    p[1],
                    p[2]
                )
            })
            .collect();
        if !sizes.is_empty() {
            answer.push_str(&format!(
                " | turn {user_turns}, {} image(s): {}",
                sizes.len(),
                sizes.join(", ")
            ));
        }
        answer
    }
}

/// Split on char boundaries into pieces of `CHARS_PER_TOKEN` characters.
fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(CHARS_PER_TOKEN)
        .map(|c| c.iter().collect())
        .collect()
}

impl ChatEngine for MockEngine {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn image_token_cost(&self, _width: u32, _height: u32, split: Option<bool>) -> usize {
        if split.unwrap_or(self.split_images) {
            MOCK_SPLIT_IMAGE_TOKENS
        } else {
            MOCK_IMAGE_TOKENS
        }
    }

    fn count_prompt_tokens(&self, prompt: &ChatPrompt) -> Result<PromptTokens, EngineError> {
        self.stats.counted.fetch_add(1, Ordering::SeqCst);
        let mut total = GENERATION_PROMPT_TOKENS;
        let mut image_tokens = 0;
        for m in &prompt.messages {
            total += TOKENS_PER_MESSAGE;
            match &m.content {
                MessageContent::Text(t) => total += Self::text_tokens(t),
                MessageContent::Parts(parts) => {
                    for part in parts {
                        if let ContentPart::Text { text } = part {
                            total += Self::text_tokens(text);
                        }
                    }
                }
            }
        }
        for (image, split) in prompt.images.iter().zip(&prompt.image_splits) {
            image_tokens +=
                self.image_token_cost(image.width() as u32, image.height() as u32, *split);
        }
        Ok(PromptTokens {
            total: total + image_tokens,
            image_tokens,
        })
    }

    fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }

    /// A mock token is 3 characters of at most 4 bytes.
    fn max_bytes_per_token(&self) -> Option<usize> {
        Some(CHARS_PER_TOKEN * 4)
    }

    fn prefill_bytes(&self, _prompt: &ChatPrompt, tokens: PromptTokens) -> u64 {
        let n = tokens.total as u64;
        4 * 2 * self.attention_heads as u64 * n * n
    }

    fn generate(&self, batch: &mut [BatchItem]) -> Vec<Result<Generation, EngineError>> {
        self.stats.batches.fetch_add(1, Ordering::SeqCst);
        self.stats
            .max_batch_seen
            .fetch_max(batch.len(), Ordering::SeqCst);
        let mut results: Vec<Option<Result<Generation, EngineError>>> = vec![None; batch.len()];
        let mut plans: Vec<Vec<String>> = Vec::with_capacity(batch.len());
        for (i, item) in batch.iter().enumerate() {
            let last = item
                .prompt
                .messages
                .last()
                .map(message_text)
                .unwrap_or_default();
            if last.contains("MOCK_PANIC") {
                panic!("mock engine panic requested by {}", item.request_id);
            }
            if last.contains("MOCK_ENGINE_ERROR") {
                results[i] = Some(Err(EngineError::Internal(
                    "mock engine error requested".into(),
                )));
            }
            plans.push(pieces(&self.answer(&item.prompt)));
        }
        // Lock-step decoding: one token per live item per step.
        let mut produced = vec![0usize; batch.len()];
        loop {
            let live: Vec<usize> = (0..batch.len()).filter(|&i| results[i].is_none()).collect();
            if live.is_empty() {
                break;
            }
            if !self.step_delay.is_zero() {
                std::thread::sleep(self.step_delay);
            }
            for i in live {
                let item = &mut batch[i];
                let finished = |n: usize, finish| {
                    Some(Ok(Generation {
                        completion_tokens: n,
                        finish,
                    }))
                };
                if item.is_cancelled() {
                    results[i] = finished(produced[i], EngineFinish::StoppedByCaller);
                    continue;
                }
                if produced[i] >= item.params.max_new_tokens {
                    results[i] = finished(produced[i], EngineFinish::MaxTokens);
                    continue;
                }
                let Some(piece) = plans[i].get(produced[i]) else {
                    // The end-of-turn token: counted as generated, never shown.
                    produced[i] += 1;
                    results[i] = finished(produced[i], EngineFinish::EndOfTurn);
                    continue;
                };
                produced[i] += 1;
                if item.emit(piece) == Flow::Stop {
                    results[i] = finished(produced[i], EngineFinish::StoppedByCaller);
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(EngineError::Internal("mock: item left unfinished".into())))
            })
            .collect()
    }
}
