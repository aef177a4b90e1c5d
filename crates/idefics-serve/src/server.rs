//! HTTP routes and the request pipeline (parse → load images → count tokens → queue → answer), SSE streaming
//! and per-request logs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{parse_chat_request_limited, ChatRequest, TextLimits};
use crate::config::ServerConfig;
use crate::engine::{
    BatchItem, CancelFlag, ChatEngine, ChatPrompt, EngineError, EngineFinish, Event, Generation,
    Outcome, PromptTokens, StopCause,
};
use crate::error::ApiError;
use crate::loader::load_prompt;
use crate::memory::ImageMemory;
use crate::scheduler::{Scheduler, SubmitError};
use idefics::generate::StopStrings;

/// Shared by every handler.
pub(crate) struct AppState {
    pub(crate) engine: Arc<dyn ChatEngine>,
    pub(crate) scheduler: Scheduler,
    pub(crate) config: Arc<ServerConfig>,
    /// Decoding slots (CPU work).
    pub(crate) preprocess: tokio::sync::Semaphore,
    /// Network fetches waiting at once (they hold no decoding slot while they wait).
    pub(crate) fetches: tokio::sync::Semaphore,
    pub(crate) image_memory: Arc<ImageMemory>,
    pub(crate) closing: AtomicBool,
    pub(crate) next_id: AtomicU64,
    pub(crate) created: u64,
}

impl AppState {
    fn new_id(&self) -> String {
        format!(
            "chatcmpl-{:x}{:06x}",
            self.created,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(|| async {
            ApiError::not_found("no such endpoint (see /v1/chat/completions, /v1/models, /health)")
        })
        .with_state(state)
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let closing = st.closing.load(Ordering::SeqCst);
    let body = json!({
        "status": if closing { "shutting_down" } else { "ok" },
        "model": st.engine.model_id(),
        "queue": st.scheduler.queue_len(),
        "max_queue": st.scheduler.max_queue(),
        "image_bytes": st.image_memory.used(),
        "max_image_bytes": st.image_memory.max(),
    });
    json_response(
        if closing {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        },
        &body,
    )
}

fn model_card(st: &AppState) -> Value {
    json!({
        "id": st.engine.model_id(),
        "object": "model",
        "created": st.created,
        "owned_by": "idefics-rs",
        "context_length": st.engine.context_length(),
        // What one image costs in the prompt, so clients can budget (vllm#14557).
        "image_tokens": {
            "per_image": st.engine.image_token_cost(0, 0, Some(false)),
            "per_image_split": st.engine.image_token_cost(0, 0, Some(true)),
            "default_split": st.engine.image_token_cost(0, 0, None) == st.engine.image_token_cost(0, 0, Some(true)),
        },
    })
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [model_card(&st)]}),
    )
}

/// Whether a request's `model` names this server's model: the served name, a configured alias, or anything
/// when the operator chose `accept_any_model`; an absent or empty `model` always does.
fn model_matches(st: &AppState, asked: &str) -> bool {
    asked.is_empty()
        || asked == st.engine.model_id()
        || st.config.model_aliases.iter().any(|a| a == asked)
        || st.config.accept_any_model
}

async fn model_by_id(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if !id.is_empty() && model_matches(&st, &id) {
        json_response(StatusCode::OK, &model_card(&st))
    } else {
        model_not_found(&id, st.engine.model_id()).into_response()
    }
}

fn model_not_found(asked: &str, served: &str) -> ApiError {
    ApiError {
        code: "model_not_found",
        ..ApiError::not_found(format!(
            "model '{asked}' not found; this server serves '{served}'"
        ))
    }
    .at("model")
}

/// A request that passed validation and sits in the queue.
struct Admitted {
    id: String,
    model: String,
    created: u64,
    rx: UnboundedReceiver<Event>,
    cancel: CancelOnDrop,
    stream: bool,
    include_usage: bool,
    prompt_tokens: PromptTokens,
    images: usize,
    /// The handler gives up a little after the worker's own deadline would have fired.
    give_up_at: tokio::time::Instant,
    started: Instant,
}

/// Cancels the generation when dropped while armed: the handler future or the response stream went away,
/// i.e. the client disconnected.
struct CancelOnDrop {
    flag: CancelFlag,
    armed: bool,
    id: String,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.cancel();
            tracing::info!(target: "idefics_serve::request", id = %self.id, "client disconnected: generation cancelled");
        }
    }
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Body) -> Response {
    let started = Instant::now();
    let id = st.new_id();
    match admit(&st, body, &id, started).await {
        Err(err) => {
            tracing::warn!(
                target: "idefics_serve::request",
                id = %id, status = err.status.as_u16(), code = err.code,
                latency_ms = started.elapsed().as_millis() as u64, "rejected: {}", err.message
            );
            err.into_response()
        }
        Ok(adm) if adm.stream => stream_response(adm),
        Ok(adm) => full_response(adm).await,
    }
}

async fn admit(
    st: &Arc<AppState>,
    body: Body,
    id: &str,
    started: Instant,
) -> Result<Admitted, ApiError> {
    let cfg = &st.config;
    if st.closing.load(Ordering::SeqCst) {
        return Err(ApiError::overloaded("server is shutting down"));
    }
    let read = tokio::time::timeout(
        cfg.body_read_timeout,
        axum::body::to_bytes(body, cfg.max_body_bytes),
    )
    .await
    .map_err(|_| ApiError {
        status: StatusCode::REQUEST_TIMEOUT,
        ..ApiError::bad_request(
            "request_timeout",
            format!(
                "the request body was not received within {:.0} s",
                cfg.body_read_timeout.as_secs_f64()
            ),
        )
    })?;
    let bytes = read.map_err(|_| ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        ..ApiError::bad_request(
            "request_too_large",
            format!(
                "request body is over the limit of {} bytes",
                cfg.max_body_bytes
            ),
        )
    })?;
    let limits = TextLimits {
        max_messages: cfg.max_messages,
        max_text_bytes: cfg.max_text_bytes,
    };
    let req = parse_chat_request_limited(&bytes, limits)?;
    drop(bytes);
    let model_id = st.engine.model_id().to_string();
    if !model_matches(st, &req.model) {
        return Err(model_not_found(&req.model, &model_id));
    }
    let n_images = req.image_count();
    if n_images > cfg.max_images_per_request {
        return Err(ApiError::bad_request(
            "too_many_images",
            format!(
                "request has {n_images} images; the limit is {} per request",
                cfg.max_images_per_request
            ),
        )
        .at("messages"));
    }
    check_text_fits(st, &req)?;
    let (prompt, image_memory) = load_prompt(st, &req).await?;
    let engine = st.engine.clone();
    // The prompt (images included) moves to the counting thread and back: no copy of its pixels.
    let (prompt, counted) = tokio::task::spawn_blocking(move || {
        let counted = engine.count_prompt_tokens(&prompt);
        (prompt, counted)
    })
    .await
    .map_err(|e| ApiError::internal(format!("token counting failed: {e}")))?;
    let prompt_tokens = counted.map_err(engine_error)?;
    let max_tokens = budget(st, &req, &prompt, prompt_tokens)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancelFlag::default();
    let deadline = started + cfg.request_timeout;
    let item = BatchItem {
        prompt,
        params: req.generation_request(max_tokens),
        prompt_tokens,
        request_id: id.to_string(),
        stop: StopStrings::new(req.stop.clone()),
        cancel: cancel.clone(),
        deadline,
        tx,
        cause: StopCause::None,
        emitted_any: false,
        _image_memory: image_memory,
    };
    st.scheduler.submit(item).map_err(|(e, _)| match e {
        SubmitError::QueueFull => ApiError::overloaded(format!(
            "server is busy: {} requests already queued; retry later",
            st.scheduler.max_queue()
        )),
        SubmitError::ShuttingDown => ApiError::overloaded("server is shutting down"),
    })?;
    Ok(Admitted {
        id: id.to_string(),
        model: model_id,
        created: unix_now(),
        rx,
        cancel: CancelOnDrop {
            flag: cancel,
            armed: true,
            id: id.to_string(),
        },
        stream: req.stream,
        include_usage: req.include_usage,
        prompt_tokens,
        images: n_images,
        give_up_at: tokio::time::Instant::from_std(deadline + Duration::from_secs(2)),
        started,
    })
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::BadInput(m) => ApiError::bad_request("invalid_request", m),
        EngineError::Internal(m) => ApiError::internal(m),
    }
}

/// Refuse text that cannot fit the context by its length alone (no template, no tokenizer): with at most
/// `max_bytes_per_token` bytes per token, the text is at least `bytes / max_bytes_per_token` tokens.
fn check_text_fits(st: &AppState, req: &ChatRequest) -> Result<(), ApiError> {
    let Some(per_token) = st.engine.max_bytes_per_token().filter(|&b| b > 0) else {
        return Ok(());
    };
    let bytes = req.text_bytes();
    let at_least = bytes / per_token;
    let ctx = st.engine.context_length();
    if at_least >= ctx {
        return Err(ApiError::bad_request(
            "context_length_exceeded",
            format!(
                "the text alone is {bytes} bytes, at least {at_least} tokens, which does not fit the context length of {ctx}"
            ),
        )
        .at("messages"));
    }
    Ok(())
}

/// Check the prompt against the context and choose `max_tokens`; errors name what the images cost
/// (vllm#12165: users cannot guess image-token costs).
fn budget(
    st: &AppState,
    req: &ChatRequest,
    prompt: &ChatPrompt,
    tokens: PromptTokens,
) -> Result<usize, ApiError> {
    let ctx = st.engine.context_length();
    let image_costs: Vec<String> = prompt
        .images
        .iter()
        .zip(&prompt.image_splits)
        .enumerate()
        .map(|(index, (image, split))| {
            format!(
                "image {index} costs {}",
                st.engine
                    .image_token_cost(image.width() as u32, image.height() as u32, *split)
            )
        })
        .collect();
    let detail = if image_costs.is_empty() {
        String::from("no images")
    } else {
        format!(
            "{} of them image tokens: {}",
            tokens.image_tokens,
            image_costs.join(", ")
        )
    };
    if tokens.total >= ctx {
        return Err(ApiError::bad_request(
            "context_length_exceeded",
            format!("prompt is {} tokens ({detail}), which leaves no room in the context length of {ctx}", tokens.total),
        )
        .at("messages"));
    }
    let prefill = st.engine.prefill_bytes(prompt, tokens);
    let limit = st.config.max_prefill_bytes;
    if prefill > limit {
        const MIB: u64 = 1024 * 1024;
        return Err(ApiError::bad_request(
            "prefill_too_large",
            format!(
                "prompt is {} tokens ({detail}); its prefill needs about {} MiB (attention and activations), over the server's limit of {} MiB; shorten the prompt or send fewer images or 'detail: low'",
                tokens.total,
                prefill.div_ceil(MIB),
                limit / MIB
            ),
        )
        .at("messages"));
    }
    let room = ctx - tokens.total;
    match req.max_tokens {
        Some(m) if m > room => Err(ApiError::bad_request(
            "context_length_exceeded",
            format!(
                "prompt is {} tokens ({detail}) + max_tokens {m} = {} tokens, over the context length of {ctx}",
                tokens.total,
                tokens.total + m
            ),
        )
        .at("max_tokens")),
        Some(m) => Ok(m),
        None => Ok(st.config.default_max_tokens.min(room)),
    }
}

fn finish_reason(g: &Generation) -> &'static str {
    match g.finish {
        EngineFinish::MaxTokens => "length",
        EngineFinish::EndOfTurn | EngineFinish::StoppedByCaller => "stop",
    }
}

fn usage(prompt: PromptTokens, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt.total,
        "completion_tokens": completion,
        "total_tokens": prompt.total + completion,
        "prompt_tokens_details": {"image_tokens": prompt.image_tokens},
    })
}

fn outcome_error(o: Outcome) -> ApiError {
    match o {
        Outcome::Finished(_) => ApiError::internal("finished"),
        Outcome::Failed(e) => engine_error(e),
        Outcome::Cancelled => ApiError::internal("request cancelled"),
        Outcome::TimedOut => {
            ApiError::timeout("request timed out (the server's request timeout was reached)")
        }
        Outcome::ShuttingDown => {
            ApiError::overloaded("server shut down before the request finished")
        }
    }
}

fn log_done(adm: &Admitted, status: u16, outcome: Result<&Generation, &ApiError>) {
    let latency_ms = adm.started.elapsed().as_millis() as u64;
    match outcome {
        Ok(g) => tracing::info!(
            target: "idefics_serve::request",
            id = %adm.id, status, stream = adm.stream, latency_ms, images = adm.images,
            prompt_tokens = adm.prompt_tokens.total, image_tokens = adm.prompt_tokens.image_tokens,
            completion_tokens = g.completion_tokens, finish = finish_reason(g), "completed"
        ),
        Err(e) => tracing::warn!(
            target: "idefics_serve::request",
            id = %adm.id, status, stream = adm.stream, latency_ms, images = adm.images,
            prompt_tokens = adm.prompt_tokens.total, code = e.code, "failed: {}", e.message
        ),
    }
}

/// Wait for the next event, giving up at the handler deadline.
async fn next_event(adm: &mut Admitted) -> Event {
    match tokio::time::timeout_at(adm.give_up_at, adm.rx.recv()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => Event::Done(Outcome::Failed(EngineError::Internal(
            "engine worker stopped".into(),
        ))),
        Err(_) => {
            adm.cancel.flag.cancel();
            Event::Done(Outcome::TimedOut)
        }
    }
}

async fn full_response(mut adm: Admitted) -> Response {
    let mut text = String::new();
    let outcome = loop {
        match next_event(&mut adm).await {
            Event::Delta(t) => text.push_str(&t),
            Event::Done(o) => break o,
        }
    };
    adm.cancel.armed = false;
    match outcome {
        Outcome::Finished(g) => {
            log_done(&adm, 200, Ok(&g));
            let body = json!({
                "id": adm.id,
                "object": "chat.completion",
                "created": adm.created,
                "model": adm.model,
                "system_fingerprint": null,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": finish_reason(&g),
                }],
                "usage": usage(adm.prompt_tokens, g.completion_tokens),
            });
            json_response(StatusCode::OK, &body)
        }
        other => {
            let err = outcome_error(other);
            log_done(&adm, err.status.as_u16(), Err(&err));
            err.into_response()
        }
    }
}

fn sse(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn chunk(adm: &Admitted, delta: Value, finish: Option<&str>) -> Bytes {
    let mut c = json!({
        "id": adm.id,
        "object": "chat.completion.chunk",
        "created": adm.created,
        "model": adm.model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if adm.include_usage {
        c["usage"] = Value::Null;
    }
    sse(&c)
}

/// Server-sent events: a role chunk, content chunks, a chunk with `finish_reason`, the usage chunk when asked
/// (`choices: []`, as OpenAI sends it), then `data: [DONE]`. Errors after the stream started are sent as an
/// `{"error": ...}` event (what the openai client raises on) followed by `[DONE]`.
fn stream_response(adm: Admitted) -> Response {
    struct S {
        adm: Admitted,
        started: bool,
        done: bool,
    }
    let stream = futures_util::stream::unfold(
        S {
            adm,
            started: false,
            done: false,
        },
        |mut s| async move {
            if s.done {
                return None;
            }
            if !s.started {
                s.started = true;
                let first = chunk(&s.adm, json!({"role": "assistant", "content": ""}), None);
                return Some((Ok::<Bytes, std::convert::Infallible>(first), s));
            }
            let out = match next_event(&mut s.adm).await {
                Event::Delta(t) => chunk(&s.adm, json!({"content": t}), None),
                Event::Done(outcome) => {
                    s.done = true;
                    s.adm.cancel.armed = false;
                    let mut out = Vec::new();
                    match outcome {
                        Outcome::Finished(g) => {
                            log_done(&s.adm, 200, Ok(&g));
                            out.extend_from_slice(&chunk(
                                &s.adm,
                                json!({}),
                                Some(finish_reason(&g)),
                            ));
                            if s.adm.include_usage {
                                let u = json!({
                                    "id": s.adm.id, "object": "chat.completion.chunk", "created": s.adm.created,
                                    "model": s.adm.model, "system_fingerprint": null, "choices": [],
                                    "usage": usage(s.adm.prompt_tokens, g.completion_tokens),
                                });
                                out.extend_from_slice(&sse(&u));
                            }
                        }
                        other => {
                            let err = outcome_error(other);
                            log_done(&s.adm, err.status.as_u16(), Err(&err));
                            out.extend_from_slice(&sse(&err.body()));
                        }
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    Bytes::from(out)
                }
            };
            Some((Ok(out), s))
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| {
            ApiError::internal(format!("building the stream failed: {e}")).into_response()
        })
}
