//! The contract between the HTTP layer and whatever generates tokens.
//!
//! The server validates and decodes a request (images included), counts its prompt tokens with
//! [`ChatEngine::count_prompt_tokens`], checks it against [`ChatEngine::context_length`], queues it, and hands
//! batches of [`BatchItem`]s to [`ChatEngine::generate`] on one dedicated worker thread. The engine pushes decoded
//! text through [`BatchItem::emit`]; stop strings, cancellation (client gone, timeout, shutdown) and streaming are
//! all handled behind that one call, so an engine only has to honour the [`Flow`] it returns.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use idefics::generate::{GenerationRequest, StopStrings};
use idefics::processor::{ChatMessage, ContentPart, MessageContent, RgbImage};

/// A whole conversation, validated and with its images decoded, in the processor's types (what
/// `idefics::pipeline` takes): messages whose image parts are slots, and the images that fill them.
#[derive(Debug, Clone, Default)]
pub struct ChatPrompt {
    /// Roles are `system` (OpenAI's `developer` folded in), `user` and `assistant`.
    pub messages: Vec<ChatMessage>,
    /// Every image, in slot (message) order: RGB8, EXIF orientation applied, alpha composited over white; a
    /// colour key (PNG `tRNS`) is kept for the processor, as `idefics ask` keeps it.
    pub images: Vec<RgbImage>,
    /// Per image, the splitting override from `image_url.detail`: `low` = Some(false), `high` = Some(true),
    /// `auto`/absent = None (the engine's default).
    pub image_splits: Vec<Option<bool>>,
}

impl ChatPrompt {
    /// `(width, height)` of each image, in order.
    pub fn image_sizes(&self) -> Vec<(usize, usize)> {
        self.images
            .iter()
            .map(|image| (image.width(), image.height()))
            .collect()
    }

    /// The splitting flag the request asks for (the images' `detail`), or an error when its images disagree:
    /// the processor expands every image of a request alike.
    pub fn requested_split(&self) -> Result<Option<bool>, EngineError> {
        let mut split = None;
        for (index, s) in self.image_splits.iter().enumerate() {
            if let Some(s) = *s {
                if split.is_some_and(|prev| prev != s) {
                    return Err(EngineError::BadInput(format!(
                        "image {}: all images of a request must use the same `detail`",
                        index + 1
                    )));
                }
                split = Some(s);
            }
        }
        Ok(split)
    }
}

/// The text parts of a message joined (image slots skipped).
pub fn message_text(message: &ChatMessage) -> String {
    match &message.content {
        MessageContent::Text(text) => text.clone(),
        MessageContent::Parts(parts) => parts
            .iter()
            .filter_map(|p| match p {
                ContentPart::Text { text } => Some(text.as_str()),
                ContentPart::Image {} | ContentPart::Video {} => None,
            })
            .collect(),
    }
}

/// Token counts for one prompt: `total` includes every image token the processor inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromptTokens {
    pub total: usize,
    pub image_tokens: usize,
}

/// Why the engine stopped producing tokens for one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineFinish {
    /// The model emitted its end-of-turn / EOS token (`<end_of_utterance>` included).
    EndOfTurn,
    /// `max_tokens` generated.
    MaxTokens,
    /// [`BatchItem::emit`] returned [`Flow::Stop`] or [`BatchItem::is_cancelled`] was true.
    StoppedByCaller,
}

/// The engine's account of one finished item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    pub completion_tokens: usize,
    pub finish: EngineFinish,
}

/// What the engine should do after [`BatchItem::emit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop generating for this item (stop string matched, client gone, deadline passed, shutdown).
    Stop,
}

/// An engine failure; `BadInput` becomes a 400 naming the problem, `Internal` a 500.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Internal(String),
}

/// A generation engine: the model, its processor (chat template, tokenizer, image splitting) and the decode loop.
///
/// Called from one worker thread (`generate`) and from request handlers (`count_prompt_tokens`, through
/// `spawn_blocking`), hence `Send + Sync`. Implementations must not panic on user data; if one does anyway the
/// scheduler catches it, fails that batch's items cleanly and keeps serving.
pub trait ChatEngine: Send + Sync + 'static {
    /// Name shown in `/v1/models` and in every response's `model` field.
    fn model_id(&self) -> &str;
    /// Maximum prompt + completion tokens.
    fn context_length(&self) -> usize;
    /// Tokens one image of this size costs in the prompt (64 per image for Idefics2; 320 with splitting).
    fn image_token_cost(&self, width: u32, height: u32, split: Option<bool>) -> usize;
    /// Exact prompt length after the chat template, tokenization and image-token expansion.
    fn count_prompt_tokens(&self, prompt: &ChatPrompt) -> Result<PromptTokens, EngineError>;
    /// Largest batch `generate` accepts.
    fn max_batch_size(&self) -> usize;
    /// Most UTF-8 bytes of text one prompt token can stand for, when known: the server then refuses text that
    /// cannot fit the context by its length alone, before rendering or tokenising it.
    fn max_bytes_per_token(&self) -> Option<usize> {
        None
    }
    /// Estimated peak memory (bytes) of running this prompt's prefill alone: attention scores and activations of
    /// the vision encoder and the text model. 0 = unknown (no prefill budget is enforced).
    fn prefill_bytes(&self, _prompt: &ChatPrompt, _tokens: PromptTokens) -> u64 {
        0
    }
    /// Called once per image as soon as it is decoded: return the smallest image that gives the same model input
    /// (e.g. already resized to what the processor would resize it to), so that queued requests hold no more
    /// pixels than needed. `split` is the image's `detail` override. The default keeps the image.
    fn reduce_image(&self, image: RgbImage, _split: Option<bool>) -> RgbImage {
        image
    }
    /// Generate for every item of the batch (1 ..= `max_batch_size` items) and return one result per item, in
    /// order. Push text with [`BatchItem::emit`] as it is decoded; stop an item when `emit` returns
    /// [`Flow::Stop`] or [`BatchItem::is_cancelled`] becomes true (check it between steps, and before prefill).
    fn generate(&self, batch: &mut [BatchItem]) -> Vec<Result<Generation, EngineError>>;
}

/// A shared "stop now" flag: set by a client disconnect or by shutdown (the reason is kept for the response).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicU8>);

const NOT_CANCELLED: u8 = 0;
const CLIENT_GONE: u8 = 1;
const SHUTTING_DOWN: u8 = 2;

impl CancelFlag {
    /// The client disconnected.
    pub fn cancel(&self) {
        let _ = self.0.compare_exchange(
            NOT_CANCELLED,
            CLIENT_GONE,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
    /// The server is shutting down and its grace period is over.
    pub fn cancel_for_shutdown(&self) {
        let _ = self.0.compare_exchange(
            NOT_CANCELLED,
            SHUTTING_DOWN,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst) != NOT_CANCELLED
    }
    pub(crate) fn is_shutdown(&self) -> bool {
        self.0.load(Ordering::SeqCst) == SHUTTING_DOWN
    }
    fn cause(&self) -> Option<StopCause> {
        match self.0.load(Ordering::SeqCst) {
            NOT_CANCELLED => None,
            SHUTTING_DOWN => Some(StopCause::Shutdown),
            _ => Some(StopCause::Cancelled),
        }
    }
}

/// How a request ended, as the worker reports it to the request handler.
#[derive(Debug)]
pub(crate) enum Outcome {
    Finished(Generation),
    Failed(EngineError),
    Cancelled,
    TimedOut,
    ShuttingDown,
}

/// Events sent from the worker to the request handler.
#[derive(Debug)]
pub(crate) enum Event {
    Delta(String),
    Done(Outcome),
}

/// Why an item's output was cut short by our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopCause {
    None,
    StopString,
    Cancelled,
    Deadline,
    Shutdown,
}

/// One request inside a batch: its prompt and parameters, plus the output side the engine writes to.
pub struct BatchItem {
    pub prompt: ChatPrompt,
    /// Validated (ranges checked, defaults filled in); `max_new_tokens` fits the context with the prompt.
    /// `stop_strings` is empty: the server matches stop strings itself, across tokens ([`BatchItem::emit`]).
    pub params: GenerationRequest,
    /// As counted by `count_prompt_tokens` at admission.
    pub prompt_tokens: PromptTokens,
    /// Server-side request id, for the engine's logs.
    pub request_id: String,
    pub(crate) stop: StopStrings,
    pub(crate) cancel: CancelFlag,
    pub(crate) deadline: Instant,
    pub(crate) tx: tokio::sync::mpsc::UnboundedSender<Event>,
    pub(crate) cause: StopCause,
    pub(crate) emitted_any: bool,
    /// This request's share of the image memory budget, given back when the item is dropped.
    pub(crate) _image_memory: Option<crate::memory::ImageReservation>,
}

impl BatchItem {
    /// Hand newly decoded text to the client (stop strings are matched across calls and trimmed; text that may
    /// start a stop string is held back until it is decided). Returns [`Flow::Stop`] when this item must end.
    pub fn emit(&mut self, text: &str) -> Flow {
        if self.cause != StopCause::None {
            return Flow::Stop;
        }
        if let Some(cause) = self.cancel_cause() {
            self.cause = cause;
            return Flow::Stop;
        }
        let (out, matched) = self.stop.push(text);
        if !out.is_empty() {
            self.emitted_any = true;
            if self.tx.send(Event::Delta(out)).is_err() {
                // The handler is gone: the client disconnected.
                self.cause = StopCause::Cancelled;
                return Flow::Stop;
            }
        }
        if matched {
            self.cause = StopCause::StopString;
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// True when the engine should stop this item without further output (client gone, deadline, shutdown).
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self.cause,
            StopCause::Cancelled | StopCause::Deadline | StopCause::Shutdown
        ) || self.cancel_cause().is_some()
    }

    fn cancel_cause(&self) -> Option<StopCause> {
        if let Some(cause) = self.cancel.cause() {
            Some(cause)
        } else if self.tx.is_closed() {
            Some(StopCause::Cancelled)
        } else if Instant::now() >= self.deadline {
            Some(StopCause::Deadline)
        } else {
            None
        }
    }

    /// After generation: release held-back text (no stop string came) and report the outcome.
    pub(crate) fn finish(mut self, result: Result<Generation, EngineError>) {
        if self.cause == StopCause::None {
            if let Some(cause) = self.cancel_cause() {
                self.cause = cause;
            }
        }
        let outcome = match (self.cause, result) {
            (StopCause::Cancelled, _) => Outcome::Cancelled,
            (StopCause::Deadline, _) => Outcome::TimedOut,
            (StopCause::Shutdown, _) => Outcome::ShuttingDown,
            (_, Err(e)) => Outcome::Failed(e),
            (StopCause::StopString, Ok(gen)) => Outcome::Finished(Generation {
                finish: EngineFinish::StoppedByCaller,
                ..gen
            }),
            (StopCause::None, Ok(gen)) => {
                let rest = self.stop.finish();
                if !rest.is_empty() {
                    self.emitted_any = true;
                    let _ = self.tx.send(Event::Delta(rest));
                }
                Outcome::Finished(gen)
            }
        };
        let _ = self.tx.send(Event::Done(outcome));
    }

    /// Report an outcome decided outside the engine (expired in the queue, shutdown, engine panic).
    pub(crate) fn abort(self, outcome: Outcome) {
        let _ = self.tx.send(Event::Done(outcome));
    }
}

/// A queued item with no images, for unit tests (the receiver sees what `emit` sends).
#[cfg(test)]
pub(crate) fn test_item(id: &str) -> (BatchItem, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let item = BatchItem {
        prompt: ChatPrompt::default(),
        params: GenerationRequest {
            max_new_tokens: 8,
            ..GenerationRequest::default()
        },
        prompt_tokens: PromptTokens::default(),
        request_id: id.to_string(),
        stop: StopStrings::default(),
        cancel: CancelFlag::default(),
        deadline: Instant::now() + std::time::Duration::from_secs(60),
        tx,
        cause: StopCause::None,
        emitted_any: false,
        _image_memory: None,
    };
    (item, rx)
}
