//! `idefics-serve`: an OpenAI-compatible chat-completions server for vision-language models.
//!
//! Endpoints: `POST /v1/chat/completions` (text + `image_url` parts, streaming or not), `GET /v1/models`,
//! `GET /v1/models/{id}`, `GET /health`. Errors use OpenAI's JSON shape (`{"error": {...}}`) with a matching
//! status; parameters the server does not implement are refused with a 400 rather than ignored.
//!
//! # Pipeline
//! ```text
//! HTTP body (size cap, read timeout) ─ api::parse_chat_request_limited (message / text caps) ─ length check
//!   ─ images: fetch (fetch::fetch_url, no decoding slot) → decode → ChatEngine::reduce_image → memory budget
//!   ─ ChatEngine::count_prompt_tokens ─ context + prefill checks ─ Scheduler (bounded queue → batches)
//!   ─ ChatEngine::generate ─ BatchItem::emit ─ stop strings / cancellation ─ JSON response or SSE chunks
//! ```
//! Connections are served by our own accept loop (`lifecycle`): header read timeout, a cap on open
//! connections, and a hard stop after the shutdown grace.
//!
//! # Plugging in the real model
//! Everything model-specific is behind [`ChatEngine`]. To serve Idefics2, implement it for a struct that owns
//! the model, the `idefics-processor` processor and the generation loop (the same objects `idefics ask` uses):
//!
//! ```ignore
//! struct IdeficsEngine { model: Mutex<Idefics2>, processor: Processor, gen: GenerationConfig, id: String }
//!
//! impl ChatEngine for IdeficsEngine {
//!     fn model_id(&self) -> &str { &self.id }
//!     fn context_length(&self) -> usize { self.model.config().text_config.max_position_embeddings }
//!     // 64 (image_seq_len) per image; × 5 with do_image_splitting (4 crops + global).
//!     fn image_token_cost(&self, w: u32, h: u32, split: Option<bool>) -> usize { self.processor.image_tokens(w, h, split) }
//!     // Chat template + image-token expansion + tokenizer: the exact prompt length.
//!     fn count_prompt_tokens(&self, p: &ChatPrompt) -> Result<PromptTokens, EngineError> { ... }
//!     fn max_batch_size(&self) -> usize { 8 }
//!     fn generate(&self, batch: &mut [BatchItem]) -> Vec<Result<Generation, EngineError>> {
//!         // 1. processor: batch[i].prompt -> input_ids (left padded), pixel_values, pixel_attention_mask
//!         //    (each ImageInput already decoded to RGB8, EXIF applied, alpha over white; `split` = detail).
//!         // 2. prefill once, then decode step by step with per-item sampling (batch[i].params:
//!         //    temperature, top_p, seed, max_tokens); stop an item on EOS or <end_of_utterance>.
//!         // 3. after each step, detokenize the new token incrementally and call batch[i].emit(&text);
//!         //    Flow::Stop (stop string, client gone, timeout, shutdown) ends that item; also check
//!         //    batch[i].is_cancelled() before prefill.
//!         // 4. return one Generation { completion_tokens, finish } per item, in order.
//!     }
//! }
//! ```
//! then start it with [`serve_until_signal`] (the CLI's `idefics serve`) or [`spawn`] (tests). Stop strings,
//! streaming, usage, limits, timeouts, cancellation and error mapping need no engine code. The engine runs on one
//! dedicated thread, so it may keep mutable state (KV caches) behind a `Mutex` without contention.
//!
//! [`MockEngine`] is a deterministic engine used by the tests, the load test and `idefics serve --mock`.

pub mod api;
pub mod config;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod images;
mod lifecycle;
mod loader;
mod memory;
pub mod mock;
pub mod pipeline_engine;
mod scheduler;
mod server;

pub use config::{Dns, ServerConfig};
pub use engine::{
    BatchItem, ChatEngine, ChatMessage, ChatPrompt, EngineError, EngineFinish, Flow, Generation,
    ImageInput, Part, PromptTokens, Role, SamplingParams,
};
pub use error::ApiError;
pub use lifecycle::{run, serve_until_signal, spawn, ServerHandle};
pub use loader::{assemble_prompt, request_split};
pub use mock::MockEngine;
