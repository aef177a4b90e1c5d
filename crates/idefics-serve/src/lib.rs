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
//! # Engines
//! Everything model-specific is behind [`ChatEngine`]. A request reaches it as a [`ChatPrompt`] in the processor's
//! own types (`idefics::processor::ChatMessage`, decoded `RgbImage`s in slot order) with the generator's
//! `GenerationRequest`, so nothing is converted twice. [`pipeline_engine::PipelineEngine`] serves a checkpoint
//! with the same pipeline as `idefics ask`; start a server with [`serve_until_signal`] (the CLI's `idefics serve`)
//! or [`spawn`] (tests). Stop strings, streaming, usage, limits, timeouts, cancellation and error mapping need no
//! engine code. The engine runs on one dedicated thread, so it may keep mutable state behind a `Mutex` without
//! contention.
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

pub use api::Role;
pub use config::{Dns, ServerConfig};
pub use engine::{
    message_text, BatchItem, ChatEngine, ChatPrompt, EngineError, EngineFinish, Flow, Generation,
    PromptTokens,
};
pub use error::ApiError;
pub use lifecycle::{run, serve_until_signal, spawn, ServerHandle};
pub use loader::{assemble_prompt, request_split};
pub use mock::MockEngine;
